"""Nothing lost, nothing leaked: disks that refuse writes, connect timeouts, secrets,
slow readers and leaked descriptors."""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import socket

import orjson
import pytest

from helpers import OPENAI_KEY, SEED_BODY, eventually, files_under
from offloadd.protocol.sse import parse_all


class TestDisk:
    async def test_create_answers_503_when_the_directory_cannot_be_written(self, client, data_dir):
        data_dir.mkdir(parents=True, exist_ok=True)
        (data_dir / "pub").write_text("not a directory")  # any write below it fails
        resp = await client.post(
            "/v1/stream-chatgpt", json=SEED_BODY, headers={"X-OpenAI-API-Key": OPENAI_KEY}
        )
        assert resp.status == 503
        body = await resp.json()
        assert body["error"]["code"] == "storage_unavailable"
        assert "cannot" in body["error"]["message"]
        assert files_under(data_dir) == []

    async def test_a_request_that_cannot_write_ends_its_upstream_call(
        self, serve_with_mock, mock_process, http, tmp_path
    ):
        """The daemon may write files of at most 64 KiB (RLIMIT_FSIZE): a long answer
        hits the limit mid-stream, as on a full disk."""
        mock, data = mock_process, tmp_path / "data"
        limit = 64 * 1024

        def small_files() -> None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

        daemon = await serve_with_mock(data, "--keepalive", "0.5", preexec_fn=small_files)
        body = {**SEED_BODY, "model": "mock?tokens=5000&delay_ms=1"}
        async with http.post(f"{daemon.url}/v1/stream-chatgpt", json=body) as resp:
            urls = (await resp.json())["endpoints"]
        async with http.get(urls["stream_events_url"]) as resp:
            raw = await asyncio.wait_for(resp.read(), 30)
        events = parse_all(raw)
        assert events[-1].data == b"[DONE]"
        final = orjson.loads(events[-2].data)
        assert final["status"] == "error" and final["error"]["code"] == "storage_error"
        async with http.get(f"{mock.url}/_mock/requests") as resp:
            [seen] = (await resp.json())["requests"]
        assert seen["client_closed"] is True and seen["chunks_sent"] < 5000
        daemon.signal(signal.SIGTERM)
        await daemon.wait()
        output = daemon.output.decode()
        assert "cannot append to the stream file" in output


class TestConnectTimeout:
    async def test_an_upstream_that_never_accepts_ends_in_a_connect_timeout(self, make_api):
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        for _ in range(4):  # fill the accept queue: later SYNs go unanswered
            s = socket.socket()
            s.setblocking(False)
            try:
                s.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            fillers.append(s)
        try:
            api = await make_api(upstream_url=f"http://127.0.0.1:{port}/v1")
            urls = (await api.create(connect_timeout=1))["endpoints"]
            events = await api.events(urls["stream_events_url"])
            final = orjson.loads(events[-2].data)
            assert final["status"] == "error"
            assert final["error"]["code"] == "upstream_connect_timeout"
        finally:
            for s in [*fillers, listener]:
                s.close()


class TestSecrets:
    async def test_keys_and_tokens_never_reach_disk_or_logs(self, spawn, http, tmp_path):
        from click.testing import CliRunner

        from offloadd import cli

        data = tmp_path / "data"
        made = CliRunner().invoke(
            cli.main, ["keys", "create", "--name", "s", "--plan", "unlimited", "--data", str(data)]
        )
        api_key = made.output.strip().splitlines()[-1]
        openai_key = "sk-proj-DISTINCTIVE0secret0key0Zq9Xw7"
        daemon = await spawn(
            "serve", "--data", str(data), "--upstream-url", "mock", "--log-level", "DEBUG"
        )
        headers = {"X-API-Key": api_key, "X-OpenAI-API-Key": openai_key}
        tokens = []
        models = [
            "mock?tokens=3",
            "mock?status=401",
            "mock?status=500",
            "mock?tokens=9&disconnect_after=2",
            "mock?tokens=9&garbage_after=2",
        ]
        for model in models:
            for access in ("public", "private"):
                body = {**SEED_BODY, "model": model, "access": access}
                async with http.post(
                    f"{daemon.url}/v1/stream-chatgpt", json=body, headers=headers
                ) as resp:
                    answer = await resp.json()
                token = answer["authorization"].get("bearer_token")
                tokens += [token] if token else []
                url = answer["endpoints"]["stream_events_url"]
                async with http.get(f"{url}?token={token}" if token else url) as resp:
                    await resp.read()
        # a bad request carrying the key too
        async with http.post(
            f"{daemon.url}/v1/stream-chatgpt",
            data=b"{bad",
            headers={**headers, "Content-Type": "application/json"},
        ) as resp:
            assert resp.status == 400
        daemon.signal(signal.SIGTERM)
        await daemon.wait()
        secrets = [openai_key, api_key, *tokens]
        assert len(tokens) == len(models)
        blobs = [p.read_bytes() for p in data.rglob("*") if p.is_file()]
        blobs.append(daemon.output)
        assert b"offloadd.access" in daemon.output or b'"path"' in daemon.output
        for secret in secrets:
            for blob in blobs:
                assert secret.encode() not in blob


class TestReaders:
    async def test_a_reader_that_stops_reading_does_not_hold_back_others(self, make_api):
        api = await make_api()
        urls = (await api.create(model="mock?tokens=6000&delay_ms=0"))["endpoints"]
        path = "/" + urls["stream_events_url"].split("/", 3)[3]
        stalled = []
        for _ in range(20):
            sock = socket.socket()  # a small window, so the server cannot hand it all over
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", api.client.port))
            reader, writer = await asyncio.open_connection(sock=sock)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            await writer.drain()
            stalled.append(writer)  # ... and never read
        raw = await asyncio.wait_for(api.stream(urls["stream_events_url"]), 60)
        assert raw.endswith(b"data: [DONE]\n\n")
        assert len(parse_all(raw)) > 6000
        from offloadd.http.appkeys import HUB

        tails = api.client.app[HUB].tails  # the stalled readers still hold the file's tail
        [tail] = [t for path, t in tails.items() if path.name in urls["stream_events_url"]]
        assert tail.readers == 20
        assert tail.held <= 256 * 1024 + 64 * 1024  # the window, not the whole answer
        held_for_stalled = [
            handler.transport.get_write_buffer_size()
            for handler in api.client.server.runner.server.connections
            if handler.transport is not None
        ]
        assert len(held_for_stalled) >= 20
        assert max(held_for_stalled) <= 192 * 1024  # unsent bytes per reader stay bounded
        for writer in stalled:
            writer.close()

    @pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
    async def test_a_thousand_connects_and_disconnects_leak_no_descriptors(self, make_api):
        api = await make_api()
        urls = (await api.create(model="mock?tokens=100000&delay_ms=50"))["endpoints"]
        await api.wait_status(urls["status_url"], "streaming")
        path = "/" + urls["stream_events_url"].split("/", 3)[3]
        request = f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()

        async def connect_and_leave() -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", api.client.port)
            writer.write(request)
            await reader.readuntil(b"retry: 3000")
            writer.close()
            await writer.wait_closed()

        connections = api.client.server.runner.server.connections
        idle = len(connections)  # the test client's own, kept alive

        def let_go() -> bool:
            assert len(connections) <= idle, f"{len(connections)} open, {idle} before"
            return True

        await connect_and_leave()
        await eventually(let_go)  # the server has closed that reader's connection
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(1000):
            await connect_and_leave()
        await eventually(lambda: len(os.listdir("/proc/self/fd")) <= before + 5)
        assert let_go()  # and every one of the thousand readers was let go
        await api.get(urls["stop_url"])
