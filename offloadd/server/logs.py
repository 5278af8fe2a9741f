"""Logging: one JSON object per request, with the path but never the query or headers.

Query strings carry private stream tokens and headers carry keys, so neither
is ever logged. The one exception is a Durable Streams read's `offset`, if this server
could have handed it out (digits, or `-1`/`now`), and its `live` mode if it is one of the
protocol's: they carry nothing private, and they are how an operator sees what a cache
in front lets through (docs/deployment-cache.md).
"""

from __future__ import annotations

import logging

import orjson
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

from offloadd.protocol.durable import BadOffset, parse_offset


class AccessLogger(AbstractAccessLogger):
    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        line = {
            "remote": request.remote,
            "method": request.method,
            "path": request.rel_url.path,
            "status": response.status,
            "bytes": response.body_length,
            "seconds": round(time, 6),
        }
        if (offset := _offset(request)) is not None:
            line["offset"] = offset
            live = request.rel_url.query.get("live", "")
            line["live"] = live if live in ("long-poll", "sse") else ""
        self.logger.info(orjson.dumps(line).decode())


def setup(level: str = "INFO") -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s")


def _offset(request: BaseRequest) -> str | None:
    """The query's `offset` if it is one of ours, else None: nothing a client made up."""
    value = request.rel_url.query.get("offset")
    try:
        parse_offset(value or "")
    except BadOffset:
        return None
    return value
