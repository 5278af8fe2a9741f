"""Clients facing a real `offloadd serve` process from the internet: slow, many, malformed.
Each is answered in the JSON error shape or closed; none holds a slot forever."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from helpers import eventually

LIMITS = ("--header-timeout", "1", "--body-timeout", "1")


async def _connect(daemon):
    return await asyncio.open_connection("127.0.0.1", daemon.port)


async def _answer(reader) -> tuple[int, dict]:
    """Status and JSON body of one answer, read until the server closes."""
    raw = await asyncio.wait_for(reader.read(), 10)
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), orjson.loads(body)


@pytest.fixture
async def server(serve_with_mock, tmp_path):
    return await serve_with_mock(tmp_path / "data", *LIMITS, "--max-connections", "40")


class TestSlowClients:
    async def test_headers_that_do_not_arrive_in_time_are_closed(self, server):
        partial = [b"", b"GET /healthz HT", b"GET /healthz HTTP/1.1\r\nHost: x\r\n"]
        conns = [await _connect(server) for _ in range(30)]
        for i, (_, writer) in enumerate(conns):
            writer.write(partial[i % len(partial)])
            await writer.drain()
        for reader, writer in conns:
            status, body = await _answer(reader)  # EOF: wait_for fails the test otherwise
            assert status == 408 and body["error"]["code"] == "header_timeout"
            writer.close()

    async def test_a_body_that_does_not_arrive_in_time_is_408(self, server):
        reader, writer = await _connect(server)
        writer.write(
            b"POST /v1/stream-chatgpt HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 500\r\n\r\n{"messages": '
        )
        await writer.drain()
        status, body = await _answer(reader)
        assert status == 408 and body["error"]["code"] == "body_timeout"
        writer.close()
        assert not (server_data(server) / "pub").exists()

    async def test_past_the_connection_cap_a_clear_503_and_then_room_again(self, server, http):
        held = [await _connect(server) for _ in range(40)]
        reader, writer = await _connect(server)
        status, body = await _answer(reader)
        assert status == 503 and body["error"]["code"] == "too_many_connections"
        writer.close()
        for _, w in held:
            w.close()

        async def healthy() -> bool:
            async with http.get(f"{server.url}/healthz") as resp:
                assert resp.status == 200, f"healthz: {resp.status}"
                return True

        await eventually(healthy)  # room again once the held connections are counted off


class TestConnectionCount:
    async def test_the_count_of_open_connections_returns_to_zero(self):
        """The cap counts connections as they come and go: accepted, refused and timed out
        alike are counted off when they close, so the room comes back whole."""
        from aiohttp import web

        from offloadd.server.guard import GuardedRunner, Limits

        async def hello(request: web.Request) -> web.Response:
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_get("/", hello)
        runner = GuardedRunner(app, Limits(header_timeout=0.3, max_connections=3))
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            port = runner.addresses[0][1]
            for _ in range(2):  # twice: the second round finds all the room again
                conns = []
                for _ in range(5):
                    conns.append(await asyncio.open_connection("127.0.0.1", port))
                    # accepted in this order: each of the three held is counted before the next
                    held = min(len(conns), 3)
                    await eventually(lambda held=held: runner.open_connections.count >= held)
                answers = [(await _answer(reader))[0] for reader, _ in conns]
                assert answers == [408, 408, 408, 503, 503]  # three held until too late
                for _, writer in conns:
                    writer.close()
                    await writer.wait_closed()
                await eventually(lambda: runner.open_connections.count == 0, timeout=5)
        finally:
            await runner.cleanup()


class TestParserErrorsAreJson:
    @pytest.mark.parametrize(
        "request_bytes",
        [
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n",
            b"NOT A REQUEST LINE\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
        ],
    )
    async def test_what_aiohttp_cannot_parse(self, server, request_bytes):
        reader, writer = await _connect(server)
        writer.write(request_bytes)
        await writer.drain()
        status, body = await _answer(reader)
        assert 400 <= status < 500 and body["status"] == "error"
        writer.close()

    async def test_a_missing_static_file(self, server, http):
        async with http.get(f"{server.url}/static/nothing-here.js") as resp:
            assert resp.status == 404
            assert (await resp.json())["error"]["code"] == "not_found"


def server_data(server):
    from pathlib import Path

    return Path(server.args[server.args.index("--data") + 1])
