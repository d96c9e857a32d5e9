"""Uvicorn's HTTP protocol with a deadline for request headers, against slowloris clients.

Uvicorn bounds only the idle time between keep-alive requests: a client that connects and sends nothing,
or sends its headers a byte at a time, holds its connection (and a file descriptor) for ever. Here every
connection must complete a request's headers within `seconds` of connecting or of its previous response,
else it is closed. The body has its own deadline (BodyLimit middleware)."""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.auto import AutoHTTPProtocol


def with_header_timeout(seconds: float) -> type[asyncio.Protocol]:
    class HeaderTimeoutProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
        _header_timer: asyncio.TimerHandle | None = None

        def _arm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            self._header_timer = self.loop.call_later(seconds, self._headers_overdue, self.cycle)

        def _headers_overdue(self, cycle_when_armed) -> None:
            self._header_timer = None
            # A new cycle means headers completed in time (the app then owns the request's deadlines);
            # an unfinished one is a pipelined request still being answered.
            idle = self.cycle is None or self.cycle.response_complete
            if self.cycle is cycle_when_armed and idle and not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm_header_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm_header_timer()

        def connection_lost(self, exc) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None
            super().connection_lost(exc)

    return HeaderTimeoutProtocol
