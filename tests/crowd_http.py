"""A raw HTTP/1.1 client for the crowd test: every answer parsed here, so whatever a daemon
writes into a connection is seen (a foreign byte, a second message, a reset)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

import orjson

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
