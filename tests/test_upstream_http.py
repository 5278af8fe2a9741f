"""The model call's HTTP, against an upstream that speaks raw bytes: what is not HTTP,
headers without end, bodies cut short, keep-alive connections closed while idle. Whatever
comes, the request ends with a final status and the server goes on serving; connections
are pooled and reused."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from collections.abc import Awaitable, Callable

import pytest

from helpers import Api, eventually, how_it_ended
from hostile_upstream import chunk
from offloadd.mock.app import make_mock_app
from offloadd.mock.common import SEEN
from offloadd.protocol.sse import parse_all

Script = Callable[[asyncio.StreamWriter], Awaitable[bool]]  # True: the connection goes on
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"


def chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


def answer(text: str = "hello") -> bytes:
    """A whole, valid streamed answer, chunked."""
    events = [chunk(text).encode() + b"\n\n", b"data: [DONE]\n\n"]
    return HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(*events)


def sends(data: bytes, then: str = "keep") -> Script:
    async def script(writer: asyncio.StreamWriter) -> bool:
        writer.write(data)
        await writer.drain()
        return then == "keep"

    return script


class RawUpstream:
    """A TCP server that reads each HTTP request and answers with the next script (a good
    answer when none is left); it counts connections and requests."""

    def __init__(self) -> None:
        self.scripts: list[Script] = []
        self.connections = 0
        self.closed = 0
        self.requests = 0
        self.server: asyncio.Server | None = None
        self.open: set[asyncio.StreamWriter] = set()
        self.stopped = asyncio.Event()  # what a script that hangs waits for

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1"

    async def close_idle(self) -> None:
        """Close every connection now (as an upstream's keep-alive timeout does)."""
        for writer in list(self.open):
            writer.close()

    async def stop(self) -> None:
        self.stopped.set()
        await self.close_idle()
        if self.server:
            self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open.add(writer)
        try:
            while await self._one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open.discard(writer)
            self.closed += 1
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        await reader.readexactly(length)
        self.requests += 1
        script = self.scripts.pop(0) if self.scripts else sends(answer())
        return await script(writer)


@pytest.fixture
async def raw(make_client):
    upstream = RawUpstream()
    url = await upstream.start()
    api = Api(await make_client(upstream_url=url, upstream_retries=0), None)
    yield upstream, api
    await upstream.stop()


async def ended(api: Api, **fields) -> tuple[dict, list]:
    urls = (await api.create(**fields))["endpoints"]
    events = parse_all(await api.stream(urls["stream_events_url"]))
    doc = await api.status(urls["status_url"])
    assert how_it_ended(events)["status"] == doc["status"]
    return doc, events


async def still_serves(api: Api) -> None:
    doc, _ = await ended(api)
    assert doc["status"] == "done"
    assert doc["response"]["body"]["choices"][0]["message"]["content"] == "hello"


BROKEN = {
    "not HTTP": (b"garbage garbage\r\n\r\n", "upstream_unreachable"),
    "headers without end": (
        b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 20_000,
        "upstream_unreachable",
    ),
    "closed before a head": (b"HTTP/1.1 200 O", "upstream_unreachable"),
    "a bad chunk size": (
        HEAD
        + b"Transfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\n%s\r\nzz\r\n" % (len(chunk("a")) + 2, chunk("a").encode() + b"\n\n"),
        "upstream_disconnected",
    ),
    "a body shorter than its length": (
        HEAD + b"Content-Length: 5000\r\n\r\n" + chunk("a").encode() + b"\n\n",
        "upstream_disconnected",
    ),
    "a switch of protocols": (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\nxx",
        "upstream_error",
    ),
}


class TestBrokenHTTP:
    @pytest.mark.parametrize("sent,code", BROKEN.values(), ids=BROKEN.keys())
    async def test_ends_with_a_reason_and_the_server_goes_on(self, raw, sent, code):
        upstream, api = raw
        upstream.scripts.append(sends(sent, then="close"))
        doc, _ = await ended(api)
        assert doc["status"] == "error" and doc["error"]["code"] == code
        await still_serves(api)

    async def test_what_came_before_a_cut_is_kept(self, raw):
        upstream, api = raw
        first = chunk("kept").encode() + b"\n\n"
        upstream.scripts.append(sends(HEAD + b"Content-Length: 900\r\n\r\n" + first, "close"))
        doc, events = await ended(api)
        assert doc["error"]["code"] == "upstream_disconnected"
        assert doc["response"]["body"]["choices"][0]["message"]["content"] == "kept"
        assert b"kept" in events[0].data

    async def test_an_answer_a_byte_at_a_time(self, raw):
        upstream, api = raw

        async def trickle(writer: asyncio.StreamWriter) -> bool:
            for i in range(len(data := answer())):
                writer.write(data[i : i + 1])
                await writer.drain()
            return True

        upstream.scripts.append(trickle)
        await still_serves(api)

    async def test_an_error_status_with_a_huge_body(self, raw):
        upstream, api = raw
        body = b'{"error": {"message": "slow down"}}' + b" " * 200_000
        head = b"HTTP/1.1 429 Too Many\r\nRetry-After: 7\r\nContent-Length: %d\r\n\r\n"
        upstream.scripts.append(sends(head % len(body) + body))
        doc, _ = await ended(api)
        assert doc["error"]["code"] == "upstream_rate_limited"
        assert doc["error"]["message"] == "slow down"
        await still_serves(api)


class TestAnswersThatEndWithTheirConnection:
    """HTTP/1.0's framing: neither a length nor chunks, the body ends when the upstream
    closes."""

    async def test_a_stream(self, raw):
        upstream, api = raw
        events = chunk("hello").encode() + b"\n\ndata: [DONE]\n\n"
        upstream.scripts.append(sends(HEAD + b"\r\n" + events, then="close"))
        await still_serves(api)

    async def test_an_error_keeps_its_message(self, raw):
        upstream, api = raw
        body = b'{"error": {"message": "no such model"}}'
        upstream.scripts.append(sends(b"HTTP/1.1 404 Not Found\r\n\r\n" + body, "close"))
        doc, _ = await ended(api)
        assert doc["error"]["code"] == "upstream_error"
        assert doc["error"]["message"] == "no such model"


class TestConnections:
    async def test_are_reused(self, raw):
        upstream, api = raw
        for _ in range(5):
            await still_serves(api)
        assert upstream.requests == 5 and upstream.connections == 1

    async def test_a_wave_reuses_the_connections_of_the_wave_before(self, raw):
        upstream, api = raw
        await asyncio.gather(*(still_serves(api) for _ in range(20)))
        first = upstream.connections
        await asyncio.gather(*(still_serves(api) for _ in range(20)))
        assert upstream.requests == 40 and upstream.connections <= first + 1

    async def test_closed_by_the_upstream_while_idle_are_replaced(self, raw):
        upstream, api = raw
        await still_serves(api)
        await upstream.close_idle()
        await still_serves(api)  # whether or not the close was seen before the reuse
        assert upstream.connections == 2

    async def test_one_that_sends_what_no_request_asked_for_is_not_reused(self, raw):
        upstream, api = raw

        async def then_more(writer: asyncio.StreamWriter) -> bool:
            writer.write(answer())
            await writer.drain()
            await asyncio.sleep(0.05)  # idle in the pool by now (or soon): then this
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            return True

        upstream.scripts.append(then_more)
        await still_serves(api)
        await eventually(lambda: upstream.closed == 1)  # by offloadd, on those bytes
        await still_serves(api)
        assert upstream.connections == 2

    async def test_an_answer_that_goes_on_past_its_end_is_not_reused(self, raw):
        upstream, api = raw
        endless = HEAD + b"Transfer-Encoding: chunked\r\n\r\n"
        events = [chunk("hello").encode() + b"\n\n", b"data: [DONE]\n\n"]
        endless += b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events)

        async def then_hang(writer: asyncio.StreamWriter) -> bool:
            writer.write(endless)
            await writer.drain()
            await upstream.stopped.wait()
            return False

        upstream.scripts.append(then_hang)
        await still_serves(api)
        await still_serves(api)
        assert upstream.connections == 2


@pytest.fixture
async def tls_mock(tmp_path, aiohttp_server):
    """The mock upstream behind HTTPS, with a certificate for `localhost` made here."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost"]
        + ["-addext", "subjectAltName=DNS:localhost"],
        check=True,
        capture_output=True,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = await aiohttp_server(make_mock_app(), ssl=context)
    return f"https://localhost:{server.port}/v1", cert, server


class TestTLS:
    async def test_an_https_upstream_whose_certificate_is_trusted(
        self, tls_mock, make_client, monkeypatch
    ):
        url, cert, server = tls_mock
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # as an operator trusts a private CA
        api = Api(await make_client(upstream_url=url), None)
        for _ in range(2):
            doc, _ = await ended(api, model="mock?tokens=3&delay_ms=0")
            assert doc["status"] == "done"
            assert doc["response"]["body"]["choices"][0]["message"]["content"] == "t0 t1 t2"
        first, second = server.app[SEEN]
        assert first.peer_port == second.peer_port  # the second on the kept connection

    async def test_an_untrusted_certificate_is_refused(self, tls_mock, make_client):
        url, _, _ = tls_mock
        api = Api(await make_client(upstream_url=url), None)
        doc, _ = await ended(api)
        assert doc["error"]["code"] == "upstream_unreachable"
        assert "certificate" in doc["error"]["message"].lower()
