"""The route table: one record a route, and the table drives the router, the CORS
preflights (a browser's OPTIONS) and the create endpoints `/v1/info` lists, so a new
endpoint cannot be routed and forgotten by the other two."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from offloadd.errors import ApiError
from offloadd.http import streams
from offloadd.http.anthropic.messages import create_message
from offloadd.http.appkeys import CREATE_ENDPOINTS, METRICS
from offloadd.http.middleware import preflight
from offloadd.http.native import (
    create,
    events,
    healthz,
    info,
    metrics,
    openapi,
    page,
    static_file,
    status,
    stop,
)
from offloadd.http.openai.chat import chat_completions
from offloadd.http.openai.responses import cancel_response, create_response, retrieve_response
from offloadd.storage.layout import ROUTE, STREAMS_PREFIX
from offloadd.storage.store import StorageError

STREAM = STREAMS_PREFIX + "{path:.+}"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    # a create endpoint: its outcomes counted in /metrics, listed by /v1/info, and its
    # preflight answered (CORS per --create-cors-origins)
    create: bool = False
    cors: bool = False  # answers a browser's preflight (reading URLs: per --cors-origins)
    head: bool = True  # a GET also answers HEAD (not a GET that acts, like stop)


ROUTES = (
    Route("GET", "/", page),
    Route("GET", "/static/{name}", static_file),
    Route("GET", "/v1/info", info),
    Route("GET", "/healthz", healthz),
    Route("GET", "/openapi.json", openapi),
    Route("GET", "/metrics", metrics),
    Route("POST", "/v1/stream-chatgpt", create, create=True),
    Route("POST", "/v1/async-chatgpt", create, create=True),
    Route("POST", "/v1/chat/completions", chat_completions, create=True),
    Route("POST", "/v1/responses", create_response, create=True),
    Route("POST", "/v1/messages", create_message, create=True),
    Route("GET", "/v1/responses/{id}", retrieve_response, cors=True),
    Route("POST", "/v1/responses/{id}/cancel", cancel_response, cors=True),
    Route("GET", f"{ROUTE}.json", status, cors=True),
    Route("GET", f"{ROUTE}.txt", events, cors=True),
    Route("GET", f"{ROUTE}/stop", stop, cors=True, head=False),
    Route("POST", f"{ROUTE}/stop", stop, cors=True),
    # application streams (Durable Streams): http/streams.py
    Route("PUT", STREAM, streams.put, cors=True),
    Route("POST", STREAM, streams.post, cors=True),
    Route("GET", STREAM, streams.get, cors=True, head=False),
    Route("HEAD", STREAM, streams.head, cors=True),
    Route("DELETE", STREAM, streams.delete, cors=True),
)


def add_routes(app: web.Application, routes: tuple[Route, ...] = ROUTES) -> None:
    """Route each record, then an OPTIONS for each path that takes a preflight."""
    for route in routes:
        handler = counting_creates(route.handler) if route.create else route.handler
        if route.method == "GET":
            app.router.add_get(route.path, handler, allow_head=route.head)
        else:
            app.router.add_route(route.method, route.path, handler)
    for path in dict.fromkeys(r.path for r in routes if r.create or r.cors):
        app.router.add_route("OPTIONS", path, preflight)
    app[CREATE_ENDPOINTS] = tuple(f"{r.method} {r.path}" for r in routes if r.create)


def counting_creates(handler: Handler) -> Handler:
    """A create endpoint whose outcomes are counted in /metrics."""

    async def counted(request: web.Request) -> web.StreamResponse:
        created = request.app[METRICS].created
        try:
            response = await handler(request)
        except ApiError as e:
            created[request.path, e.code] += 1
            raise
        except StorageError:
            created[request.path, "storage_unavailable"] += 1
            raise
        created[request.path, "accepted"] += 1
        return response

    return counted
