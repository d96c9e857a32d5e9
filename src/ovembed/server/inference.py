"""The path every embedding request takes, whatever its API family: size limits, a ready model, tokenizing,
the batcher, the result (and its token usage)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence, Sized

from ovembed.config import Settings
from ovembed.engine import Embeddings
from ovembed.engine.batcher import Overloaded
from ovembed.errors import ErrorKind, OvembedError, validation
from ovembed.server.registry import ModelEntry, ModelRegistry

# Up to this many characters per request are tokenized on the event loop; more go to a thread, so a
# 10 MB text cannot stall other requests.
INLINE_TOKENIZE_CHARS = 20_000


def check_sizes(texts: Sequence[Sized], settings: Settings, what: str = "text", unit: str = "characters") -> None:
    """Counts and characters are bounded before tokenizing: the tokenizer's memory and time grow with the
    characters of a text, so a huge body would briefly take gigabytes (figures: docs/reliability.md#1-hostile-input).
    Token-id input is bounded by the same numbers, in ids, before it is decoded."""
    if len(texts) > settings.max_texts:
        raise validation(f"{len(texts)} {what}s in one request; the limit is {settings.max_texts}")
    longest = max(range(len(texts)), key=lambda i: len(texts[i]), default=None)
    if longest is not None and len(texts[longest]) > settings.max_text_chars:
        raise OvembedError(ErrorKind.INPUT_TOO_LONG, f"{what} {longest} has {len(texts[longest])} {unit}; the "
                           f"limit is {settings.max_text_chars} per {what}: split it")
    total = sum(len(t) for t in texts)
    if total > settings.max_request_chars:
        raise OvembedError(ErrorKind.INPUT_TOO_LONG, f"{total} {unit} in one request; the limit is "
                           f"{settings.max_request_chars}: send fewer {what}s per request")


async def embed(registry: ModelRegistry, settings: Settings, entry: ModelEntry, texts: list[str], wanted: list[str],
                *, normalize: bool, truncate: bool) -> Embeddings:
    check_sizes(texts, settings)
    entry = await registry.ready(entry)
    entry.model.require_outputs(wanted)
    if sum(len(t) for t in texts) < INLINE_TOKENIZE_CHARS:
        ids = entry.model.tokenize(texts, truncate)  # microseconds: a thread hop would cost more
    else:
        ids = await asyncio.to_thread(entry.model.tokenize, texts, truncate)
    return await embed_tokens(registry, entry, ids, wanted, normalize=normalize)


async def embed_tokens(registry: ModelRegistry, entry: ModelEntry, ids: list[list[int]], wanted: list[str],
                       *, normalize: bool) -> Embeddings:
    """Token ids of a ready model, already checked against its vocabulary and max length, through the batcher."""
    try:
        future = entry.batcher.submit(ids, wanted)
    except Overloaded as exc:
        registry.metrics.overloaded.labels(entry.name).inc()
        raise OvembedError(ErrorKind.OVERLOADED, f"the service is busy ({exc}); retry shortly") from None
    result = await asyncio.wrap_future(future)
    return result.normalized() if normalize else result


def usage(result: Embeddings) -> dict:
    tokens = sum(result.token_counts)
    return {"prompt_tokens": tokens, "total_tokens": tokens}
