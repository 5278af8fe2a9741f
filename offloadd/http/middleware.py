"""The one place errors become answers (the JSON error shape), and CORS."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from offloadd.domain.dialects import MESSAGES_ENDPOINT
from offloadd.errors import (
    ApiError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    error_body,
)
from offloadd.http.appkeys import CONFIG, STATIC
from offloadd.protocol import durable
from offloadd.protocol.wire import anthropic_error
from offloadd.storage.layout import READ_PREFIXES, STREAMS_PREFIX
from offloadd.storage.store import StorageError

CORS_READ_PREFIXES = (*READ_PREFIXES, STREAMS_PREFIX)  # any origin may read (--cors-origins)

log = logging.getLogger("offloadd.web")
ANTHROPIC_PATHS = (MESSAGES_ENDPOINT,)  # endpoints whose errors are in Anthropic's shape
HTTP_CODES = {
    404: NotFound("no such endpoint or conversation"),
    405: MethodNotAllowed("this method is not allowed here"),
}


def error_response(
    status: int,
    code: str,
    message: str,
    headers: dict | None = None,
    request: web.Request | None = None,
    kind: str | None = None,
):
    """The one error shape, in the words of the endpoint's API: Anthropic's on its Messages
    endpoint (`{"type": "error", "error": {"type", "message"}}`, `kind` its own type), so
    its SDKs raise their own classes; offloadd's everywhere else."""
    # nosniff on every error: browsers must not read a JSON error as anything else (§12.7)
    headers = {"X-Content-Type-Options": "nosniff", **(headers or {})}
    if request is not None and request.path in ANTHROPIC_PATHS:
        body = anthropic_error(code, message, status, kind)
        return web.json_response(body, status=status, headers=headers)
    return web.json_response(error_body(code, message), status=status, headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler) -> web.StreamResponse:
    """Every failure becomes the one JSON error shape; nothing else reaches a client."""
    try:
        return await handler(request)
    except ApiError as e:
        kind = getattr(e, "upstream_type", None)
        response = error_response(e.status, e.code, e.message, e.headers, request, kind)
        if e.status == 408:  # the rest of a late body must not be read as the next request
            response.force_close()
        return response
    except StorageError as e:
        log.error("storage: %s", e)
        message = f"the server cannot store data: {e}"
        return error_response(503, "storage_unavailable", message, None, request)
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[CONFIG].max_body_bytes
        too_large = PayloadTooLarge(f"the body is larger than {limit} bytes")
        return error_response(too_large.status, too_large.code, too_large.message, None, request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        known = HTTP_CODES.get(e.status)
        code = known.code if known else "http_error"
        message = known.message if known else e.reason
        return error_response(
            e.status,
            code,
            message,
            {"Allow": e.headers.get("Allow", "")} if e.status == 405 else None,
            request,
        )
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.rel_url.path)
        return error_response(
            500, "internal_error", "the server failed; see its log", None, request
        )


def _allowed_origin(request: web.Request, origins: tuple[str, ...]) -> str | None:
    if not origins:
        return None
    if "*" in origins:
        return "*"
    origin = request.headers.get("Origin")
    return origin if origin in origins else None


def cors_headers(request: web.Request) -> dict:
    """CORS for reading URLs (default any origin); for create only when configured."""
    config = request.app[CONFIG]
    reading = request.path.startswith(CORS_READ_PREFIXES)
    origins = config.cors_origins if reading else config.create_cors_origins
    origin = _allowed_origin(request, origins)
    # An answer whose CORS depends on the Origin says so whatever the Origin was (none,
    # or one refused too): a cache in front (nginx, docs/deployment-cache.md) would
    # otherwise hand one origin's answer to every other.
    vary = {"Vary": "Origin"} if origins and "*" not in origins else {}
    if origin is None:
        return vary
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Expose-Headers": "X-RateLimit-Limit, X-RateLimit-Remaining, "
        "X-RateLimit-Reset, Retry-After, X-Offloadd-Status-Url, X-Offloadd-Stream-Url, "
        "X-Offloadd-Stop-Url, X-Offloadd-Bearer-Token, X-Offloadd-Conversation-Id"
        + (f", {durable.RESPONSE_HEADERS}" if reading else ""),
        **vary,
    }


@web.middleware
async def cors_middleware(request: web.Request, handler) -> web.StreamResponse:
    response = await handler(request)
    if not response.prepared and not response.get(STATIC):
        for name, value in cors_headers(request).items():
            if name == "Vary" and "Vary" in response.headers:  # keep the answer's own Vary
                value = f"{response.headers['Vary']}, {value}"
            response.headers[name] = value
    return response


async def preflight(request: web.Request) -> web.Response:
    headers = cors_headers(request)
    allowed = "Access-Control-Allow-Origin" in headers
    if allowed and request.path.startswith(STREAMS_PREFIX):
        headers.update(
            {
                "Access-Control-Allow-Methods": "GET, POST, PUT, DELETE, HEAD, OPTIONS",
                "Access-Control-Allow-Headers": durable.REQUEST_HEADERS,
                "Access-Control-Max-Age": "86400",
            }
        )
    elif allowed:
        headers.update(
            {
                "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                "Access-Control-Allow-Headers": "Authorization, Last-Event-ID, Content-Type"
                + (
                    ", X-API-Key, X-RapidAPI-Key, X-OpenAI-API-Key, X-OpenAI-Organization"
                    ", X-Anthropic-API-Key, anthropic-version, anthropic-beta, Idempotency-Key"
                    ", anthropic-dangerous-direct-browser-access"
                    if not request.path.startswith(READ_PREFIXES)
                    else ", If-None-Match"
                ),
                "Access-Control-Max-Age": "86400",
            }
        )
    return web.Response(status=204, headers=headers)
