"""The terminal client: `offloadd ask` creates a request and prints its answer as it streams;
`offloadd follow` follows any stream URL, resuming after a dropped connection."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

import aiohttp
import orjson
from yarl import URL

from offloadd.protocol.sse import DONE, SSEParser

RECONNECTS = 10
CLAUDE = "claude-sonnet-4-5"  # `ask --api messages` without --model
MESSAGES_EVENTS = ("message_start", "content_block_delta", "message_delta", "message_stop")
EXIT_OK, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 130


@dataclass
class Printer:
    """Writes deltas as they come; colours only when writing to a terminal."""

    out: TextIO
    tty: bool
    started: float = field(default_factory=time.monotonic)
    final: dict | None = None
    tokens: int = 0
    usage: dict | None = None
    last_id: str | None = None

    def event(self, event) -> None:
        if event.id:
            self.last_id = event.id
        if event.data == DONE:
            self.final = self.final or {"status": "done"}  # no error event before it: done
            return
        if not event.data.startswith(b"{"):
            return
        chunk = orjson.loads(event.data)
        if event.event == "error" and isinstance(chunk.get("error"), dict):  # Anthropic's
            self.final = _anthropic_end(chunk["error"])
            return
        if event.event in MESSAGES_EVENTS:
            self._message_event(chunk)
            return
        if event.event == "status" or "error" in chunk:  # the first release named its end
            self.final = chunk
            return
        if event.event and event.event.startswith("response."):  # the Responses API
            self._response_event(chunk)
            return
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            text = (choice.get("delta") or {}).get("content")
            if text and choice.get("index", 0) == 0:
                self.out.write(text)
                self.out.flush()
                self.tokens += 1

    def _response_event(self, event: dict) -> None:
        if event.get("type") == "response.output_text.delta" and event.get("output_index") == 0:
            self.out.write(str(event.get("delta") or ""))
            self.out.flush()
            self.tokens += 1
        usage = (event.get("response") or {}).get("usage")
        if isinstance(usage, dict):
            self.usage = {"completion_tokens": usage.get("output_tokens")}

    def _message_event(self, event: dict) -> None:
        delta = event.get("delta") or {}
        if event.get("type") == "content_block_delta" and delta.get("type") == "text_delta":
            self.out.write(str(delta.get("text") or ""))
            self.out.flush()
            self.tokens += 1
        if event.get("type") == "message_delta" and isinstance(event.get("usage"), dict):
            self.usage = {"completion_tokens": event["usage"].get("output_tokens")}

    def summary(self) -> str:
        status = (self.final or {}).get("status", "unknown")
        tokens = (self.usage or {}).get("completion_tokens", self.tokens)
        line = f"{status} · {tokens} tokens · {time.monotonic() - self.started:.1f} s"
        error = (self.final or {}).get("error")
        if error:
            line += f" · {error['code']}: {error['message']}"
        return f"\n\033[2m[{line}]\033[0m" if self.tty else f"\n[{line}]"


def _anthropic_end(error: dict) -> dict:
    """How a Messages stream ended, from its named `error` (offloadd's code in `details`)."""
    code = (error.get("details") or {}).get("error_code") or error.get("type")
    status = "stopped" if code == "stopped" else "error"
    return {"status": status, "error": {"code": code, "message": error.get("message")}}


async def follow(
    session: aiohttp.ClientSession, url: str, printer: Printer, headers: dict | None = None
) -> None:
    """Read the stream to `[DONE]`, reconnecting with Last-Event-ID when it breaks."""
    for attempt in range(RECONNECTS + 1):
        sent = dict(headers or {})
        if printer.last_id:
            sent["Last-Event-ID"] = printer.last_id
        try:
            async with session.get(url, headers=sent) as resp:
                if resp.status == 204:
                    return
                if resp.status != 200:
                    raise SystemExit(f"offloadd: {url} answered HTTP {resp.status}")
                parser = SSEParser()
                async for piece in resp.content.iter_any():
                    for event in parser.feed(piece):
                        printer.event(event)
                        if event.data == DONE:
                            return
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError):
            pass
        await asyncio.sleep(min(5.0, 0.25 * 2**attempt))
    raise SystemExit(f"offloadd: lost the stream at {url} after {RECONNECTS} reconnects")


async def ask(
    server: str,
    body: dict,
    api_key: str | None,
    openai_key: str | None,
    out: TextIO,
    api: str = "offloadgpt",
    anthropic_key: str | None = None,
) -> int:
    """Create a request, print its answer as it streams; Ctrl-C stops it on the server."""
    headers = {}
    if api_key:
        headers["X-API-Key"] = api_key
    if openai_key:
        headers["X-OpenAI-API-Key"] = openai_key
    if anthropic_key:
        headers["X-Anthropic-API-Key"] = anthropic_key
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(sock_connect=10)) as session:
        if api == "responses":
            answer, urls, token = await _create_response(session, server, body, headers)
        elif api == "messages":
            answer, urls, token = await _create_message(session, server, body, headers)
        else:
            answer, urls, token = await _create(session, server, body, headers)
        if answer is None:
            return EXIT_ERROR
        auth = {"Authorization": f"Bearer {token}"} if token else {}
        printer = Printer(out, out.isatty())
        interrupted = _on_interrupt(session, urls["stop_url"], auth)
        await follow(session, urls["stream_events_url"], printer, auth)
        print(printer.summary(), file=out)
        if interrupted.is_set():
            return EXIT_INTERRUPTED
        return EXIT_ERROR if (printer.final or {}).get("status") == "error" else EXIT_OK


async def _create(session, server: str, body: dict, headers: dict) -> tuple:
    async with session.post(
        f"{server.rstrip('/')}/v1/stream-chatgpt", json=body, headers=headers
    ) as resp:
        answer = await resp.json(content_type=None)
    if answer.get("status") != "success":
        return _failed(answer)
    return answer, answer["endpoints"], answer["authorization"].get("bearer_token")


async def _create_response(session, server: str, body: dict, headers: dict) -> tuple:
    """The Responses API in background mode: the URLs come in the answer's headers."""
    messages = body.pop("messages")
    body = {**body, "input": messages, "background": True}
    async with session.post(f"{server.rstrip('/')}/v1/responses", json=body, headers=headers) as r:
        answer = await r.json(content_type=None)
        if r.status != 200:
            return _failed(answer)
        urls = {"stream_events_url": r.headers["X-Offloadd-Stream-Url"]}
        urls["stop_url"] = r.headers["X-Offloadd-Stop-Url"]
        return answer, urls, r.headers.get("X-Offloadd-Bearer-Token")


async def _create_message(session, server: str, body: dict, headers: dict) -> tuple:
    """Anthropic's Messages API, streamed: the URLs come in the answer's headers, and the
    answer is then read from the stream URL (leaving the POST leaves the request running)."""
    turns = body.pop("messages")
    system = [m["content"] for m in turns if m["role"] == "system"]
    body = {
        "model": CLAUDE,
        "max_tokens": 1024,
        **body,
        "messages": [m for m in turns if m["role"] != "system"],
    }
    body = {**body, "stream": True, **({"system": system[0]} if system else {})}
    async with session.post(f"{server.rstrip('/')}/v1/messages", json=body, headers=headers) as r:
        if r.status != 200:
            return _failed(await r.json(content_type=None))
        urls = {"stream_events_url": r.headers["X-Offloadd-Stream-Url"]}
        urls["stop_url"] = r.headers["X-Offloadd-Stop-Url"]
        return {}, urls, r.headers.get("X-Offloadd-Bearer-Token")


def _failed(answer: dict) -> tuple:
    error = answer.get("error") or {}
    code = error.get("code") or (error.get("details") or {}).get("error_code") or error.get("type")
    print(f"offloadd: {code}: {error.get('message')}", file=sys.stderr)
    return None, {}, None


async def follow_url(url: str, token: str | None, out: TextIO) -> int:
    """`offloadd follow`: a stream URL, live or finished."""
    if token and "token=" not in url:
        url = str(URL(url).update_query(token=token))
    async with aiohttp.ClientSession() as session:
        printer = Printer(out, out.isatty())
        await follow(session, url, printer)
        print(printer.summary(), file=out)
        return EXIT_ERROR if (printer.final or {}).get("status") == "error" else EXIT_OK


def _on_interrupt(session: aiohttp.ClientSession, stop_url: str, auth: dict) -> asyncio.Event:
    """First Ctrl-C: stop the request on the server and keep reading to its end.
    Second Ctrl-C: leave at once."""
    loop = asyncio.get_running_loop()
    interrupted = asyncio.Event()
    tasks: set[asyncio.Task] = set()

    async def stop() -> None:
        async with session.post(stop_url, headers=auth) as resp:
            await resp.read()

    def handler() -> None:
        if interrupted.is_set():
            raise SystemExit(EXIT_INTERRUPTED)
        interrupted.set()
        print("\n[stopping…]", file=sys.stderr)
        task = loop.create_task(stop())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    loop.add_signal_handler(signal.SIGINT, handler)
    return interrupted
