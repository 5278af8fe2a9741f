"""A user's crowd on two daemons sharing one data directory (issue 22), as a hypothesis
`RuleBasedStateMachine`: creates on every create endpoint (`/v1/stream-chatgpt`,
`/v1/async-chatgpt`, `/v1/chat/completions` streamed or not, `/v1/responses` in the
background or streamed) through either daemon, with and without an `Idempotency-Key`
(concurrent copies and later retries of one key and body); crowds of stops (GET and POST,
through both daemons) and of Responses cancels; readers of the streams that read to the end
or hang up midway (closing or resetting); status reads and `GET /v1/responses/{id}`; SDK
streams sent with `X-Offloadd-Stop-On-Disconnect: true` whose client leaves; a reader that
stops reading a long stream. Operations run as tasks that outlive the step that started
them, so later steps interleave with them (the machine runs in a worker thread and hands
each step to the test's event loop, where the clients live).

Every client is a raw socket, its answer parsed here, so anything a daemon writes into a
connection is seen. After every run of the machine:

- each request ends with a final status (`done`, `stopped`, `error`) in its status document,
  and every final state any answer reported (status reads, stops, cancels, retrieves) is
  that one: a request ends exactly once;
- its `.txt` ends with `data: [DONE]`, the only such record in it;
- each reader read exactly the file (to the end) or a prefix of it (hanging up): no foreign
  bytes; every answer on every connection is one whole `HTTP/1.1` message and nothing else;
  status, stop, cancel and retrieve answers are JSON of the conversation they were asked for;
- an `Idempotency-Key` names one conversation however many creates raced or retried it;
  each conversation made at most one upstream call (exactly one if it completed), no upstream
  call belongs to no conversation, and the key's charges equal the conversations made;
- a reader that stopped reading costs the daemon no more than its bounded send buffer,
  whatever endpoint serves the stream;
- neither daemon logged "Bad file descriptor" or "Traceback" (nor the mock the former), and
  both still answer `/healthz` with 200 (checked after every step too).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    MultipleResults,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)
from test_keys import make_key, month_count

from conftest import file_of

FINAL = ("done", "stopped", "error")
DONE_RECORD = b"data: [DONE]\n\n"
KEEPALIVE = b": keep-alive\n\n"  # what an idle stream gets, not in its file
# Responses API statuses, as the final status of the request behind them
RESPONSE_FINAL = {
    "completed": "done",
    "incomplete": "done",
    "cancelled": "stopped",
    "failed": "error",
}
LONG_MODEL = "mock?tokens=4000&delay_ms=0"
# a stalled reader's kernel send buffer: --reader-send-buffer's 128 KiB, doubled by Linux
SEND_BOUND = 2 * 128 * 1024
OP_TIMEOUT = 20.0  # no single client waits longer than this
SETTINGS = settings(
    max_examples=15,
    stateful_step_count=30,
    deadline=None,
    phases=(Phase.generate,),  # no shrinking: each example costs real seconds
    suppress_health_check=list(HealthCheck),
    report_multiple_bugs=False,
)

DAEMON = st.integers(0, 1)
METHOD = st.sampled_from(["GET", "POST"])
MODEL = st.sampled_from(["mock?tokens=30&delay_ms=5", "mock?tokens=200&delay_ms=5"])
COPIES = st.lists(st.integers(0, 1), min_size=1, max_size=4)  # through which daemons
# a hang-up: after this many bytes of the body (None: read to the end), by close or reset
CUT = st.one_of(st.none(), st.sampled_from([0, 1, 150, 2000]))


# --- a raw HTTP/1.1 client ----------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes
    whole: bool  # the message's framing ends exactly where the bytes received end


def parse_reply(raw: bytes) -> Reply:
    """One HTTP/1.1 answer, framed by Content-Length or chunked; foreign bytes fail here."""
    assert raw.startswith(b"HTTP/1.1 "), f"a connection received, first: {raw[:120]!r}"
    head, sep, rest = raw.partition(b"\r\n\r\n")
    assert sep, f"an answer without the end of its head: {raw[:200]!r}"
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        body, whole = dechunk(rest)
    elif "content-length" in headers:
        size = int(headers["content-length"])
        body, whole = rest[:size], len(rest) == size
        assert len(rest) <= size, f"bytes after the answer: {rest[size : size + 120]!r}"
    else:
        body, whole = rest, True
    return Reply(int(status_line.split()[1]), headers, body, whole)


def dechunk(data: bytes) -> tuple[bytes, bool]:
    """The body of a chunked message so far, and whether the message ended exactly there."""
    body, pos = bytearray(), 0
    while (end := data.find(b"\r\n", pos)) >= 0:
        size_field = data[pos:end].split(b";")[0]
        assert size_field and all(c in b"0123456789abcdefABCDEF" for c in size_field), (
            f"not a chunk size: {data[pos : pos + 120]!r}"
        )
        size, start = int(size_field, 16), end + 2
        if size == 0:
            tail = data[start:]
            assert b"\r\n".startswith(tail), f"bytes after the last chunk: {tail[:120]!r}"
            return bytes(body), tail == b"\r\n"
        body += data[start : start + size]
        if len(data) < start + size + 2:
            return bytes(body), False
        assert data[start + size : start + size + 2] == b"\r\n", "a chunk longer than its size"
        pos = start + size + 2
    return bytes(body), False


@contextlib.asynccontextmanager
async def within(seconds: float, what: str):
    """A bounded wait that fails naming what did not happen in time."""
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError:
        raise AssertionError(f"{what}: not within {seconds:g} s") from None


def request_bytes(port: int, method: str, path: str, body: bytes, headers: dict) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body or method == "POST":
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def connect(port: int, method: str, path: str, body: bytes = b"", headers: dict = {}):  # noqa: B006
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request_bytes(port, method, path, body, headers))
    return reader, writer


async def stalled(port: int, method: str, path: str, body: bytes = b"", headers: dict = {}):  # noqa: B006
    """A client that reads the answer's head, then nothing more (its receive window tiny)."""
    loop, sock = asyncio.get_running_loop(), socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    try:
        async with within(OP_TIMEOUT, f"the head of the answer to {method} {path}"):
            await loop.sock_connect(sock, ("127.0.0.1", port))
            await loop.sock_sendall(sock, request_bytes(port, method, path, body, headers))
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                assert (byte := await loop.sock_recv(sock, 1)), head
                head += byte
    except BaseException:
        sock.close()
        raise
    return sock, parse_reply(head)


def unsent(server_port: int, client_port: int) -> int:
    """What the daemon's side of a loopback connection holds unacknowledged: its kernel
    send queue (`tx_queue` in /proc/net/tcp)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        _, local, remote, _, queues, *_ = line.split()
        if (int(local.split(":")[1], 16), int(remote.split(":")[1], 16)) == (
            server_port,
            client_port,
        ):
            return int(queues.split(":")[0], 16)
    raise AssertionError(f"no connection {server_port} ← {client_port}")


async def read_some(reader: asyncio.StreamReader, head: bytes, cut: int) -> bytes:
    """`head` and at least `cut` bytes after it (fewer if the answer ends first)."""
    raw = head
    while len(raw) < len(head) + cut and (chunk := await reader.read(65536)):
        raw += chunk
    return raw


async def hang_up(writer: asyncio.StreamWriter, reset: bool = False) -> None:
    if reset:  # an RST instead of a FIN, as a client that crashed
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def exchange(port: int, method: str, path: str, body: bytes = b"", headers: dict = {}):  # noqa: B006
    """Everything the connection received, until the daemon closed it."""
    reader, writer = await connect(port, method, path, body, headers)
    try:
        async with within(OP_TIMEOUT, f"the end of the answer to {method} {path}"):
            return await reader.read()
    finally:
        await hang_up(writer)


# --- what a run did, to be checked at its end ---------------------------------------------


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
        """The daemons' output; the mock's may hold a traceback of aiohttp's own when a
        stop closes its connection before its answer's head is written (not offloadd's)."""
        said = [(d.output, (b"Bad file descriptor", b"Traceback")) for d in self.daemons]
        for output, bad_words in [*said, (self.mock.output, (b"Bad file descriptor",))]:
            for bad in bad_words:
                assert bad not in output, around(output, bad)


ENDPOINTS = {
    "stream-chatgpt": "/v1/stream-chatgpt",
    "async-chatgpt": "/v1/async-chatgpt",
    "chat-stream": "/v1/chat/completions",
    "chat-wait": "/v1/chat/completions",
    "responses-background": "/v1/responses",
    "responses-stream": "/v1/responses",
}


def around(output: bytes, word: bytes) -> str:
    """The log lines around the first `word` in a process's output."""
    at = output.index(word)
    return output[max(0, at - 1500) : at + 1500].decode(errors="replace")


def path_of(url: str) -> str:
    return "/" + url.split("/", 3)[3]


def whole_reply(raw: bytes) -> Reply:
    reply = parse_reply(raw)
    assert reply.whole, f"an answer cut short: {raw[-200:]!r}"
    return reply


def read_body(raw: bytes, to_the_end: bool = False) -> bytes:
    """What a reader of a stream got of its body (all of it, when it read to the end)."""
    reply = whole_reply(raw) if to_the_end else parse_reply(raw)
    assert reply.status == 200, raw[:500]
    return reply.body


def assert_conflict(key: str | None, reply: Reply) -> None:
    """The one refusal a create may get: a copy told that the first, with its key, is
    still being made (409, `idempotency_conflict`)."""
    assert key and reply.status == 409, reply
    assert orjson.loads(reply.body)["error"]["code"] == "idempotency_conflict", reply


def json_of(raw: bytes, expected: str, name: str = "conversation_id") -> dict:
    """A JSON answer about one conversation: 200, and about that one."""
    reply = whole_reply(raw)
    assert reply.status == 200, raw
    answer = orjson.loads(reply.body)
    assert answer[name] == expected, f"asked about {expected}, answered about {answer[name]}"
    return answer


def verify_reads(reads: list[tuple[Conv, bytes, bool]], streams: dict[str, bytes]) -> None:
    """Each reader got the file (to the end) or a prefix of it (hanging up), nothing else."""
    for conv, body, to_the_end in reads:
        body, text = body.replace(KEEPALIVE, b""), streams[conv.cid]
        if to_the_end:
            assert body == text, f"a reader of {conv.kind} {conv.cid} read other bytes"
        else:
            assert text.startswith(body), f"a reader of {conv.kind} {conv.cid}: foreign bytes"


async def held_for(sock: socket.socket, port: int) -> int:
    """The most the daemon held for a stalled reader, until that stopped changing (then
    the reader hangs up)."""
    try:
        client_port = sock.getsockname()[1]
        samples = [unsent(port, client_port)]
        async with within(5, "a stalled reader's send queue settling"):
            while len(samples) < 3 or len(set(samples[-3:])) > 1:
                await asyncio.sleep(0.02)
                samples.append(unsent(port, client_port))
        return max(samples)
    finally:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


async def settle(tasks: list[asyncio.Task]) -> None:
    """Every operation of the run done (they are bounded, each by OP_TIMEOUT)."""
    deadline = time.monotonic() + OP_TIMEOUT * 2
    while pending := [t for t in tasks if not t.done()]:
        assert time.monotonic() < deadline, f"{len(pending)} operations never ended"
        await asyncio.wait(pending, timeout=1)
    for task in tasks:
        task.result()


# --- the machine --------------------------------------------------------------------------


class Crowd(RuleBasedStateMachine):
    """Each rule starts what a crowd's member does; `teardown` checks the run."""

    convs = Bundle("convs")
    responses = Bundle("responses")

    def __init__(self, world: World) -> None:
        super().__init__()
        self.world = world
        world.call(world.begin())
        self.stalled = False

    def _copies(self, kind: str, model: str, daemons: list[int], keyed: bool):
        """A create sent once through each of `daemons`, all at once: retries of one body
        and key, or (without a key) requests of their own."""
        if keyed:
            nonce, body = self.world.new_body(kind, model)
            key = f"key-{uuid.uuid4().hex}"
            return [(d, nonce, body, key) for d in daemons]
        return [(d, *self.world.new_body(kind, model), None) for d in daemons]

    def _made(self, results) -> MultipleResults:
        return multiple(*{c.cid: c for c in results if c is not None}.values())

    @initialize(target=convs, daemons=COPIES, keyed=st.booleans())
    def a_stream_to_begin_with(self, daemons, keyed):
        return self.create("stream-chatgpt", daemons, "mock?tokens=200&delay_ms=5", keyed)

    @initialize(targets=(convs, responses), daemons=COPIES, keyed=st.booleans())
    def a_response_to_begin_with(self, daemons, keyed):
        return self.create_response(daemons, "mock?tokens=200&delay_ms=5", keyed)

    @rule(
        target=convs,
        kind=st.sampled_from(["stream-chatgpt", "async-chatgpt"]),
        daemons=COPIES,
        model=MODEL,
        keyed=st.booleans(),
    )
    def create(self, kind, daemons, model, keyed):
        copies = self._copies(kind, model, daemons, keyed)
        return self._made(self.world.call(gather(self.world.create(kind, *c) for c in copies)))

    @rule(targets=(convs, responses), daemons=COPIES, model=MODEL, keyed=st.booleans())
    def create_response(self, daemons, model, keyed):
        kind = "responses-background"
        copies = self._copies(kind, model, daemons, keyed)
        return self._made(self.world.call(gather(self.world.create(kind, *c) for c in copies)))

    @rule(
        target=convs,
        kind=st.sampled_from(["chat-stream", "responses-stream"]),
        daemons=COPIES,
        model=MODEL,
        keyed=st.booleans(),
        cut=CUT,
        reset=st.booleans(),
        leave_stops=st.booleans(),
    )
    def create_streamed(self, kind, daemons, model, keyed, cut, reset, leave_stops):
        """SDK streams; when `cut`, every copy leaves midway (stopping it, if it asked to)."""
        copies = self._copies(kind, model, daemons, keyed)
        follows = (self.world.create_and_follow(kind, *c, cut, reset, leave_stops) for c in copies)
        return self._made(self.world.call(gather(follows)))

    @rule(daemons=COPIES, keyed=st.booleans())
    def create_and_wait(self, daemons, keyed):
        for copy in self._copies("chat-wait", "mock?tokens=30&delay_ms=5", daemons, keyed):
            self.world.start(self.world.create_and_wait(*copy))

    @rule(conv=convs, daemon=DAEMON)
    def retry(self, conv, daemon):
        """A client retrying an earlier create with its key and body (without a key, it
        reads the status instead: a retry would be a request of its own)."""
        world = self.world
        if conv.key is None:
            world.start(world.status(conv, daemon))
        elif conv.kind in ("chat-stream", "responses-stream"):
            args = (conv.nonce, conv.body, conv.key, None, False, False)
            world.start(world.create_and_follow(conv.kind, daemon, *args))
        else:
            world.start(world.create(conv.kind, daemon, conv.nonce, conv.body, conv.key))

    @rule(
        conv=convs,
        through=st.lists(st.tuples(DAEMON, METHOD), min_size=1, max_size=12),
    )
    def stop(self, conv, through):
        self.world.start(self.world.stops(conv, through))

    @rule(conv=responses, through=st.lists(DAEMON, min_size=1, max_size=12))
    def cancel(self, conv, through):
        self.world.start(self.world.cancels(conv, through))

    @rule(conv=convs, daemon=DAEMON, cut=CUT, reset=st.booleans(), readers=st.integers(1, 3))
    def read(self, conv, daemon, cut, reset, readers):
        for _ in range(readers):
            self.world.start(self.world.read(conv, daemon, cut, reset, sdk=False))

    @rule(conv=responses, daemon=DAEMON, cut=CUT, reset=st.booleans())
    def read_response_stream(self, conv, daemon, cut, reset):
        self.world.start(self.world.read(conv, daemon, cut, reset, sdk=True))

    @precondition(lambda self: not self.stalled)
    @rule(how=st.sampled_from(["txt", "chat-stream", "responses-stream", "retrieve"]), d=DAEMON)
    def stall(self, how, d):
        """A reader that stops reading a long stream (once a run: long streams cost)."""
        self.stalled = True
        self.world.call(self.world.stall(how, d))

    @rule(conv=convs, daemon=DAEMON)
    def read_status(self, conv, daemon):
        self.world.start(self.world.status(conv, daemon))

    @rule(conv=responses, daemon=DAEMON)
    def retrieve(self, conv, daemon):
        self.world.start(self.world.retrieve(conv, daemon))

    @rule(conv=convs, daemon=DAEMON)
    def until_streaming(self, conv, daemon):
        """Let a request get going (a condition, not a pause) before the next steps."""
        self.world.call(self.world.until_streaming(conv, daemon))

    @invariant()
    def both_daemons_answer(self):
        self.world.call(self.world.healthz())

    def teardown(self):
        self.world.call(self.world.verify())


async def gather(coros):
    return await asyncio.gather(*coros)


@pytest.mark.timeout(90)
async def test_a_crowd_on_two_daemons_sharing_a_directory(spawn, mock_process, tmp_path):
    data = tmp_path / "data"
    key = make_key(data, name="crowd", plan="unlimited")
    upstream = ("--upstream-url", f"{mock_process.url}/v1", "--upstream-key", "sk-own")
    daemons = [await spawn("serve", "--data", str(data), *upstream) for _ in range(2)]
    world = World(asyncio.get_running_loop(), data, key, mock_process, daemons)
    await asyncio.to_thread(run_state_machine_as_test, lambda: Crowd(world), settings=SETTINGS)
