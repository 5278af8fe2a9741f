"""Crashes and shutdowns: nothing running is left hanging, nothing finished is touched."""

from __future__ import annotations

import asyncio
import datetime
import signal
from pathlib import Path

import orjson

from helpers import eventually, file_of, how_it_ended, stream_text, wait_status, wait_words
from offloadd.protocol.sse import parse_all
from offloadd.storage.layout import Location
from offloadd.storage.registry import Registry, read_journal

LONG = {"messages": [{"role": "user", "content": "x"}], "model": "mock?tokens=2000&delay_ms=10"}
SHORT = {"messages": [{"role": "user", "content": "x"}], "model": "mock?tokens=3"}


async def _create(http, base: str, body: dict) -> dict:
    async with http.post(
        f"{base}/v1/stream-chatgpt", json=body, headers={"X-OpenAI-API-Key": "sk-x"}
    ) as resp:
        assert resp.status == 200
        return (await resp.json())["endpoints"]


async def _read(http, url: str) -> bytes:
    async with http.get(url) as resp:
        return await resp.read()


def _files(data: Path, urls: dict) -> tuple[Path, Path]:
    return file_of(data, urls["status_url"]), file_of(data, urls["stream_events_url"])


class TestKill:
    async def test_sigkill_then_restart_ends_running_requests_as_interrupted(
        self, spawn, http, tmp_path
    ):
        data = tmp_path / "data"
        args = ("serve", "--data", str(data), "--upstream-url", "mock", "--no-auth")
        first = await spawn(*args)
        finished = await _create(http, first.url, SHORT)
        await _read(http, finished["stream_events_url"])
        before = [p.read_bytes() for p in _files(data, finished)]
        running = [await _create(http, first.url, LONG) for _ in range(3)]
        for urls in running:
            await wait_words(http, urls["status_url"], 4)  # more than three words, below
        first.signal(signal.SIGKILL)
        await first.wait()

        second = await spawn(*args)  # same directory, new process
        for urls in running:
            status_url = urls["status_url"].replace(first.url, second.url)
            doc = await wait_status(http, status_url, "done", "error", "stopped")
            assert doc["status"] == "error"
            assert doc["error"]["code"] == "interrupted"
            json_path, txt_path = _files(data, urls)
            on_disk = orjson.loads(json_path.read_bytes())
            assert on_disk["status"] == "error"
            events = parse_all(txt_path.read_bytes())
            assert how_it_ended(events)["error"]["code"] == "interrupted"
            ids = [int(e.id) for e in events if e.id]
            assert ids == list(range(1, len(ids) + 1))
            # the text in the status equals what the stream holds
            text = stream_text(events)
            assert doc["response"]["body"]["choices"][0]["message"]["content"] == text
            assert len(text.split()) > 3
            # a reader that reconnects is released
            raw = await _read(http, urls["stream_events_url"].replace(first.url, second.url))
            assert raw.endswith(b"data: [DONE]\n\n")
        assert [p.read_bytes() for p in _files(data, finished)] == before
        for path in data.rglob("*.json"):
            orjson.loads(path.read_bytes())

    async def test_a_create_cut_short_by_a_kill_leaves_nothing_behind(self, spawn, tmp_path):
        """Killed while it made a request's files (claimed, its `.json` made in place but
        empty or cut short): the daemon that takes its journal over removes them."""
        data = tmp_path / "data"
        dead = Registry(data, stale_after=60)
        stamp = datetime.datetime.now(datetime.UTC)
        cut = [Location.new("pub", stamp) for _ in range(2)]
        folder = data / "pub" / cut[0].stamp
        folder.mkdir(parents=True)
        for loc, made in zip(cut, (b"", b'{"status": "wai'), strict=True):
            dead.claim(loc)
            (folder / f"{loc.uuid}.txt").write_bytes(b"")
            (folder / f"{loc.uuid}.json").write_bytes(made)
        dead.leave()  # as if killed: no heartbeat, its journal left with both claims
        await spawn("serve", "--data", str(data), "--upstream-url", "mock", "--no-auth")
        run = data / ".offloadd" / "run"

        def cleared() -> bool:
            journals = [read_journal(p.read_bytes()) for p in run.glob("*.journal")]
            assert not list(folder.iterdir()), "its files are still there"
            assert journals and not any(journals), f"claims still live: {journals}"
            return True

        await eventually(cleared)


class TestTerm:
    async def test_sigterm_lets_short_requests_finish_and_ends_the_rest(
        self, spawn, http, tmp_path
    ):
        data = tmp_path / "data"
        daemon = await spawn(
            "serve", "--data", str(data), "--upstream-url", "mock", "--no-auth", "--grace", "1"
        )
        slowish = {**SHORT, "model": "mock?tokens=20&delay_ms=20"}
        short = await _create(http, daemon.url, slowish)
        long = await _create(http, daemon.url, LONG)
        reader = asyncio.create_task(_read(http, long["stream_events_url"]))
        await wait_status(http, long["status_url"], "streaming")
        daemon.signal(signal.SIGTERM)
        raw = await asyncio.wait_for(reader, 15)
        assert raw.endswith(b"data: [DONE]\n\n")
        assert await daemon.wait() == 0
        short_doc = orjson.loads(_files(data, short)[0].read_bytes())
        long_doc = orjson.loads(_files(data, long)[0].read_bytes())
        assert short_doc["status"] == "done"
        assert long_doc["status"] == "error" and long_doc["error"]["code"] == "interrupted"
        assert orjson.loads(parse_all(raw)[-2].data)["status"] == "error"
