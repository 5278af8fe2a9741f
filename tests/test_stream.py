"""The event stream: format, live delivery, many readers, resume, the end."""

from __future__ import annotations

import asyncio
import os

import orjson

from helpers import file_of, how_it_ended
from offloadd.protocol.sse import SSEParser, parse_all


def _chunk_events(events):
    return [e for e in events if e.event is None and e.data != b"[DONE]" and e.id]


class TestFormat:
    async def test_every_chunk_then_done(self, api):
        urls = (await api.create())["endpoints"]
        raw = await api.stream(urls["stream_events_url"])
        assert raw.startswith(b"id: 1\nretry: 3000\ndata: {")  # no record without data
        events = parse_all(raw)
        assert [int(e.id) for e in events] == list(range(1, len(events) + 1))
        assert all(e.event is None for e in events)
        *chunks, done = events
        assert done.data == b"[DONE]" and how_it_ended(events) == {"status": "done"}
        unnamed = [orjson.loads(e.data) for e in chunks if e.event is None]
        assert all(c["object"] == "chat.completion.chunk" and c["choices"] for c in unnamed)
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in unnamed)
        assert text == (
            "Can you resume the pros and cons of the Soundcore by Anker Space Q45 "
            "Adaptive Active Noise Cancelling Headphones?"
        )

    async def test_usage_offloadd_asked_for_goes_to_the_status_only(self, api):
        urls = (await api.create())["endpoints"]
        events = await api.events(urls["stream_events_url"])
        chunks = [orjson.loads(e.data) for e in events[:-1]]
        assert all(c["choices"] and c.get("usage") is None for c in chunks)
        doc = await api.status(urls["status_url"])
        assert doc["response"]["body"]["usage"]["completion_tokens"] > 0
        assert doc["events"] == len(events)

    async def test_usage_chunk_is_unnamed_when_the_client_asked_for_it(self, api):
        urls = (await api.create(stream_options={"include_usage": True}))["endpoints"]
        events = await api.events(urls["stream_events_url"])
        assert not [e for e in events if e.event == "usage"]
        last_chunk = orjson.loads(_chunk_events(events)[-1].data)
        assert last_chunk["choices"] == [] and last_chunk["usage"]

    async def test_chunks_are_the_upstreams_bytes_verbatim(self, api, data_dir):
        urls = (await api.create(model="mock?tokens=5"))["endpoints"]
        raw = await api.stream(urls["stream_events_url"])
        assert raw == file_of(data_dir, urls["stream_events_url"]).read_bytes()
        for event in _chunk_events(parse_all(raw)):
            assert orjson.dumps(orjson.loads(event.data)) == event.data

    async def test_headers_let_proxies_pass_it_unbuffered(self, api):
        urls = (await api.create())["endpoints"]
        resp = await api.get(urls["stream_events_url"])
        assert resp.headers["Content-Type"] == "text/event-stream"
        assert resp.headers["Cache-Control"] == "no-cache"
        assert resp.headers["X-Accel-Buffering"] == "no"
        await resp.read()


class TestLive:
    async def test_first_event_arrives_before_the_last_is_written(self, api):
        urls = (await api.create(model="mock?tokens=40&delay_ms=40"))["endpoints"]
        resp = await api.get(urls["stream_events_url"])
        parser = SSEParser()
        first = None
        async for piece in resp.content.iter_any():
            first = next((e for e in parser.feed(piece) if e.id), None)
            if first:
                break
        assert first is not None and int(first.id) == 1
        doc = await api.status(urls["status_url"])
        assert doc["status"] in ("waiting", "streaming")
        rest = await resp.read()
        assert rest.endswith(b"data: [DONE]\n\n")

    async def test_concurrent_and_late_readers_get_identical_bytes(self, api, data_dir):
        urls = (await api.create(model="mock?tokens=30&delay_ms=10"))["endpoints"]
        url = urls["stream_events_url"]
        first, second = await asyncio.gather(api.stream(url), api.stream(url))
        late = await api.stream(url)
        on_disk = file_of(data_dir, url).read_bytes()
        assert first == second == late == on_disk
        assert on_disk.endswith(b"data: [DONE]\n\n")

    async def test_live_bytes_are_framed_right_for_http_1_0_and_1_1(self, api, data_dir):
        """Readers that keep up get each chunk from the tail straight to their socket:
        chunked for HTTP/1.1, as is for HTTP/1.0 (which ends by closing)."""
        urls = (await api.create(model="mock?tokens=40&delay_ms=20"))["endpoints"]
        path = "/" + urls["stream_events_url"].split("/", 3)[3]

        async def raw_get(version: str) -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", api.client.port)
            writer.write(f"GET {path} HTTP/{version}\r\nHost: x\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            if version == "1.0":
                body = await reader.read()
            else:
                assert b"Transfer-Encoding: chunked" in head
                body = b""
                while size := int((await reader.readuntil(b"\r\n"))[:-2], 16):
                    body += (await reader.readexactly(size + 2))[:-2]
            writer.close()
            return body

        old, new = await asyncio.gather(raw_get("1.0"), raw_get("1.1"))
        on_disk = file_of(data_dir, urls["stream_events_url"]).read_bytes()
        assert old == new == on_disk and on_disk.endswith(b"data: [DONE]\n\n")

    async def test_keep_alive_comments_while_idle_are_not_written(self, make_api, data_dir):
        api = await make_api(keepalive_seconds=0.1)
        urls = (await api.create(model="mock?tokens=3&delay_ms=400"))["endpoints"]
        raw = await api.stream(urls["stream_events_url"])
        assert b": keep-alive\n\n" in raw
        assert b"keep-alive" not in file_of(data_dir, urls["stream_events_url"]).read_bytes()
        assert (
            raw.replace(b": keep-alive\n\n", b"")
            == file_of(data_dir, urls["stream_events_url"]).read_bytes()
        )

    async def test_a_file_written_by_another_process_is_followed(self, api, data_dir):
        """Readers poll the file: bytes appended by any writer reach them."""
        urls = (await api.create(model="mock?tokens=1"))["endpoints"]
        await api.wait_status(urls["status_url"], "done")
        # A second conversation written by hand, as another daemon would.
        src = file_of(data_dir, urls["stream_events_url"])
        other = src.with_name("0d0c6a8e-6c55-4d41-9d36-0c1b6f0a1c2e.txt")
        other.write_bytes(b'retry: 3000\n\nid: 1\ndata: {"a":1}\n\n')
        other.with_suffix(".json").write_bytes(src.with_suffix(".json").read_bytes())
        url = urls["stream_events_url"].replace(src.stem, other.stem)
        reader = asyncio.create_task(api.stream(url))
        await asyncio.sleep(0.2)  # time is the subject: an unfinished file keeps its reader
        assert not reader.done()
        with open(other, "ab") as f:
            f.write(b'id: 2\ndata: {"a":2}\n\n')
            f.flush()
            os.fsync(f.fileno())
            await asyncio.sleep(0.1)  # another writer's pace: the end comes some polls later
            f.write(b"id: 3\nevent: status\ndata: {}\n\nid: 4\ndata: [DONE]\n\n")
        raw = await asyncio.wait_for(reader, 5)
        assert raw == other.read_bytes()

    async def test_readers_of_a_file_its_writer_could_not_end_learn_how_it_ended(
        self, make_api, data_dir
    ):
        """The document is final but the `.txt` never got its end (the disk was full when
        its writer ended it): every reader still gets the end, after what the file holds."""
        api = await make_api(keepalive_seconds=0.1)
        urls = (await api.create(model="mock?tokens=1"))["endpoints"]
        await api.wait_status(urls["status_url"], "done")
        src = file_of(data_dir, urls["stream_events_url"])
        other = src.with_name("5f1b2c3d-6c55-4d41-9d36-0c1b6f0a1c2e.txt")
        other.write_bytes(b'id: 1\nretry: 3000\ndata: {"a":1}\n\n')
        doc = orjson.loads(src.with_suffix(".json").read_bytes())
        doc.update(status="error", error={"code": "storage_error", "message": "disk full"})
        other.with_suffix(".json").write_bytes(orjson.dumps(doc))
        url = urls["stream_events_url"].replace(src.stem, other.stem)
        many = await asyncio.wait_for(asyncio.gather(*(api.events(url) for _ in range(5))), 10)
        for events in many:
            assert events[0].data == b'{"a":1}'
            assert how_it_ended(events)["error"]["code"] == "storage_error"
            assert events[-1].data == b"[DONE]"


class TestResume:
    async def test_last_event_id_header_gets_only_later_events(self, api):
        urls = (await api.create(model="mock?tokens=5"))["endpoints"]
        full = await api.events(urls["stream_events_url"])
        events = await api.events(urls["stream_events_url"], headers={"Last-Event-ID": "3"})
        assert [e.id for e in events] == [e.id for e in full if e.id and int(e.id) > 3]
        assert events[0].id == "4"

    async def test_last_event_id_query_works_like_the_header(self, api):
        urls = (await api.create(model="mock?tokens=5"))["endpoints"]
        await api.stream(urls["stream_events_url"])
        raw = await api.stream(urls["stream_events_url"] + "?last_event_id=6")
        assert raw.startswith(b"id: 7\n")

    async def test_resume_while_live_gets_the_rest(self, api):
        urls = (await api.create(model="mock?tokens=20&delay_ms=30"))["endpoints"]
        await api.wait_status(urls["status_url"], "streaming")
        events = await api.events(urls["stream_events_url"], headers={"Last-Event-ID": "2"})
        ids = [int(e.id) for e in events]
        assert ids == list(range(3, ids[-1] + 1))
        assert events[-1].data == b"[DONE]"

    async def test_reconnect_after_the_end_gets_204(self, api):
        urls = (await api.create(model="mock?tokens=2"))["endpoints"]
        events = await api.events(urls["stream_events_url"])
        resp = await api.get(urls["stream_events_url"], headers={"Last-Event-ID": events[-1].id})
        assert resp.status == 204

    async def test_reconnect_after_status_but_before_done_gets_done(self, api):
        urls = (await api.create(model="mock?tokens=2"))["endpoints"]
        events = await api.events(urls["stream_events_url"])
        status_id = events[-2].id
        rest = await api.events(urls["stream_events_url"], headers={"Last-Event-ID": status_id})
        assert [e.data for e in rest] == [b"[DONE]"]
