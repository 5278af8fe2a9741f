"""offloadd behind a real nginx, with the shipped config: live streams pass unbuffered,
finished public files come from nginx's static path, private ones never do."""

from __future__ import annotations

import asyncio
import os
import re
import time
from pathlib import Path

import orjson
import pytest

from conftest import free_port, require_binary
from offloadd.protocol.sse import SSEParser, parse_all

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "deploy" / "nginx" / "offloadd.conf"


def nginx_conf(tmp: Path, listen: int, backend: int, data: Path) -> Path:
    server = CONF.read_text()
    server = server.replace("server 127.0.0.1:8080;", f"server 127.0.0.1:{backend};")
    server = server.replace("listen 80;", f"listen 127.0.0.1:{listen};")
    server = server.replace("/var/lib/offloadd", str(data))
    server = server.replace("/var/cache/nginx/offloadd", str(tmp / "cache"))
    temp = "\n".join(
        f"    {kind}_temp_path {tmp}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    user = "user root;\n" if os.geteuid() == 0 else ""  # test data lives in root's tmp
    path = tmp / "nginx.conf"
    path.write_text(
        f"{user}worker_processes 1;\npid {tmp}/nginx.pid;\nerror_log {tmp}/error.log;\n"
        f"events {{ worker_connections 1024; }}\n"
        f"http {{\n    access_log {tmp}/access.log;\n{temp}\n{server}\n}}\n"
    )
    return path


@pytest.fixture
async def stack(spawn, tmp_path):
    """offloadd (mock upstream, --accel-redirect) and nginx in front of it."""
    binary = require_binary("nginx", "nginx")
    data = tmp_path / "data"
    daemon = await spawn(
        "serve",
        "--data",
        str(data),
        "--upstream-url",
        "mock",
        "--no-auth",
        "--accel-redirect",
        "/_offloadd_files/",
    )
    port = free_port()
    nginx_tmp = tmp_path / "nginx"
    nginx_tmp.mkdir()
    conf = nginx_conf(nginx_tmp, port, daemon.port, data)
    check = await asyncio.create_subprocess_exec(
        binary, "-t", "-c", str(conf), "-p", str(nginx_tmp), stderr=asyncio.subprocess.PIPE
    )
    assert await check.wait() == 0, (await check.stderr.read()).decode()
    proc = await asyncio.create_subprocess_exec(
        binary, "-c", str(conf), "-p", str(nginx_tmp), "-g", "daemon off;"
    )
    async with asyncio.timeout(10):
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            except OSError:
                await asyncio.sleep(0.05)
    yield f"http://127.0.0.1:{port}", data, nginx_tmp
    proc.terminate()
    await proc.wait()


async def _create(http, base: str, **fields) -> dict:
    body = {"messages": [{"role": "user", "content": "hello through nginx"}], **fields}
    async with http.post(f"{base}/v1/stream-chatgpt", json=body) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


class TestBehindNginx:
    async def test_create_answers_urls_at_the_nginx_address(self, stack, http):
        base, _, _ = stack
        answer = await _create(http, base)
        for url in answer["endpoints"].values():
            assert url.startswith(f"{base}/1/r/pub/")

    async def test_a_live_stream_arrives_incrementally(self, stack, http):
        base, _, _ = stack
        urls = (await _create(http, base, model="mock?tokens=40&delay_ms=25&stamp=1"))["endpoints"]
        received = []  # (time of receipt, event)
        parser = SSEParser()
        async with http.get(urls["stream_events_url"]) as resp:
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            async for piece in resp.content.iter_any():
                now = time.time_ns()
                received += [(now, e) for e in parser.feed(piece) if e.id]
        stamps = [
            int(orjson.loads(e.data)["choices"][0]["delta"]["content"])
            for _, e in received
            if e.event is None
            and e.data.startswith(b"{")
            and orjson.loads(e.data)["choices"]
            and (orjson.loads(e.data)["choices"][0]["delta"].get("content") or "").strip().isdigit()
        ]
        assert len(stamps) == 40
        first_token_received = next(t for t, e in received if int(e.id) == 2)
        assert first_token_received < stamps[-1], "the first token waited for the last"

    async def test_finished_public_files_come_from_nginx_byte_identical(self, stack, http):
        base, data, nginx_tmp = stack
        urls = (await _create(http, base, model="mock?tokens=5"))["endpoints"]
        async with http.get(urls["stream_events_url"]) as resp:
            live = await resp.read()
        await asyncio.sleep(0.1)
        rel = urls["status_url"].split("/1/r/", 1)[1][: -len(".json")]
        for url, suffix, ctype in (
            (urls["stream_events_url"], ".txt", "text/event-stream"),
            (urls["status_url"], ".json", "application/json"),
        ):
            async with http.get(url, headers={"Origin": "https://app.example"}) as resp:
                body = await resp.read()
                assert resp.status == 200
                assert resp.headers["Content-Type"] == ctype
                assert "Last-Modified" in resp.headers and "ETag" in resp.headers  # static
                assert resp.headers.getall("Access-Control-Allow-Origin") == ["*"]
            assert body == (data / f"{rel}{suffix}").read_bytes()
        assert live == (data / f"{rel}.txt").read_bytes()

    async def test_private_files_and_traversal_are_never_served(self, stack, http):
        base, data, _ = stack
        answer = await _create(http, base, access="private", model="mock?tokens=2")
        urls, token = answer["endpoints"], answer["authorization"]["bearer_token"]
        async with http.get(urls["stream_events_url"] + f"?token={token}") as resp:
            assert (await resp.read()).endswith(b"data: [DONE]\n\n")
            assert "ETag" not in resp.headers  # private: always offloadd, never static
        rel = urls["status_url"].split("/1/r/", 1)[1]
        probes = [
            urls["status_url"],
            f"{base}/_offloadd_files/{rel}",
            f"{base}/_offloadd_files/{rel.replace('priv/', 'pub/')}",
            f"{base}/1/r/pub/../priv/{rel[5:]}",
            f"{base}/1/r/pub/..%2fpriv/{rel[5:]}",
            f"{base}/../../etc/passwd",
        ]
        for url in probes:
            async with http.get(url) as resp:
                body = await resp.read()
                assert resp.status in (400, 404), url
                assert b"bearer" not in body.lower() and b"hello" not in body

    async def test_reconnect_after_the_end_gets_204(self, stack, http):
        base, _, _ = stack
        urls = (await _create(http, base, model="mock?tokens=2"))["endpoints"]
        async with http.get(urls["stream_events_url"]) as resp:
            last = parse_all(await resp.read())[-1].id
        async with http.get(urls["stream_events_url"], headers={"Last-Event-ID": last}) as resp:
            assert resp.status == 204

    async def test_a_stop_through_nginx(self, stack, http):
        base, _, _ = stack
        urls = (await _create(http, base, model="mock?tokens=500&delay_ms=20"))["endpoints"]
        async with http.post(urls["stop_url"]) as resp:
            assert (await resp.json())["conversation_status"] == "stopped"
        async with http.get(urls["status_url"]) as resp:
            assert (await resp.json())["status"] == "stopped"
            assert re.match(r"application/json", resp.headers["Content-Type"])
