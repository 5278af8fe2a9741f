"""Logging: one JSON object per request, with the path but never the query or headers.

Query strings carry private stream tokens and headers carry keys, so neither
is ever logged — but for a Durable Streams read's `offset` and `live`, which say which
part of a stream was asked for (and how many readers a cache in front let through).
"""

from __future__ import annotations

import logging

import orjson
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse


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
        query = request.rel_url.query
        if (offset := query.get("offset")) is not None:
            line["offset"] = offset[:40]
            line["live"] = query.get("live", "")[:20]
        self.logger.info(orjson.dumps(line).decode())


def setup(level: str = "INFO") -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
