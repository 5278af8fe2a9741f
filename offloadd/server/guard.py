"""The connection level, facing the internet: limits aiohttp does not set by itself.

- Request headers must arrive within `--header-timeout` of connecting (nginx's
  `client_header_timeout`); a client that sends half a request line holds no slot.
- At most `--max-connections` connections at once; one more is answered with a JSON 503
  and closed, so the server stays responsive for those it has. They are counted as they
  come and go (aiohttp's `Server.connections` copies its list on every look: one look an
  accept made a burst of n connections cost n²/2).
- aiohttp's own answers to what it cannot parse (a header too large, a bad request
  line) are the JSON error shape like every other error, not `text/plain`.

aiohttp makes one `RequestHandler` per connection from its `Server`; `GuardedRunner`
hands the sockets a factory that makes `GuardedHandler`s for that same server. It leans
on aiohttp's private names (`_make_server`, `Server._kwargs` and `_loop`, the handler's
`_manager`, `_loop` and `_request_count`): `pyproject.toml` pins the aiohttp versions
that have them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, cast

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from offloadd.errors import error_body


@dataclass(frozen=True)
class Limits:
    header_timeout: float
    max_connections: int


def raw_error(status: int, code: str, message: str) -> bytes:
    """A whole HTTP answer, for when there is no request to answer through aiohttp."""
    body = orjson.dumps(error_body(code, message))
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class OpenConnections:
    """The connections of one server open now: one more as each is made, one less as it
    is lost."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0


class GuardedHandler(RequestHandler):
    def __init__(
        self, manager: web.Server, limits: Limits, open_connections: OpenConnections, **kwargs: Any
    ):
        super().__init__(manager, **kwargs)
        self._limits = limits
        self._open = open_connections
        self._counted = False
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass of it
        self._open.count += 1
        self._counted = True
        if self._open.count > self._limits.max_connections:
            message = "the server has as many connections as it takes; try again shortly"
            transport.write(raw_error(503, "too_many_connections", message))
            transport.close()
            return
        timeout = self._limits.header_timeout
        self._header_timer = self._loop.call_later(timeout, self._headers_late, transport)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._header_timer is not None and self._request_count:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self, transport: asyncio.Transport) -> None:
        self._header_timer = None
        if self._request_count == 0 and not transport.is_closing():
            message = f"the request headers did not arrive within {self._limits.header_timeout:g} s"
            transport.write(raw_error(408, "header_timeout", message))
            self.force_close()
            transport.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._counted:
            self._counted = False
            self._open.count -= 1
        if self._header_timer is not None:
            self._header_timer.cancel()
        super().connection_lost(exc)

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> StreamResponse:
        """aiohttp's answer to a request it could not parse, in the JSON error shape."""
        super().handle_error(request, status, exc, message)  # logs; refuses if sent already
        phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else ""
        code = "bad_request" if status == 400 else "http_error"
        text = message or phrase or "the request could not be handled"
        response = web.Response(
            status=status,
            body=orjson.dumps(error_body(code, text)),
            content_type="application/json",
        )
        response.force_close()
        return response


class _Factory:
    """The protocol factory the sockets call: aiohttp's server, with guarded handlers."""

    def __init__(self, server: web.Server, limits: Limits, open_connections: OpenConnections):
        self._server, self._limits, self._open = server, limits, open_connections

    def __call__(self) -> GuardedHandler:
        # The same arguments aiohttp's own `Server.__call__` passes.
        kwargs = self._server._kwargs  # noqa: SLF001
        loop = self._server._loop
        return GuardedHandler(self._server, self._limits, self._open, loop=loop, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)


class GuardedRunner(web.AppRunner):
    def __init__(self, app: web.Application, limits: Limits, **kwargs: Any):
        super().__init__(app, **kwargs)
        self._limits = limits
        self.open_connections = OpenConnections()

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        return _Factory(server, self._limits, self.open_connections)  # type: ignore[return-value]
