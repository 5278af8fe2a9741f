"""The terminal client against a running server: `ask`, Ctrl-C, and `follow` with resume."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp
import orjson
from aiohttp import web


async def _run(*args: str, env: dict | None = None) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "offloadd",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )


async def _ask(spawn, tmp: Path, *args: str) -> str:
    """`offloadd ask` against a server with the mock upstream: what it printed."""
    daemon = await spawn(
        "serve", "--data", str(tmp / "data"), "--upstream-url", "mock", "--no-auth"
    )
    proc = await _run("ask", *args, "--server", daemon.url)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err
    return out.decode()


class TestAsk:
    async def test_prints_the_answer_then_a_status_line(self, spawn, tmp_path):
        text = await _ask(spawn, tmp_path, "hello from the terminal", "--system", "be kind")
        assert text.startswith("hello from the terminal\n[done · 4 tokens · ")
        assert "\033[" not in text  # not a terminal: plain text

    async def test_with_the_responses_api(self, spawn, tmp_path):
        text = await _ask(spawn, tmp_path, "a responses question", "--api", "responses")
        assert text.startswith("a responses question\n[done · 3 tokens · ")
        [status_file] = list((tmp_path / "data").rglob("*.json"))
        doc = orjson.loads(status_file.read_bytes())
        assert doc["request"]["endpoint"] == "/v1/responses" and doc["background"] is True

    async def test_with_the_messages_api(self, spawn, tmp_path):
        daemon = await spawn(
            "serve", "--data", str(tmp_path / "data"), "--anthropic-url", "mock", "--no-auth"
        )
        proc = await _run(
            "ask", "a question for claude", "--server", daemon.url, "--api", "messages",
            "--system", "be brief",
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err
        assert out.decode().startswith("a question for claude\n[done · 4 tokens · ")
        [status_file] = list((tmp_path / "data").rglob("*.json"))
        doc = orjson.loads(status_file.read_bytes())
        assert doc["request"]["endpoint"] == "/v1/messages"
        assert doc["parameters"]["system"] == "be brief"
        assert doc["response"]["body"]["content"][0]["text"] == "a question for claude"
        stopped = await _run(
            "ask", "x", "--server", daemon.url, "--api", "messages",
            "--model", "mock?tokens=50&error_after=8",
        )  # fmt: skip
        out, err = await asyncio.wait_for(stopped.communicate(), 30)
        assert stopped.returncode == 1
        assert "[error · " in out.decode() and "Overloaded" in out.decode()

    async def test_ctrl_c_stops_the_request_on_the_server(
        self, serve_with_mock, mock_process, tmp_path, http
    ):
        mock, data = mock_process, tmp_path / "data"
        daemon = await serve_with_mock(data)
        proc = await _run(
            "ask", "count", "--server", daemon.url, "--model", "mock?tokens=3000&delay_ms=20"
        )
        # readuntil, not a loop of reads: at the end of the output a read returns b"" at
        # once, and a loop of them would spin without yielding, past any timeout
        first = await asyncio.wait_for(proc.stdout.readuntil(b" t3"), 20)
        assert first.startswith(b"t0 t1 t2 t3")
        proc.send_signal(signal.SIGINT)
        rest, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 130, err
        assert b"[stopped \xc2\xb7 " in rest
        [status_file] = list(data.rglob("*.json"))
        assert orjson.loads(status_file.read_bytes())["status"] == "stopped"
        async with http.get(f"{mock.url}/_mock/requests") as resp:
            [seen] = (await resp.json())["requests"]
        assert seen["client_closed"] is True

    async def test_errors_are_reported_and_exit_1(self, spawn, tmp_path):
        daemon = await spawn("serve", "--data", str(tmp_path / "data"), "--upstream-url", "mock")
        proc = await _run("ask", "hi", "--server", daemon.url)  # auth on, no key
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 1
        assert b"missing_api_key" in err


class TestFollow:
    async def test_follows_a_finished_stream(self, spawn, tmp_path, http):
        daemon = await spawn(
            "serve", "--data", str(tmp_path / "data"), "--upstream-url", "mock", "--no-auth"
        )
        body = {"messages": [{"role": "user", "content": "already finished"}]}
        async with http.post(f"{daemon.url}/v1/stream-chatgpt", json=body) as resp:
            url = (await resp.json())["endpoints"]["stream_events_url"]
        async with http.get(url) as resp:
            await resp.read()
        proc = await _run("follow", url)
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0
        assert out.decode().startswith("already finished\n[done")

    async def test_resumes_after_a_dropped_connection(self, spawn, tmp_path, http, aiohttp_server):
        daemon = await spawn(
            "serve", "--data", str(tmp_path / "data"), "--upstream-url", "mock", "--no-auth"
        )
        body = {
            "messages": [{"role": "user", "content": "x"}],
            "model": "mock?tokens=40&delay_ms=20",
        }
        async with http.post(f"{daemon.url}/v1/stream-chatgpt", json=body) as resp:
            url = (await resp.json())["endpoints"]["stream_events_url"]
        seen_ids: list[str | None] = []

        async def flaky(request: web.Request) -> web.StreamResponse:
            """A proxy that cuts the first connection after 700 bytes."""
            seen_ids.append(request.headers.get("Last-Event-ID"))
            headers = {k: v for k, v in request.headers.items() if k == "Last-Event-ID"}
            async with aiohttp.ClientSession() as s, s.get(url, headers=headers) as upstream:
                response = web.StreamResponse(
                    status=upstream.status, headers={"Content-Type": "text/event-stream"}
                )
                await response.prepare(request)
                sent = 0
                async for piece in upstream.content.iter_any():
                    if len(seen_ids) == 1 and sent + len(piece) > 700:
                        await response.write(piece[: 700 - sent])
                        request.transport.close()
                        return response
                    await response.write(piece)
                    sent += len(piece)
                return response

        app = web.Application()
        app.router.add_get("/stream", flaky)
        proxy = await aiohttp_server(app)
        proc = await _run("follow", str(proxy.make_url("/stream")))
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err
        assert out.decode().split("\n")[0] == " ".join(f"t{i}" for i in range(40))
        assert seen_ids[0] is None and seen_ids[1] is not None and int(seen_ids[1]) >= 1
