"""Caches collapse a crowd (issue 24, item 3): behind the shipped nginx config, a crowd of
Durable Streams readers of one public answer costs offloadd about one request per offset,
counted from offloadd's own access log; what must not be cached is not. The config and
why: docs/deployment-cache.md."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import orjson
import pytest
from test_durable_read import read_with_client
from test_nginx import nginx_in_front

from helpers import Daemon, eventually, file_of, wait_status
from offloadd.protocol.durable import format_offset
from offloadd.protocol.sse import parse_all

CROWD = 200
LIVE_MODEL = "mock?tokens=30&delay_ms=100&wait_ms=300"  # about 3 s of answer


@dataclass
class Stack:
    base: str
    data: Path
    daemon: Daemon

    async def create(self, http, **fields) -> dict:
        body = {"messages": [{"role": "user", "content": "hello, crowd"}], **fields}
        async with http.post(f"{self.base}/v1/stream-chatgpt", json=body) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()

    async def reached_offloadd(self, url: str) -> Counter:
        """Stop offloadd (so every line of its access log is out) and count the GETs of
        `url` it answered, per `offset`."""
        self.daemon.signal(signal.SIGTERM)
        await self.daemon.wait()
        path, seen = urlsplit(url).path, Counter()
        for line in self.daemon.output.decode().splitlines():
            _, marker, entry = line.partition(" offloadd.access ")
            if marker:
                entry = orjson.loads(entry)
                if entry["path"] == path and entry["method"] == "GET":
                    seen[entry.get("offset")] += 1
        return seen


@pytest.fixture
async def make_stack(spawn, tmp_path):
    """offloadd (the in-process mock upstream, an access log on its output) behind nginx."""
    async with AsyncExitStack() as stacks:

        async def start(*args: str) -> Stack:
            data = tmp_path / "data"
            daemon = await spawn(
                "serve", "--data", str(data), "--upstream-url", "mock", "--no-auth", *args
            )
            base, _ = await stacks.enter_async_context(nginx_in_front(daemon.port, data, tmp_path))
            return Stack(base, data, daemon)

        yield start


@pytest.fixture
async def crowd_http():
    """One session for the whole crowd, with no cap on its connections."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        yield session


async def long_poll_reader(http, url: str) -> tuple[bytes, int]:
    """A reader on the tail, as the protocol has it: long-poll from the start, following
    `Stream-Next-Offset` and `Stream-Cursor` until `Stream-Closed`. Its bytes and the
    number of requests it made."""
    got, offset, cursor, requests = b"", "-1", None, 0
    while True:
        query = f"offset={offset}&live=long-poll" + (f"&cursor={cursor}" if cursor else "")
        async with http.get(f"{url}?{query}") as resp:
            assert resp.status in (200, 204), await resp.text()
            got += await resp.read()
            requests += 1
            offset = resp.headers["Stream-Next-Offset"]
            cursor = resp.headers.get("Stream-Cursor", cursor)
            if resp.headers.get("Stream-Closed") == "true":
                return got, requests


async def catch_up_reader(http, url: str) -> tuple[bytes, int]:
    """A reader of a finished answer: catch-up reads until `Stream-Closed`."""
    got, offset, requests = b"", "-1", 0
    while True:
        async with http.get(f"{url}?offset={offset}") as resp:
            assert resp.status == 200, await resp.text()
            got += await resp.read()
            requests += 1
            offset = resp.headers["Stream-Next-Offset"]
            if resp.headers.get("Stream-Closed") == "true":
                return got, requests


class TestACrowd:
    async def test_200_long_poll_readers_of_a_live_answer_reach_offloadd_once_per_offset(
        self, make_stack, crowd_http
    ):
        stack = await make_stack()
        url = (await stack.create(crowd_http, model=LIVE_MODEL))["endpoints"]["stream_events_url"]
        async with asyncio.timeout(120):  # a bound on a hang, not a measurement
            readers = await asyncio.gather(
                *(long_poll_reader(crowd_http, url) for _ in range(CROWD))
            )
        transcript = file_of(stack.data, url).read_bytes()
        assert all(got == transcript for got, _ in readers)
        seen = await stack.reached_offloadd(url)
        assert len(seen) > 3, f"the crowd did not follow the answer live: {seen}"
        assert max(seen.values()) <= 3, seen
        # and so offloadd answered a small part of what the crowd asked
        assert sum(seen.values()) * 20 < sum(n for _, n in readers)

    async def test_200_readers_of_a_finished_answer_reach_offloadd_about_once(
        self, make_stack, crowd_http
    ):
        stack = await make_stack()
        answer = await stack.create(crowd_http, model="mock?tokens=20")
        url = answer["endpoints"]["stream_events_url"]
        await wait_status(crowd_http, answer["endpoints"]["status_url"], "done")
        async with asyncio.timeout(60):
            readers = await asyncio.gather(
                *(catch_up_reader(crowd_http, url) for _ in range(CROWD))
            )
        transcript = file_of(stack.data, url).read_bytes()
        assert all(got == transcript for got, _ in readers)
        async with crowd_http.get(f"{url}?offset=-1") as resp:  # revalidation: nginx's 304
            tag = resp.headers["ETag"]
        async with crowd_http.get(f"{url}?offset=-1", headers={"If-None-Match": tag}) as resp:
            assert resp.status == 304
        seen = await stack.reached_offloadd(url)
        assert seen == {"-1": seen["-1"]} and seen["-1"] <= 3, seen

    async def test_a_crowd_arriving_as_a_kept_read_expires_gets_its_stale_copy(
        self, make_stack, crowd_http
    ):
        """The lock covers new entries only: an expired one is refreshed by one request
        while the others get the old copy (still the right bytes) instead of reaching
        offloadd. offloadd is paused so the refresh lasts until it resumes."""
        stack = await make_stack()
        answer = await stack.create(crowd_http, model="mock?tokens=2&wait_ms=60000")
        url = answer["endpoints"]["stream_events_url"]
        async with crowd_http.get(f"{url}?offset=-1") as resp:
            assert resp.headers["Cache-Control"] == "public, max-age=1"  # a running tail
            kept = await resp.read()
        await asyncio.sleep(3.1)  # past that max-age (nginx counts whole seconds)

        async def read() -> tuple[str, bytes]:
            async with crowd_http.get(f"{url}?offset=-1") as resp:
                assert resp.status == 200
                return resp.headers["X-Cache-Status"], await resp.read()

        stack.daemon.signal(signal.SIGSTOP)
        try:
            crowd = [asyncio.create_task(read()) for _ in range(CROWD)]
            # all but the refresh, from the stale copy
            await eventually(lambda: sum(task.done() for task in crowd) >= CROWD - 1, timeout=30)
        finally:
            stack.daemon.signal(signal.SIGCONT)
        answers = await asyncio.gather(*crowd)
        assert Counter(status for status, _ in answers) == {"UPDATING": CROWD - 1, "EXPIRED": 1}
        assert all(body == kept for _, body in answers)
        async with crowd_http.post(answer["endpoints"]["stop_url"]) as resp:
            assert resp.status == 200
        seen = await stack.reached_offloadd(url)
        assert seen["-1"] == 2, seen


class TestWhatIsNotCached:
    async def test_the_204_of_a_running_answer_is_not_kept_the_final_one_is(self, make_stack, http):
        stack = await make_stack("--long-poll-timeout", "0.3")
        answer = await stack.create(http, model="mock?tokens=2&wait_ms=60000")
        url, stop = answer["endpoints"]["stream_events_url"], answer["endpoints"]["stop_url"]
        async with http.head(url) as resp:
            tail = resp.headers["Stream-Next-Offset"]
        for _ in range(2):  # the answer waits a minute: both time out, both reach offloadd
            async with http.get(f"{url}?offset={tail}&live=long-poll") as resp:
                assert resp.status == 204 and "Stream-Closed" not in resp.headers
                assert resp.headers["Cache-Control"] == "no-store"
                assert resp.headers["X-Cache-Status"] == "MISS"
        async with http.post(stop) as resp:
            assert resp.status == 200
        await wait_status(http, answer["endpoints"]["status_url"], "stopped")
        async with http.head(url) as resp:
            end = resp.headers["Stream-Next-Offset"]
            assert resp.headers["Stream-Closed"] == "true"
        for status in ("MISS", "HIT"):  # the end of an ended answer never changes
            async with http.get(f"{url}?offset={end}&live=long-poll") as resp:
                assert resp.status == 204 and resp.headers["Stream-Closed"] == "true"
                assert resp.headers["X-Cache-Status"] == status
        seen = await stack.reached_offloadd(url)
        assert seen[tail] == 2 and seen[end] == 1, seen

    async def test_a_private_answer_always_reaches_offloadd_with_its_token(self, make_stack, http):
        stack = await make_stack()
        answer = await stack.create(http, model="mock?tokens=5", access="private")
        url, token = (
            answer["endpoints"]["stream_events_url"],
            answer["authorization"]["bearer_token"],
        )
        ended = b"data: [DONE]\n\n"
        await eventually(lambda: file_of(stack.data, url).read_bytes().endswith(ended), timeout=15)
        for headers, query in (({}, f"&token={token}"), ({"Authorization": f"Bearer {token}"}, "")):
            for _ in range(2):
                async with http.get(f"{url}?offset=-1{query}", headers=headers) as resp:
                    assert resp.status == 200
                    assert await resp.read() == file_of(stack.data, url).read_bytes()
                    assert resp.headers["Cache-Control"].startswith("private")
                    assert "X-Cache-Status" not in resp.headers  # not even the cached route
        async with http.get(f"{url}?offset=-1") as resp:
            assert resp.status == 404  # nothing a cache kept answers without the token
        seen = await stack.reached_offloadd(url)
        assert seen["-1"] == 5, seen

    async def test_sse_mode_streams_through_and_offset_now_is_never_kept(self, make_stack, http):
        stack = await make_stack()
        answer = await stack.create(http, model="mock?tokens=2&wait_ms=60000")
        url, stop = answer["endpoints"]["stream_events_url"], answer["endpoints"]["stop_url"]
        async with http.get(f"{url}?offset=-1&live=sse") as resp:
            assert resp.headers["Content-Type"] == "text/event-stream"
            buf = b""
            async with asyncio.timeout(20):  # buffered, it would wait for the answer's end
                while b"event: control" not in buf:
                    buf += await resp.content.readany()
            async with http.post(stop) as stopped:
                assert stopped.status == 200
            events = parse_all(buf + await resp.read())
            assert orjson.loads(events[-1].data)["streamClosed"] is True
            assert "X-Cache-Status" not in resp.headers
        for _ in range(2):
            async with http.get(f"{url}?offset=now&live=long-poll") as resp:
                assert resp.status == 204 and "X-Cache-Status" not in resp.headers
        async with http.head(f"{url}?offset=-1") as resp:  # the protocol's HEAD, not a GET's
            assert resp.headers["Cache-Control"] == "no-store"
            assert "X-Cache-Status" not in resp.headers
        seen = await stack.reached_offloadd(url)
        assert seen["now"] == 2, seen


class TestNoPoisoning:
    async def test_a_crafted_query_cannot_store_one_offset_under_another(self, make_stack, http):
        """nginx's $arg_offset is case-insensitive and takes the first of repeated
        arguments; offloadd's `offset` is neither. The key is the exact URI."""
        stack = await make_stack()
        answer = await stack.create(http, model="mock?tokens=20")
        url = answer["endpoints"]["stream_events_url"]
        await wait_status(http, answer["endpoints"]["status_url"], "done")
        transcript = file_of(stack.data, url).read_bytes()
        mid = format_offset(len(transcript) // 2)
        for query in (f"OFFSET={mid}&offset=-1", f"offset=-1&offset={mid}"):
            async with http.get(f"{url}?{query}") as resp:
                await resp.read()
        async with http.get(f"{url}?offset={mid}") as resp:
            assert await resp.read() == transcript[len(transcript) // 2 :]


class TestHeadersForCaches:
    async def test_a_long_poll_from_now_is_not_stored(self, api):
        """`offset=now` names the tail when asked: a late reader must not get old bytes."""
        answer = await api.create(model="mock?tokens=40&delay_ms=30")
        url = answer["endpoints"]["stream_events_url"]
        resp = await api.get(f"{url}?offset=now&live=long-poll")
        assert resp.status == 200 and await resp.read()
        assert resp.headers["Cache-Control"] == "no-store"
        from_offset = await api.get(
            f"{url}?offset={resp.headers['Stream-Next-Offset']}&live=long-poll"
        )
        assert from_offset.headers["Cache-Control"].startswith("public")

    async def test_an_answer_that_depends_on_the_origin_always_says_so(self, make_api):
        api = await make_api(cors_origins=("https://app.example",))
        answer = await api.create(model="mock?tokens=2", access="private")
        url, token = (
            answer["endpoints"]["stream_events_url"],
            answer["authorization"]["bearer_token"],
        )
        public = (await api.create(model="mock?tokens=2"))["endpoints"]["stream_events_url"]
        for origin in ({}, {"Origin": "https://other.example"}):
            resp = await api.get(f"{public}?offset=-1", headers=origin)
            assert resp.headers["Vary"] == "Origin"
            assert "Access-Control-Allow-Origin" not in resp.headers
        resp = await api.get(
            f"{url}?offset=-1",
            headers={"Authorization": f"Bearer {token}", "Origin": "https://app.example"},
        )
        assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example"
        assert resp.headers["Vary"] == "Authorization, Origin"


class TestTheTypeScriptClientThroughTheCache:
    @pytest.mark.parametrize("mode", ["long-poll", "sse"])
    async def test_follows_a_live_answer_to_its_end(self, make_stack, http, mode):
        stack = await make_stack()
        url = (await stack.create(http, model=LIVE_MODEL))["endpoints"]["stream_events_url"]
        (out, state), (again, _) = await asyncio.gather(
            read_with_client(url, mode), read_with_client(url, mode)
        )
        assert out == again == file_of(stack.data, url).read_bytes()
        assert state["streamClosed"] is True
