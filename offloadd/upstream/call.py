"""The model call: one streaming request to an OpenAI-compatible endpoint, in the call's
dialect (Chat Completions or the Responses API), or to Anthropic's Messages API.

Turns every way the upstream can fail into an `UpstreamError` with a code, so a
conversation always ends with a reason. The caller's key is used for the call
and scrubbed from anything the upstream says back.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import orjson

from offloadd.config import ANTHROPIC_URL
from offloadd.protocol.sse import DONE, SSEParser
from offloadd.protocol.wire import Dialect
from offloadd.upstream.http1 import Client, ConnectTimeout, HTTPError, Response

KEPT_HEADERS = (
    "x-request-id",
    "openai-processing-ms",
    "openai-version",
    "openai-model",
    "request-id",
    "retry-after",
)
KEPT_PREFIXES = ("x-ratelimit-", "anthropic-ratelimit-")
ANTHROPIC_VERSION = "2023-06-01"  # for callers that send none (the API requires one)
KEY_LIKE = re.compile(r"sk-[A-Za-z0-9_\-*.]{6,}")
RETRYABLE = {408, 409, 429, 500, 502, 503, 504, 529}
KEEP_WAIT, KEEP_MAX = 0.5, 64 * 1024  # for the bytes after the last event (see _keep_connection)


class UpstreamError(Exception):
    """The upstream failed; `code` says how, `message` is its own words where it gave some."""

    def __init__(
        self,
        code: str,
        message: str,
        status: int | None = None,
        retry_after: float | None = None,
        retryable: bool = False,
        upstream_type: str | None = None,
    ):
        super().__init__(message)
        self.code, self.message, self.status = code, message, status
        self.retry_after, self.retryable = retry_after, retryable
        self.upstream_type = upstream_type  # Anthropic's `error.type` (`overloaded_error`…)

    def as_dict(self) -> dict:
        out: dict = {"code": self.code, "message": self.message, "upstream_status": self.status}
        if self.upstream_type:
            out["upstream_type"] = self.upstream_type
        if self.retry_after is not None and self.status == 429:
            out["retry_after"] = self.retry_after  # for an answer that mirrors the 429
        return out


@dataclass(frozen=True)
class Call:
    """Everything one upstream call needs; the key lives here and nowhere on disk."""

    parameters: dict
    key: str
    organization: str | None
    connect_timeout: float
    dialect: Dialect
    headers: dict = field(default_factory=dict)  # Anthropic's version and betas (no secret)

    def scrub(self, text: str) -> str:
        """Remove the key (and anything shaped like one) from text the upstream sent back."""
        if self.key:
            text = text.replace(self.key, "***")
        return KEY_LIKE.sub("sk-***", text)

    def scrub_bytes(self, data: bytes) -> bytes:
        """The key out of a chunk that is otherwise kept verbatim (an upstream may echo it)."""
        key = self.key.encode()
        return data.replace(key, b"***") if key and key in data else data


@dataclass
class Reply:
    """An open 200 streaming answer."""

    response: Response
    headers: dict


class Upstream:
    """Talks to one OpenAI-compatible base URL (and Anthropic's) through one pool of
    keep-alive connections (`http1.Client`)."""

    def __init__(
        self,
        client: Client,
        base_url: str,
        retries: int,
        max_wait: float,
        anthropic_url: str = ANTHROPIC_URL,
    ):
        self.client = client
        self.base_url = base_url.rstrip("/")
        self.anthropic_url = anthropic_url.rstrip("/")
        self.retries, self.max_wait = retries, max_wait

    async def open(self, call: Call) -> Reply:
        """Start the call; retry connect errors, 429 and 5xx (no token has been sent yet)."""
        attempt = 0
        while True:
            try:
                return await self._open_once(call)
            except UpstreamError as e:
                if not e.retryable or attempt >= self.retries:
                    raise
                wait = min(self.max_wait, e.retry_after or 0.5 * 2**attempt)
                if e.retry_after is not None and e.retry_after > self.max_wait:
                    raise
                attempt += 1
                await asyncio.sleep(wait)

    def _target(self, call: Call) -> tuple[str, dict]:
        """The URL and headers: Anthropic's take the key in `x-api-key` (every version of
        its API does) with the caller's `anthropic-version` and betas; OpenAI's a Bearer."""
        headers = {"Accept": "text/event-stream", "Content-Type": "application/json"}
        if call.dialect.upstream == "anthropic":
            headers.update({"anthropic-version": ANTHROPIC_VERSION, **call.headers})
            headers["x-api-key"] = call.key
            return self.anthropic_url + call.dialect.path, headers
        headers["Authorization"] = f"Bearer {call.key}"
        if call.organization:
            headers["OpenAI-Organization"] = call.organization
        return self.base_url + call.dialect.path, headers

    async def _open_once(self, call: Call) -> Reply:
        url, headers = self._target(call)
        try:
            resp = await self.client.post(
                url, orjson.dumps(call.parameters), headers, call.connect_timeout
            )
        except ConnectTimeout:
            raise UpstreamError(
                "upstream_connect_timeout",
                f"could not connect to the upstream within {call.connect_timeout:g} s",
                retryable=True,
            ) from None
        except HTTPError as e:
            raise UpstreamError(
                "upstream_unreachable",
                call.scrub(f"cannot reach the upstream: {e}"),
                retryable=True,
            ) from None
        except ValueError as e:  # a header of the caller's HTTP cannot carry
            raise UpstreamError("upstream_bad_request", call.scrub(str(e))) from None
        if resp.status != 200:
            raise await _http_error(resp, call)
        return Reply(resp, kept_headers(resp.headers, call))

    async def chunks(self, reply: Reply, call: Call) -> AsyncIterator[tuple[bytes, dict]]:
        """Each chunk as (raw JSON bytes exactly as sent, parsed), until `[DONE]`."""
        parser = SSEParser()
        ended = False  # at `[DONE]` or a terminal event, not stopped or broken
        try:
            while piece := await reply.response.read_any():
                for event in parser.feed(piece):
                    if event.data == DONE:
                        ended = True
                        return
                    if event.data:
                        data = call.scrub_bytes(event.data)
                        chunk = _chunk(data, call)
                        yield data, chunk
                        if failed := call.dialect.failure(chunk):
                            code, message = failed
                            raise UpstreamError(
                                "upstream_error", call.scrub(message or f"the upstream: {code}")
                            )
                        if call.dialect.is_terminal(chunk):
                            ended = True
                            return
        except HTTPError as e:
            message = call.scrub(f"the upstream connection broke: {e}")
            raise UpstreamError("upstream_disconnected", message) from None
        finally:
            if ended:
                await _keep_connection(reply.response)
            else:  # a stop closes the connection: the model stops generating, and billing
                reply.response.close()
        raise UpstreamError(
            "upstream_disconnected",
            f"the upstream closed the stream before {call.dialect.end}",
        )


async def _keep_connection(resp: Response) -> None:
    """After the last event the body's end is a few bytes away: read them, so the
    connection goes back to the pool instead of a new one (and its TLS handshake) for the
    next request. An upstream that goes on, or stalls, is closed."""
    try:
        async with asyncio.timeout(KEEP_WAIT):
            rest = 0
            while piece := await resp.read_any():
                rest += len(piece)
                if rest > KEEP_MAX:
                    raise TimeoutError
        resp.release()
    except (TimeoutError, HTTPError):
        resp.close()


def _chunk(data: bytes, call: Call) -> dict:
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError:
        chunk = None
    if not isinstance(chunk, dict):
        shown = call.scrub(data.decode("utf-8", "replace"))[:200]
        raise UpstreamError(
            "upstream_bad_chunk", f"the upstream sent a chunk that is not a JSON object: {shown!r}"
        )
    if chunk.get("error"):
        raise _error_from_body(chunk, None, call)
    return chunk


async def _http_error(resp: Response, call: Call) -> UpstreamError:
    try:
        raw = await resp.read(64 * 1024)
    except HTTPError:
        raw = b""
    finally:
        resp.close()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = {"error": {"message": raw[:500].decode("utf-8", "replace")}}
    error = _error_from_body(body if isinstance(body, dict) else {}, resp.status, call)
    error.retryable = resp.status in RETRYABLE
    error.retry_after = _retry_after(resp.header("Retry-After"))
    return error


def _error_from_body(body: dict, status: int | None, call: Call) -> UpstreamError:
    error = body.get("error")
    if not isinstance(error, dict):
        error = {"message": str(error)} if error else {}
    message = error.get("message") or f"the upstream answered HTTP {status}"
    kind = error.get("type") if call.dialect.upstream == "anthropic" else None
    kind = call.scrub(kind)[:64] if isinstance(kind, str) and kind.isprintable() else None
    return UpstreamError(_code(status), call.scrub(str(message)), status, upstream_type=kind)


def _code(status: int | None) -> str:
    if status is None:
        return "upstream_error"
    if status == 401 or status == 403:
        return "upstream_unauthorized"
    if status == 429:
        return "upstream_rate_limited"
    if status >= 500:
        return "upstream_server_error"
    return "upstream_bad_request" if status == 400 else "upstream_error"


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def kept_headers(headers: list[tuple[str, str]], call: Call) -> dict:
    """Only harmless upstream headers reach the status document: ids, timings, rate limits
    (and never the key, should the upstream echo it in one of them)."""
    return {
        k.lower(): call.scrub(v)[:200]
        for k, v in headers
        if k.lower() in KEPT_HEADERS or k.lower().startswith(KEPT_PREFIXES)
    }
