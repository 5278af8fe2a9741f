"""Every answer a Durable Stream (issue 24): `?offset=` on a stream URL reads the transcript
by the Durable Streams protocol — through HTTP, and with the real TypeScript client."""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import file_of
from offloadd.protocol.durable import START, format_offset
from offloadd.protocol.sse import parse_all

JS = Path(__file__).parent / "js"
LIVE_MODEL = "mock?tokens=60&delay_ms=30"


def _node() -> str:
    node = shutil.which("node")
    if node is None or not (JS / "node_modules").is_dir():
        pytest.fail("node and tests/js/node_modules are needed: run tests/setup.sh", pytrace=False)
    return node


async def read_with_client(url: str, mode: str, *args: str) -> tuple[bytes, dict]:
    """`tests/js/read.mjs`: the TypeScript client reads `url`; its bytes and final state."""
    proc = await asyncio.create_subprocess_exec(
        _node(),
        str(JS / "read.mjs"),
        url,
        mode,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    state = orjson.loads(err.strip().splitlines()[-1])
    assert proc.returncode == 0, state
    return out, state


async def finished(api, **fields) -> tuple[str, dict]:
    answer = await api.create(model="mock?tokens=20", **fields)
    token = answer["authorization"].get("bearer_token")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with asyncio.timeout(15):
        while True:
            resp = await api.get(answer["endpoints"]["status_url"], headers=headers)
            if (await resp.json())["status"] == "done":
                break
            await asyncio.sleep(0.02)
    return answer["endpoints"]["stream_events_url"], answer


async def live(api, **fields) -> tuple[str, dict]:
    answer = await api.create(**{"model": LIVE_MODEL, **fields})
    return answer["endpoints"]["stream_events_url"], answer


async def long_poll_all(api, url: str, offset: str = "-1", **kwargs) -> tuple[bytes, list]:
    """Follow by hand as the protocol says: catch up, then long-poll until closed."""
    got, answers, live_mode = b"", [], False
    while True:
        query = f"offset={offset}" + ("&live=long-poll" if live_mode else "")
        resp = await api.get(f"{url}?{query}", **kwargs)
        assert resp.status in (200, 204), await resp.text()
        got += await resp.read()
        answers.append(resp)
        offset = resp.headers["Stream-Next-Offset"]
        if resp.headers.get("Stream-Closed") == "true":
            return got, answers
        live_mode = "Stream-Up-To-Date" in resp.headers


class TestCatchUp:
    async def test_a_finished_answer_is_its_transcript_and_closed(self, api, data_dir):
        url, _ = await finished(api)
        resp = await api.get(f"{url}?offset=-1")
        body = await resp.read()
        assert resp.status == 200
        assert body == file_of(data_dir, url).read_bytes()
        assert resp.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert resp.headers["Stream-Next-Offset"] == format_offset(len(body))
        assert resp.headers["Stream-Up-To-Date"] == "true"
        assert resp.headers["Stream-Closed"] == "true"
        assert "immutable" in resp.headers["Cache-Control"]
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        again = await api.get(f"{url}?offset={START}")
        assert await again.read() == body and again.headers["ETag"] == resp.headers["ETag"]

    async def test_if_none_match_is_a_304(self, api):
        url, _ = await finished(api)
        tag = (await api.get(f"{url}?offset=-1")).headers["ETag"]
        resp = await api.get(f"{url}?offset=-1", headers={"If-None-Match": tag})
        assert resp.status == 304 and await resp.read() == b""
        other = await api.get(f"{url}?offset=-1", headers={"If-None-Match": '"wrong"'})
        assert other.status == 200

    async def test_reading_from_an_offset_gives_the_rest(self, api, data_dir):
        url, _ = await finished(api)
        raw = file_of(data_dir, url).read_bytes()
        resp = await api.get(f"{url}?offset={format_offset(10)}")
        assert await resp.read() == raw[10:]
        at_tail = await api.get(f"{url}?offset={format_offset(len(raw))}")
        assert await at_tail.read() == b"" and at_tail.headers["Stream-Closed"] == "true"

    async def test_offset_now_is_the_tail_and_not_cached(self, api, data_dir):
        url, _ = await finished(api)
        resp = await api.get(f"{url}?offset=now")
        size = file_of(data_dir, url).stat().st_size
        assert await resp.read() == b""
        assert resp.headers["Stream-Next-Offset"] == format_offset(size)
        assert "no-store" in resp.headers["Cache-Control"] and "ETag" not in resp.headers

    async def test_head_has_the_tail_type_and_closure(self, api, data_dir):
        url, _ = await finished(api)
        resp = await api.client.head(_path(url))
        size = file_of(data_dir, url).stat().st_size
        assert resp.status == 200
        assert resp.headers["Stream-Next-Offset"] == format_offset(size)
        assert resp.headers["Stream-Closed"] == "true"
        assert resp.headers["Content-Type"] == "text/plain; charset=utf-8"

    async def test_the_etag_changes_when_the_answer_ends(self, api, data_dir):
        url, answer = await live(api)
        first = await api.get(f"{url}?offset=-1")
        await first.read()
        assert "Stream-Closed" not in first.headers
        await api.wait_status(answer["endpoints"]["status_url"], "done")
        done = await api.get(f"{url}?offset=-1", headers={"If-None-Match": first.headers["ETag"]})
        assert done.status == 200 and done.headers["Stream-Closed"] == "true"
        assert await done.read() == file_of(data_dir, url).read_bytes()
        at_end = await api.get(f"{url}?offset=-1", headers={"If-None-Match": done.headers["ETag"]})
        assert at_end.status == 304


class TestLive:
    async def test_long_poll_follows_a_live_answer_to_its_end(self, api, data_dir):
        url, _ = await live(api)
        got, answers = await long_poll_all(api, url)
        assert got == file_of(data_dir, url).read_bytes()
        polls = [a for a in answers if a.status == 200 and "Stream-Cursor" in a.headers]
        assert polls and all(re.fullmatch(r"\d+", a.headers["Stream-Cursor"]) for a in polls)

    async def test_long_poll_at_the_tail_of_an_ended_answer_is_204_closed_at_once(self, api):
        url, _ = await finished(api)
        tail = (await api.get(f"{url}?offset=now")).headers["Stream-Next-Offset"]
        resp = await api.get(f"{url}?offset={tail}&live=long-poll")
        assert resp.status == 204 and resp.headers["Stream-Closed"] == "true"

    async def test_long_poll_times_out_with_a_204(self, make_api):
        api = await make_api(long_poll_seconds=0.3)
        url, _ = await live(api, model="mock?tokens=3&wait_ms=3000")
        resp = await api.get(f"{url}?offset=now&live=long-poll")
        assert resp.status == 204
        assert resp.headers["Stream-Up-To-Date"] == "true" and "Stream-Closed" not in resp.headers
        assert resp.headers["Cache-Control"] == "no-store"

    async def test_sse_mode_frames_the_bytes_and_ends_on_closure(self, api, data_dir):
        url, _ = await live(api)
        resp = await api.get(f"{url}?offset=-1&live=sse")
        assert resp.headers["Content-Type"] == "text/event-stream"
        events = parse_all(await resp.read())
        data = b"".join(e.data + b"\n" for e in events if e.event == "data")
        controls = [orjson.loads(e.data) for e in events if e.event == "control"]
        raw = file_of(data_dir, url).read_bytes()
        # each data event is its lines; a blank line in the transcript is an empty data line
        assert data.replace(b"\n", b"") == raw.replace(b"\n", b"")
        assert controls[-1]["streamClosed"] is True
        assert controls[-1]["streamNextOffset"] == format_offset(len(raw))

    async def test_a_cut_sse_connection_resumes_with_nothing_missing_or_repeated(
        self, api, data_dir
    ):
        url, _ = await live(api)
        resp = await api.get(f"{url}?offset=-1&live=sse")
        buf = b""
        while b"event: control" not in buf or not buf.endswith(b"\n\n"):
            buf += await resp.content.readany()
        resp.close()  # cut mid-answer
        control = [e for e in parse_all(buf) if e.event == "control"][-1]
        offset = orjson.loads(control.data)["streamNextOffset"]
        got, _ = await long_poll_all(api, url, offset)
        raw = file_of(data_dir, url).read_bytes()
        assert raw[: int(offset.split("_")[1])] + got == raw


class TestEventSourceUnchanged:
    async def test_without_offset_it_is_the_sse_transcript(self, api, data_dir):
        url, _ = await finished(api)
        resp = await api.get(url)
        assert resp.headers["Content-Type"] == "text/event-stream"
        assert await resp.read() == file_of(data_dir, url).read_bytes()
        assert "Stream-Next-Offset" not in resp.headers


BAD_OFFSETS = [
    "",
    "abc",
    "..",
    "../0",
    "0,1",
    "0 1",
    "x" * 300,
    "1" * 300,
    "0000000000000000_000000000000000",
    "0000000000000001_0000000000000000",
    "-2",
    "%00",
]


class TestBadOffsets:
    @pytest.mark.parametrize("live_mode", ["", "&live=long-poll", "&live=sse"], ids=str)
    @pytest.mark.parametrize("offset", BAD_OFFSETS, ids=repr)
    async def test_malformed_is_a_json_400(self, api, offset, live_mode):
        url, _ = await finished(api)
        resp = await api.client.get(f"{_path(url)}?offset={offset}{live_mode}")
        assert resp.status == 400, await resp.text()
        assert (await resp.json())["error"]["code"] == "bad_offset"

    async def test_offset_twice_and_past_the_end(self, api, data_dir):
        url, _ = await finished(api)
        size = file_of(data_dir, url).stat().st_size
        for query in (f"offset=-1&offset={START}", f"offset={format_offset(size + 1)}"):
            resp = await api.client.get(f"{_path(url)}?{query}")
            assert resp.status == 400 and (await resp.json())["error"]["code"] == "bad_offset"

    async def test_live_without_offset_is_the_event_stream(self, api):
        url, _ = await finished(api)  # no `offset`: EventSource's read, whatever else
        resp = await api.client.get(f"{_path(url)}?live=long-poll")
        assert resp.status == 200 and resp.headers["Content-Type"] == "text/event-stream"


class TestPrivate:
    async def test_the_token_is_needed_and_caches_keep_it_private(self, api, data_dir):
        url, answer = await finished(api, access="private")
        token = answer["authorization"]["bearer_token"]
        assert (await api.get(f"{url}?offset=-1")).status == 404
        resp = await api.get(f"{url}?offset=-1&token={token}")
        assert await resp.read() == file_of(data_dir, url).read_bytes()
        assert resp.headers["Cache-Control"].startswith("private")
        by_header = await api.get(f"{url}?offset=-1", headers={"Authorization": f"Bearer {token}"})
        assert by_header.status == 200
        assert by_header.headers["ETag"] == resp.headers["ETag"]  # keyed by the token…
        assert token not in resp.headers["ETag"]  # …which it does not show
        assert resp.headers["Vary"] == "Authorization"


def _path(url: str) -> str:
    return "/" + url.split("://", 1)[1].partition("/")[2]


class TestTypeScriptClient:
    @pytest.mark.parametrize("mode", ["catch-up", "long-poll", "sse"])
    async def test_reads_a_finished_answer(self, api, data_dir, mode):
        url, _ = await finished(api)
        out, state = await read_with_client(url, mode)
        raw = file_of(data_dir, url).read_bytes()
        assert out == raw
        assert state["streamClosed"] is True and state["offset"] == format_offset(len(raw))

    @pytest.mark.parametrize("mode", ["long-poll", "sse"])
    async def test_follows_a_live_answer_to_its_end(self, api, data_dir, mode):
        url, _ = await live(api)
        out, state = await read_with_client(url, mode)
        assert out == file_of(data_dir, url).read_bytes()
        assert state["streamClosed"] is True and state["chunks"] > 1

    async def test_resumes_from_the_offset_a_cut_connection_had(self, api, data_dir):
        url, _ = await live(api)
        first = await api.get(f"{url}?offset=-1")
        part, offset = await first.read(), first.headers["Stream-Next-Offset"]
        out, state = await read_with_client(url, "sse", "--offset", offset)
        assert part + out == file_of(data_dir, url).read_bytes()
        assert state["streamClosed"] is True

    async def test_a_private_answer_with_its_token(self, api, data_dir):
        url, answer = await live(api, access="private")
        token = answer["authorization"]["bearer_token"]
        out, _ = await read_with_client(url, "long-poll", "--param", f"token={token}")
        assert out == file_of(data_dir, url).read_bytes()


class TestMore:
    async def test_an_async_request_is_read_the_same_way(self, api, data_dir):
        answer = await api.create(path="/v1/async-chatgpt", model="mock?tokens=5")
        url = answer["endpoints"]["status_url"].replace(".json", ".txt")
        assert "/2/r/" in url
        got, _ = await long_poll_all(api, url)
        assert got == file_of(data_dir, url).read_bytes()

    async def test_an_sse_read_ends_after_its_time_and_resumes(self, make_api, data_dir):
        api = await make_api(sse_seconds=0.3)
        url, _ = await live(api, model="mock?tokens=60&delay_ms=30")
        resp = await api.get(f"{url}?offset=-1&live=sse")
        events = parse_all(await resp.read())  # ends long before the answer does
        last = orjson.loads([e for e in events if e.event == "control"][-1].data)
        assert "streamClosed" not in last
        got, _ = await long_poll_all(api, url, last["streamNextOffset"])
        raw = file_of(data_dir, url).read_bytes()
        assert raw[: int(last["streamNextOffset"].split("_")[1])] + got == raw


class TestFuzzedQueries:
    @settings(
        max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(
        st.dictionaries(
            st.sampled_from(["offset", "live", "cursor", "token", "x"]),
            st.text(st.characters(blacklist_categories=("Cs",)), max_size=30),
            min_size=1,
        )
    )
    async def test_any_query_is_answered_never_a_5xx_never_hung(self, client, params):
        url = await TestFuzzedQueries.finished_url(client)
        async with asyncio.timeout(10):
            resp = await client.get(_path(url), params=params)
            await resp.read()
        assert resp.status < 500

    _url: dict = {}

    @staticmethod
    async def finished_url(client) -> str:
        """One finished answer per app (made on first use)."""
        key = id(client)
        if key not in TestFuzzedQueries._url:
            body = {"model": "mock?tokens=3", "messages": [{"role": "user", "content": "x"}]}
            resp = await client.post(
                "/v1/stream-chatgpt", json=body, headers={"X-OpenAI-API-Key": "sk-x"}
            )
            urls = (await resp.json())["endpoints"]
            async with asyncio.timeout(10):
                while (await (await client.get(_path(urls["status_url"]))).json())[
                    "status"
                ] != "done":
                    await asyncio.sleep(0.02)
            TestFuzzedQueries._url[key] = urls["stream_events_url"]
        return TestFuzzedQueries._url[key]
