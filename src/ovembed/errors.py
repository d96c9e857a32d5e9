"""The one error type of ovembed: every failure a user can cause or meet has a kind here.

The CLI maps kinds to exit codes and the HTTP layer to status codes, each in one place."""

from __future__ import annotations

from enum import Enum


class ErrorKind(str, Enum):
    VALIDATION = "validation"  # bad input: wrong type, empty, out of range
    INPUT_TOO_LONG = "input_too_long"  # a text exceeds max length with truncate=False
    MODEL_NOT_FOUND = "model_not_found"  # no such model folder / id / hub entry
    MODEL_INVALID = "model_invalid"  # a model folder that is incomplete, corrupt or unsupported
    HUB_UNREACHABLE = "hub_unreachable"  # the model hub could not be reached
    GATE_FAILED = "gate_failed"  # the accuracy gate refused a quantized model
    BACKEND = "backend"  # inference itself failed
    OVERLOADED = "overloaded"  # the queue is full: retry later
    UNAVAILABLE = "unavailable"  # the model is loading or failed to load
    UNAUTHORIZED = "unauthorized"  # missing or wrong API key
    PAYLOAD_TOO_LARGE = "payload_too_large"  # request body over the limit
    NOT_FOUND = "not_found"  # no such route: a wrong URL or path
    PORT_IN_USE = "port_in_use"  # the address `ovembed serve` should listen on is taken
    BUSY = "busy"  # another job holds the work (one reembed job per space)


class OvembedError(Exception):
    """A failure with a kind and a message meant for the user (no traceback needed)."""

    def __init__(self, kind: ErrorKind, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):
        # Pickle as (kind, message): errors cross process boundaries (Ray actors) intact.
        return type(self), (self.kind, self.message)


def validation(message: str) -> OvembedError:
    return OvembedError(ErrorKind.VALIDATION, message)
