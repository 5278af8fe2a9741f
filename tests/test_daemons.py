"""Several daemons on one data directory: any daemon serves any URL, stops reach the owner,
and a dead daemon's requests are ended by another."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import orjson
import pytest

from helpers import eventually, file_of, how_it_ended, wait_status, wait_words
from offloadd.protocol.sse import parse_all
from offloadd.storage.layout import Location

LONG = {"messages": [{"role": "user", "content": "x"}], "model": "mock?tokens=3000&delay_ms=10"}


@pytest.fixture
async def cluster(serve_with_mock, mock_process, tmp_path):
    """A shared mock upstream and three daemons (A, B, C) on one directory."""
    data = tmp_path / "data"
    return mock_process, data, [await serve_with_mock(data) for _ in range(3)]


async def _create(http, base: str, body: dict = LONG) -> dict:
    async with http.post(f"{base}/v1/stream-chatgpt", json=body) as resp:
        assert resp.status == 200
        return (await resp.json())["endpoints"]


def _on(url: str, daemon) -> str:
    return "http://127.0.0.1:" + str(daemon.port) + "/" + url.split("/", 3)[3]


async def _json(http, url: str, method: str = "GET") -> dict:
    async with http.request(method, url) as resp:
        return await resp.json()


async def _mock_requests(http, mock) -> list[dict]:
    return (await _json(http, f"{mock.url}/_mock/requests"))["requests"]


class TestCluster:
    async def test_read_anywhere_stop_anywhere(self, cluster, http):
        mock, data, (a, b, c) = cluster
        urls = await _create(http, a.url)
        readers = [
            asyncio.create_task(http.get(_on(urls["stream_events_url"], d)).__aenter__())
            for d in (b, c)
        ]
        responses = await asyncio.gather(*readers)
        doc_b = await wait_status(http, _on(urls["status_url"], b), "streaming")
        assert doc_b["response"]["body"]["choices"][0]["message"]["content"] is not None
        await wait_words(http, _on(urls["status_url"], b), 10)  # tokens flowing, then stop
        answer = await _json(http, _on(urls["stop_url"], c), "POST")
        assert answer["status"] == "success"
        assert answer["conversation_status"] == "stopped"
        [seen] = await _mock_requests(http, mock)
        assert seen["client_closed"] is True and seen["chunks_sent"] < 3003
        bodies = [await r.read() for r in responses]
        assert bodies[0] == bodies[1] == file_of(data, urls["stream_events_url"]).read_bytes()
        assert how_it_ended(parse_all(bodies[0]))["status"] == "stopped"

    async def test_a_killed_owner_is_noticed_and_its_request_ended(self, cluster, http):
        _, data, (a, b, c) = cluster
        urls = await _create(http, a.url)
        reader = await http.get(_on(urls["stream_events_url"], c)).__aenter__()
        await wait_status(http, _on(urls["status_url"], b), "streaming")
        a.signal(signal.SIGKILL)
        await a.wait()
        doc = await wait_status(http, _on(urls["status_url"], b), "error", "done", "stopped")
        assert doc["error"]["code"] == "interrupted"
        raw = await asyncio.wait_for(reader.read(), 15)
        assert raw.endswith(b"data: [DONE]\n\n")


class TestStaleOwner:
    async def test_an_owner_on_another_host_that_stopped_beating_is_taken_over(
        self, spawn, http, tmp_path
    ):
        """A daemon on another host cannot be asked by pid: its heartbeat going stale is
        what tells that it died."""
        data = tmp_path / "data"
        daemon = await spawn("serve", "--data", str(data), "--no-auth", "--upstream-url", "mock")
        urls = await _create(http, daemon.url, {**LONG, "model": "mock?tokens=2"})
        await wait_status(http, urls["status_url"], "done")
        # A request "running" on host `elsewhere`, last heard of 60 s ago.
        loc = Location.new("pub", __import__("datetime").datetime.now().astimezone())
        folder = data / loc.scope / loc.stamp
        folder.mkdir(parents=True, exist_ok=True)
        template = orjson.loads(file_of(data, urls["status_url"]).read_bytes())
        template.update(status="streaming", error=None)
        (folder / f"{loc.uuid}.json").write_bytes(orjson.dumps(template))
        chunk = b'{"choices":[{"index":0,"delta":{"content":"partial"}}]}'
        (folder / f"{loc.uuid}.txt").write_bytes(b"retry: 3000\n\nid: 1\ndata: " + chunk + b"\n\n")
        owner = data / ".offloadd" / "owners" / "elsewhere.1.abc"
        owner.write_bytes(orjson.dumps({"host": "elsewhere", "pid": 1}))
        os.utime(owner, (time.time() - 60, time.time() - 60))
        marker = orjson.dumps({"rel": loc.rel, "owner": "elsewhere.1.abc"})
        (data / ".offloadd" / "run" / loc.uuid).write_bytes(marker)
        status_url = f"{daemon.url}/1/r/{loc.rel}.json"
        doc = await wait_status(http, status_url, "error")
        assert doc["error"]["code"] == "interrupted"
        assert doc["response"]["body"]["choices"][0]["message"]["content"] == "partial"
        assert not owner.exists()


class TestServeModes:
    async def test_workers_share_one_port(self, spawn, tmp_path):
        import aiohttp

        data = tmp_path / "data"
        daemon = await spawn(
            "serve", "--data", str(data), "--no-auth", "--upstream-url", "mock", "--workers", "2"
        )
        owners = set()
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as http:

            async def both_answered() -> bool:
                owners.add((await _json(http, f"{daemon.url}/healthz"))["daemon"])
                assert len(owners) == 2, f"answered by {owners}"
                return True

            await eventually(both_answered, timeout=30)  # which worker accepts is the kernel's pick
            urls = await _create(http, daemon.url, {**LONG, "model": "mock?tokens=50"})
            async with http.get(urls["stream_events_url"]) as resp:
                assert (await resp.read()).endswith(b"data: [DONE]\n\n")
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait() == 0

    async def test_unix_socket(self, spawn, tmp_path):
        import aiohttp

        path = str(tmp_path / "offloadd.sock")
        await spawn(
            "serve",
            "--data",
            str(tmp_path / "data"),
            "--no-auth",
            "--upstream-url",
            "mock",
            "--unix",
            path,
            "--public-url",
            "http://app",
        )
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=path)) as http:
            urls = await _create(http, "http://app", {**LONG, "model": "mock?tokens=3"})
            assert urls["status_url"].startswith("http://app/1/r/pub/")
            async with http.get(urls["stream_events_url"]) as resp:
                assert (await resp.read()).endswith(b"data: [DONE]\n\n")


class TestPollingUnderLoad:
    async def test_a_busy_daemon_still_follows_files_other_daemons_write(self, cluster, http):
        """Pokes from this daemon's own writers must not starve the timed poll that follows
        files written elsewhere (found by the --workers 2 benchmark)."""
        from offloadd.protocol.sse import SSEParser

        _, _, (a, b, _) = cluster
        own = await _create(http, a.url, {**LONG, "model": "mock?tokens=3000&delay_ms=5"})
        busy = await http.get(own["stream_events_url"]).__aenter__()  # A pokes all the time
        other = await _create(http, b.url, {**LONG, "model": "mock?tokens=40&delay_ms=20&stamp=1"})
        parser, received = SSEParser(), []
        async with http.get(_on(other["stream_events_url"], a)) as resp:
            async for piece in resp.content.iter_any():
                now = time.time_ns()
                received += [(now, e) for e in parser.feed(piece) if e.id]
        stamps = (
            [
                int(c)
                for _, e in received
                if e.event is None and e.data.startswith(b"{")
                for c in [orjson.loads(e.data)["choices"][0]["delta"].get("content", "").strip()]
                if c.isdigit()
            ]
            if received
            else []
        )
        assert len(stamps) == 40
        first_token_at = next(t for t, e in received if e.id == "2")
        assert first_token_at < stamps[-1], "the reader on A got B's stream only at its end"
        busy.close()
        await _json(http, own["stop_url"], "POST")


class TestUnderAsyncioDebug:
    async def test_a_cluster_ending_orphans_and_stops_logs_no_error(
        self, serve_with_mock, mock_process, tmp_path, http
    ):
        """PYTHONASYNCIODEBUG=1 makes asyncio raise on calls from the wrong thread (a
        future resolved from a worker thread, say) and report never-retrieved errors."""
        env = {**os.environ, "PYTHONASYNCIODEBUG": "1", "PYTHONUNBUFFERED": "1"}
        data = tmp_path / "data"
        a, b = [await serve_with_mock(data, env=env) for _ in range(2)]
        stopped = await _create(http, a.url)
        orphaned = await _create(http, a.url)
        await wait_status(http, _on(stopped["status_url"], b), "streaming")
        answer = await _json(http, _on(stopped["stop_url"], b), "POST")
        assert answer["conversation_status"] == "stopped"
        reader = await http.get(_on(orphaned["stream_events_url"], b)).__aenter__()
        a.signal(signal.SIGKILL)
        await a.wait()
        doc = await wait_status(http, _on(orphaned["status_url"], b), "error", "done")
        assert doc["error"]["code"] == "interrupted"
        assert (await asyncio.wait_for(reader.read(), 15)).endswith(b"data: [DONE]\n\n")
        b.signal(signal.SIGTERM)
        assert await b.wait() == 0
        log = b.output.decode()
        for bad in ("Traceback", " ERROR ", "CRITICAL", "non-thread-safe", "never retrieved"):
            assert bad not in log, log
