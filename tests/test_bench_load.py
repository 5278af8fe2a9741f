"""The benchmark's load generator (bench/wire.py, bench/load.py) reads what the servers
send: answers split anywhere, chunked or not; a Durable Streams long-poll reader follows a
live answer to its end, appenders and a catch-up reader speak the write path. A figure
from a generator that misreads would be a figure about the generator."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from load import Reader, Result, catch_up, read_durable, run_appenders  # noqa: E402
from wire import Exchange  # noqa: E402


class Owner:
    """Sends three requests, keeps every answer."""

    def __init__(self) -> None:
        self.answers: list[tuple[int, bytes]] = []
        self.finished = False

    def next_request(self) -> bytes | None:
        return None if len(self.answers) == 3 else b"GET / HTTP/1.1\r\n\r\n"

    def answer(self, status: int, head: bytes, body: bytes, now: int) -> None:
        self.answers.append((status, body))


class Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        self.closed = True


ANSWERS = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n"
    b"HTTP/1.1 204 No Content\r\nStream-Closed: true\r\n\r\n"
    b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody"
)


@pytest.mark.parametrize("piece", [1, 2, 7, len(ANSWERS)])
async def test_answers_split_anywhere_are_read_whole(piece):
    owner, transport = Owner(), Transport()
    exchange = Exchange(owner, None)
    exchange.connection_made(transport)
    for i in range(0, len(ANSWERS), piece):
        exchange.data_received(ANSWERS[i : i + piece])
    assert owner.answers == [(200, b"hello, world"), (204, b""), (200, b"body")]
    assert len(transport.written) == 3 and transport.closed


async def test_a_long_poll_reader_follows_a_live_answer_to_its_end(spawn, tmp_path, http):
    server = await spawn("serve", "--data", str(tmp_path), "--upstream-url", "mock", "--no-auth")
    body = {
        "messages": [{"role": "user", "content": "x"}],
        "model": "mock?tokens=30&delay_ms=20&stamp=1",
    }
    async with http.post(f"{server.url}/v1/stream-chatgpt", json=body) as resp:
        url = (await resp.json())["endpoints"]["stream_events_url"]
    result = Result(readers=1)
    await read_durable(url, "longpoll", result, 0, lambda: None)
    assert result.errors == []
    assert result.events == 33  # the role chunk, 30 tokens, the finish, [DONE]
    assert len(result.first_byte_ns) == 1  # its first answer, once


async def test_appenders_and_a_catch_up_reader_speak_the_write_path(spawn, tmp_path, http):
    server = await spawn("serve", "--data", str(tmp_path), "--upstream-url", "mock", "--no-auth")
    url = f"{server.url}/v1/stream/bench-json"
    async with http.put(url, headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 201
    appended = await run_appenders([url, url], 0.3, producer=True)
    assert appended.errors == [] and appended.events > 2
    async with http.get(f"{url}?offset=-1") as resp:
        assert len(await resp.json()) == appended.events
    octets = f"{server.url}/v1/stream/bench-bytes"
    async with http.put(octets, headers={"Content-Type": "application/octet-stream"}) as resp:
        assert resp.status == 201
    for _ in range(3):
        async with http.post(octets, data=b"x" * 300_000) as resp:
            assert resp.status in (200, 204)
    read = await catch_up(octets)
    assert read.errors == [] and read.body_bytes == 900_000


def test_a_json_reader_counts_each_message_once_in_order():
    result = Result()
    reader = Reader("json", result)
    reader.messages(b'[{"i":0,"t":1000000000000000000},{"i":1,"t":1000000000000000001}]', 0)
    reader.messages(b'[{"i":3,"t":1000000000000000003}]', 0)
    assert result.events == 3 and result.errors == ["expected message 2, got 3"]
