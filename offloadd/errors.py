"""The few errors the API answers with, and the one JSON shape every error answer has
(`error_body`): `http/middleware.py` answers each `ApiError` with it, and the connection
guard (`server/guard.py`) the refusals it writes before aiohttp has a request."""

from __future__ import annotations


def error_body(code: str, message: str) -> dict:
    """`{"status": "error", "error": {"code": …, "message": …}}`: built here and nowhere else."""
    return {"status": "error", "error": {"code": code, "message": message}}


class ApiError(Exception):
    """An error answered to the client as `{"status": "error", "error": {...}}`."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.headers = headers or {}


class BadRequest(ApiError):
    status = 400
    code = "bad_request"


class Unauthorized(ApiError):
    status = 401
    code = "unauthorized"


class Forbidden(ApiError):
    status = 403
    code = "forbidden"


class NotFound(ApiError):
    status = 404
    code = "not_found"


class MethodNotAllowed(ApiError):
    status = 405
    code = "method_not_allowed"


class RequestTimeout(ApiError):
    status = 408
    code = "request_timeout"


class Conflict(ApiError):
    status = 409
    code = "conflict"


class Gone(ApiError):
    status = 410
    code = "gone"


class PayloadTooLarge(ApiError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(ApiError):
    status = 415
    code = "unsupported_media_type"


class TooManyRequests(ApiError):
    status = 429
    code = "rate_limited"


class Unavailable(ApiError):
    status = 503
    code = "unavailable"
