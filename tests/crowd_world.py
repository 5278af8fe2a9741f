"""The crowd's world: the daemons, the conversations made, what every client saw, and the
checks a run must pass (one ending per request, no foreign bytes, charges = calls)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from test_keys import month_count

from crowd_http import (
    DONE_RECORD,
    FINAL,
    KEEPALIVE,
    LONG_MODEL,
    OP_TIMEOUT,
    RESPONSE_FINAL,
    SEND_BOUND,
    Reply,
    around,
    assert_conflict,
    connect,
    exchange,
    hang_up,
    held_for,
    json_of,
    parse_reply,
    path_of,
    read_body,
    read_some,
    stalled,
    whole_reply,
    within,
)
from helpers import file_of


@dataclass(eq=False)
class Conv:
    """One request made, as its clients know it."""

    cid: str
    nonce: str
    kind: str
    body: bytes
    key: str | None
    status: str  # paths: any daemon serves them
    stream: str
    stop: str
    rid: str | None = None  # the Responses API id


@dataclass
class Run:
    """One example's requests, and what its clients saw of them."""

    convs: dict[str, Conv] = field(default_factory=dict)
    tasks: list[asyncio.Task] = field(default_factory=list)
    reads: list[tuple[Conv, bytes, bool]] = field(default_factory=list)  # body, to the end?
    seen_final: list[tuple[Conv, str, str]] = field(default_factory=list)  # status, who said
    stalled: list[tuple[Conv, socket.socket, int]] = field(default_factory=list)  # the port


class World:
    """The daemons, the mock and the key, shared by every run; the loop they live on."""

    def __init__(self, loop, data: Path, key: str, mock, daemons: list) -> None:
        self.loop, self.data, self.key, self.mock, self.daemons = loop, data, key, mock, daemons
        self.nonces: dict[str, str] = {}  # every conversation made so far: nonce → id
        self.key_of: dict[str, str] = {}  # Idempotency-Key → conversation id
        self.run = Run()

    def call(self, coro):
        """Run `coro` on the test's loop (the machine runs in a thread of its own)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(OP_TIMEOUT * 3)

    def start(self, coro) -> None:
        """Run `coro` as a task that outlives the step: later steps interleave with it."""

        async def spawn():
            self.run.tasks.append(asyncio.create_task(coro))

        self.call(spawn())

    def port(self, daemon: int) -> int:
        return self.daemons[daemon].port

    # --- creates --------------------------------------------------------------------------

    def new_body(self, kind: str, model: str) -> tuple[str, bytes]:
        nonce = uuid.uuid4().hex
        text = f"crowd {nonce}"
        if kind.startswith("responses"):
            body: dict = {"model": model, "input": text}
            body["background" if kind == "responses-background" else "stream"] = True
        else:
            body = {"model": model, "messages": [{"role": "user", "content": text}]}
            if kind.startswith("chat-"):
                body["stream"] = kind == "chat-stream"
        return nonce, orjson.dumps(body)

    def headers(self, key: str | None, stop_on_leave: bool = False) -> dict:
        headers = {"X-API-Key": self.key, **({"Idempotency-Key": key} if key else {})}
        return {**headers, "X-Offloadd-Stop-On-Disconnect": "true"} if stop_on_leave else headers

    def made(self, nonce: str, kind: str, body: bytes, key: str | None, reply: Reply) -> Conv:
        """The conversation a create's answer names (the first one made for its key)."""
        h = reply.headers
        if kind in ("stream-chatgpt", "async-chatgpt"):
            answer = orjson.loads(reply.body)
            cid, urls = answer["conversation_id"], answer["endpoints"]
            status, stop = path_of(urls["status_url"]), path_of(urls["stop_url"])
        else:
            cid, status = h["x-offloadd-conversation-id"], path_of(h["x-offloadd-status-url"])
            stop = path_of(h["x-offloadd-stop-url"])
        if key is not None:
            assert self.key_of.setdefault(key, cid) == cid, f"key {key} made a second request"
        assert self.nonces.setdefault(nonce, cid) == cid, f"{nonce}: two conversations"
        conv = self.run.convs.setdefault(
            cid,
            Conv(cid, nonce, kind, body, key, status, status.removesuffix(".json") + ".txt", stop),
        )
        conv.rid = h.get("x-offloadd-response-id")
        assert (conv.nonce, conv.key) == (nonce, key), f"{cid} answered a foreign create"
        return conv

    async def create(self, kind, daemon, nonce, body, key) -> Conv | None:
        """A create answered at once with JSON (None: a concurrent copy was told 409)."""
        raw = await exchange(self.port(daemon), "POST", ENDPOINTS[kind], body, self.headers(key))
        reply = whole_reply(raw)
        if reply.status != 200:
            assert_conflict(key, reply)
            return None
        return self.made(nonce, kind, body, key, reply)

    async def create_and_follow(self, kind, daemon, nonce, body, key, cut, reset, leave_stops):
        """An SDK stream: the answer's head names the request, its body is the transcript;
        read to the end in a task of its own, or left after `cut` bytes."""
        headers = self.headers(key, leave_stops)
        reader, writer = await connect(self.port(daemon), "POST", ENDPOINTS[kind], body, headers)
        handed_on = False
        try:
            async with within(OP_TIMEOUT, f"a {kind} create's answer"):
                head = await reader.readuntil(b"\r\n\r\n")
                reply = parse_reply(head)
                if reply.status != 200:
                    assert_conflict(key, whole_reply(head + await reader.read()))
                    return None
                conv = self.made(nonce, kind, body, key, reply)
                if cut is None:
                    self.run.tasks.append(
                        asyncio.create_task(self.read_on(conv, reader, writer, head))
                    )
                    handed_on = True
                    return conv
                raw = await read_some(reader, head, cut)
            self.run.reads.append((conv, read_body(raw), False))
            return conv
        finally:
            if not handed_on:
                await hang_up(writer, reset)

    async def read_on(self, conv: Conv, reader, writer, head: bytes) -> None:
        """The rest of an answer whose head was read, to the end."""
        try:
            async with within(OP_TIMEOUT, f"the end of {conv.kind} {conv.cid}'s stream"):
                raw = head + await reader.read()
        finally:
            await hang_up(writer)
        self.run.reads.append((conv, read_body(raw, to_the_end=True), True))

    async def create_and_wait(self, daemon, nonce, body, key) -> None:
        """`/v1/chat/completions` without `stream`: the answer once the request is done."""
        path, headers = ENDPOINTS["chat-wait"], self.headers(key)
        reply = whole_reply(await exchange(self.port(daemon), "POST", path, body, headers))
        if reply.status != 200:
            return assert_conflict(key, reply)
        assert orjson.loads(reply.body)["object"] == "chat.completion"
        conv = self.made(nonce, "chat-wait", body, key, reply)
        self.run.seen_final.append((conv, "done", "a completion"))

    # --- the rest of a crowd --------------------------------------------------------------

    async def stops(self, conv: Conv, through: list[tuple[int, str]]) -> None:
        raws = await asyncio.gather(*(exchange(self.port(d), m, conv.stop) for d, m in through))
        for raw in raws:
            answer = json_of(raw, conv.cid, "conversation_id")
            assert answer["status"] == "success", answer
            if answer["conversation_status"] in FINAL:
                self.run.seen_final.append((conv, answer["conversation_status"], "a stop"))

    async def cancels(self, conv: Conv, through: list[int]) -> None:
        path = f"/v1/responses/{conv.rid}/cancel"
        raws = await asyncio.gather(*(exchange(self.port(d), "POST", path) for d in through))
        for raw in raws:
            self.saw_response(conv, json_of(raw, conv.rid, "id"), "a cancel")

    async def read(self, conv: Conv, daemon: int, cut: int | None, reset: bool, sdk: bool):
        path = f"/v1/responses/{conv.rid}?stream=true" if sdk else conv.stream
        if cut is None:
            raw = await exchange(self.port(daemon), "GET", path)
            self.run.reads.append((conv, read_body(raw, to_the_end=True), True))
            return
        reader, writer = await connect(self.port(daemon), "GET", path)
        try:
            async with within(OP_TIMEOUT, f"{cut} bytes of {path}"):
                raw = await read_some(reader, await reader.readuntil(b"\r\n\r\n"), cut)
        finally:
            await hang_up(writer, reset)
        self.run.reads.append((conv, read_body(raw), False))

    async def status(self, conv: Conv, daemon: int) -> str:
        doc = json_of(await exchange(self.port(daemon), "GET", conv.status), conv.cid)
        if doc["status"] in FINAL:
            self.run.seen_final.append((conv, doc["status"], "a status read"))
        return doc["status"]

    async def retrieve(self, conv: Conv, daemon: int) -> None:
        raw = await exchange(self.port(daemon), "GET", f"/v1/responses/{conv.rid}")
        self.saw_response(conv, json_of(raw, conv.rid, "id"), "a retrieve")

    def saw_response(self, conv: Conv, response: dict, who: str) -> None:
        if final := RESPONSE_FINAL.get(response["status"]):
            self.run.seen_final.append((conv, final, who))

    async def stall(self, how: str, daemon: int) -> None:
        """A reader that stops reading a long stream, and keeps its connection open."""
        port = self.port(daemon)
        if how in ("chat-stream", "responses-stream"):
            nonce, body = self.new_body(how, LONG_MODEL)
            sock, reply = await stalled(port, "POST", ENDPOINTS[how], body, self.headers(None))
            conv = self.made(nonce, how, body, None, reply)
        else:
            kind = "stream-chatgpt" if how == "txt" else "responses-background"
            nonce, body = self.new_body(kind, LONG_MODEL)
            conv = await self.create(kind, daemon, nonce, body, None)
            assert conv is not None
            path = conv.stream if how == "txt" else f"/v1/responses/{conv.rid}?stream=true"
            sock, reply = await stalled(port, "GET", path)
        self.run.stalled.append((conv, sock, port))
        assert reply.status == 200, reply

    async def until_streaming(self, conv: Conv, daemon: int) -> None:
        async with within(OP_TIMEOUT, f"{conv.kind} {conv.cid} leaving `waiting`"):
            while await self.status(conv, daemon) == "waiting":
                await asyncio.sleep(0.02)

    async def healthz(self) -> None:
        for daemon in range(len(self.daemons)):
            reply = whole_reply(await exchange(self.port(daemon), "GET", "/healthz"))
            assert reply.status == 200, reply

    # --- the end of a run -----------------------------------------------------------------

    async def begin(self) -> None:
        """A run of its own: what an earlier run that failed left running is cancelled."""
        for task in self.run.tasks:
            task.cancel()
        await asyncio.gather(*self.run.tasks, return_exceptions=True)
        for _, sock, _ in self.run.stalled:
            sock.close()
        self.run = Run()

    async def verify(self) -> None:
        run = self.run
        await settle(run.tasks)
        finals = {cid: await self.final_status(conv) for cid, conv in run.convs.items()}
        streams = {cid: await self.whole_stream(conv) for cid, conv in run.convs.items()}
        for conv, status, who in run.seen_final:
            ended = finals[conv.cid]
            assert ended == status, f"{who} said {status}, {conv.kind} {conv.cid} ended {ended}"
        verify_reads(run.reads, streams)
        for conv, sock, port in run.stalled:
            held = await held_for(sock, port)
            assert held <= SEND_BOUND, f"a stalled reader of {conv.kind}: {held} bytes held"
            assert len(streams[conv.cid]) > 2 * SEND_BOUND, "too short a stream to tell"
        await self.verify_upstream_calls(run, finals)
        self.verify_logs()
        await self.healthz()

    async def final_status(self, conv: Conv) -> str:
        """The status in the request's document on disk, once it is final."""
        path = file_of(self.data, conv.status)
        async with within(OP_TIMEOUT, f"a final status of {conv.kind} {conv.cid}"):
            while (status := orjson.loads(path.read_bytes())["status"]) not in FINAL:
                await asyncio.sleep(0.05)
        return status

    async def whole_stream(self, conv: Conv) -> bytes:
        """The `.txt` once its end is written (just after the final document)."""
        path = file_of(self.data, conv.stream)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                while not path.read_bytes().endswith(DONE_RECORD):
                    await asyncio.sleep(0.05)
        text = path.read_bytes()
        assert text.endswith(DONE_RECORD), f"{conv.kind} {conv.cid} ends {text[-200:]!r}"
        assert text.count(b"data: [DONE]") == 1, f"{conv.kind} {conv.cid}: two [DONE]"
        return text

    async def verify_upstream_calls(self, run: Run, finals: dict[str, str]) -> None:
        calls: dict[str, int] = {}
        for seen in await self.upstream_requests():
            text = orjson.dumps(seen["body"]).decode()
            nonce = text.partition("crowd ")[2][:32]
            assert nonce in self.nonces, f"an upstream call of no conversation: {text[:200]}"
            calls[nonce] = calls.get(nonce, 0) + 1
        for conv in run.convs.values():
            made = calls.get(conv.nonce, 0)
            assert made <= 1, f"{conv.kind} {conv.cid} (key {conv.key}) called upstream {made}x"
            if finals[conv.cid] == "done":
                assert made == 1, f"{conv.kind} {conv.cid} done without an upstream call"
        charged = await asyncio.to_thread(month_count, self.data, "crowd")
        assert charged == len(self.nonces), f"{charged} charges for {len(self.nonces)} requests"

    async def upstream_requests(self) -> list[dict]:
        raw = await exchange(self.mock.port, "GET", "/_mock/requests")
        return orjson.loads(whole_reply(raw).body)["requests"]

    def verify_logs(self) -> None:
        """Neither the daemons nor the mock upstream logged a bad descriptor or a traceback."""
        for output in [d.output for d in self.daemons] + [self.mock.output]:
            for bad in (b"Bad file descriptor", b"Traceback"):
                assert bad not in output, around(output, bad)


ENDPOINTS = {
    "stream-chatgpt": "/v1/stream-chatgpt",
    "async-chatgpt": "/v1/async-chatgpt",
    "chat-stream": "/v1/chat/completions",
    "chat-wait": "/v1/chat/completions",
    "responses-background": "/v1/responses",
    "responses-stream": "/v1/responses",
}


async def settle(tasks: list[asyncio.Task]) -> None:
    """Every operation of the run done (they are bounded, each by OP_TIMEOUT)."""
    deadline = time.monotonic() + OP_TIMEOUT * 2
    while pending := [t for t in tasks if not t.done()]:
        assert time.monotonic() < deadline, f"{len(pending)} operations never ended"
        await asyncio.wait(pending, timeout=1)
    for task in tasks:
        task.result()


# --- the machine --------------------------------------------------------------------------


def verify_reads(reads: list[tuple[Conv, bytes, bool]], streams: dict[str, bytes]) -> None:
    """Each reader got the file (to the end) or a prefix of it (hanging up), nothing else."""
    for conv, body, to_the_end in reads:
        body, text = body.replace(KEEPALIVE, b""), streams[conv.cid]
        if to_the_end:
            assert body == text, f"a reader of {conv.kind} {conv.cid} read other bytes"
        else:
            assert text.startswith(body), f"a reader of {conv.kind} {conv.cid}: foreign bytes"
