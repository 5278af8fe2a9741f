"""Stopping: the upstream connection closes, the stream ends `stopped`, text is kept."""

from __future__ import annotations

import asyncio

from helpers import eventually, file_of, how_it_ended, wait_words
from offloadd.protocol.sse import parse_all


async def _wait_upstream_closed(api, timeout=5.0) -> dict:
    async def closed() -> dict:
        [seen] = await api.upstream_requests()
        assert seen["client_closed"], f"the upstream call is still open: {seen}"
        return seen

    return await eventually(closed, timeout=timeout)


class TestStop:
    async def test_stop_mid_stream_closes_the_upstream_and_ends_stopped(self, api):
        urls = (await api.create(model="mock?tokens=500&delay_ms=20"))["endpoints"]
        reader = asyncio.create_task(api.events(urls["stream_events_url"]))
        await wait_words(api, urls["status_url"], 2)
        resp = await api.post(urls["stop_url"])
        answer = await resp.json()
        assert resp.status == 200
        assert answer == {
            "status": "success",
            "conversation_id": urls["status_url"].rsplit("/", 1)[1][: -len(".json")],
            "conversation_status": "stopped",
        }
        seen = await _wait_upstream_closed(api)
        assert 0 < seen["chunks_sent"] < 500
        events = await asyncio.wait_for(reader, 5)
        assert how_it_ended(events)["status"] == "stopped"
        doc = await api.status(urls["status_url"])
        assert doc["status"] == "stopped"
        text = doc["response"]["body"]["choices"][0]["message"]["content"]
        assert text.startswith("t0 t1")
        assert len(text.split()) < 500

    async def test_get_stops_too(self, api):
        urls = (await api.create(model="mock?tokens=500&delay_ms=20"))["endpoints"]
        await api.wait_status(urls["status_url"], "streaming")
        resp = await api.get(urls["stop_url"])
        assert (await resp.json())["conversation_status"] == "stopped"
        await _wait_upstream_closed(api)

    async def test_stop_while_waiting_for_the_upstream(self, api):
        urls = (await api.create(model="mock?tokens=5&delay_ms=3000"))["endpoints"]
        resp = await api.get(urls["stop_url"])
        assert (await resp.json())["conversation_status"] == "stopped"
        events = await api.events(urls["stream_events_url"])
        assert [int(e.id) for e in events] == [1, 2]
        assert how_it_ended(events)["status"] == "stopped"

    async def test_stop_after_the_end_changes_nothing(self, api, data_dir):
        urls = (await api.create(model="mock?tokens=3"))["endpoints"]
        await api.stream(urls["stream_events_url"])
        paths = [file_of(data_dir, urls[k]) for k in ("status_url", "stream_events_url")]
        before = [p.read_bytes() for p in paths]
        for _ in range(2):
            resp = await api.post(urls["stop_url"])
            answer = await resp.json()
            assert answer["status"] == "success"
            assert answer["conversation_status"] == "done"
        after = [p.read_bytes() for p in paths]
        assert before == after

    async def test_stop_of_an_unknown_conversation_is_404(self, api):
        urls = (await api.create(model="mock?tokens=1"))["endpoints"]
        uuid = urls["stop_url"].split("/")[-2]
        unknown = urls["stop_url"].replace(uuid, "1b4e28ba-2fa1-41d2-883f-0016d3cca427")
        resp = await api.get(unknown)
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "not_found"


class TestManyStopsAtOnce:
    """Many clients stop one request at once (issue 22): one ending, the same answer to all."""

    async def test_a_crowd_of_stops_ends_each_request_exactly_once(self, api, data_dir, caplog):
        requests = [
            (await api.create(model="mock?tokens=500&delay_ms=10"))["endpoints"] for _ in range(6)
        ]
        readers = [asyncio.create_task(api.stream(u["stream_events_url"])) for u in requests]
        for urls in requests:
            await api.wait_status(urls["status_url"], "streaming")

        async def stop(urls, i):
            # time is the subject: the stops are spread over the ending's few milliseconds
            await asyncio.sleep(i * 0.002)
            resp = await (api.post if i % 2 else api.get)(urls["stop_url"])
            assert resp.status == 200
            return (await resp.json())["conversation_status"]

        answers = await asyncio.gather(*(stop(urls, i) for urls in requests for i in range(12)))
        assert answers == ["stopped"] * len(answers)
        for urls, reader in zip(requests, readers, strict=True):
            raw = await asyncio.wait_for(reader, 10)
            assert raw.count(b"data: [DONE]") == 1
            assert raw == file_of(data_dir, urls["stream_events_url"]).read_bytes()
            assert how_it_ended(parse_all(raw))["status"] == "stopped"
            assert (await api.status(urls["status_url"]))["status"] == "stopped"
        assert "Bad file descriptor" not in caplog.text
        assert "Traceback" not in caplog.text
