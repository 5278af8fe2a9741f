"""A hostile upstream speaking Anthropic's Messages API (tests/hostile_upstream.py): events of
the wrong shape, streams cut before `message_stop`, garbage, keys echoed, error bodies that
are not JSON. Whatever comes, every request ends with a final status and a stream whose end
Anthropic's SDK understands, nothing leaks, nothing is a 5xx of offloadd's own."""

from __future__ import annotations

import anthropic
import orjson
import pytest

from helpers import Api, files_under
from hostile_upstream import model, named
from offloadd.protocol.sse import parse_all

KEY = "sk-ant-api03-hostileTestKey0000000000"
HI = [{"role": "user", "content": "hi"}]
START = named(
    "message_start",
    message={
        "id": "msg_hostile",
        "type": "message",
        "role": "assistant",
        "content": [],
        "model": "claude",
        "stop_reason": None,
        "usage": {"input_tokens": 7, "output_tokens": 1},
    },
)
TEXT = named("content_block_start", index=0, content_block={"type": "text", "text": ""})


def text(value: object, index: object = 0) -> str:
    return named("content_block_delta", index=index, delta={"type": "text_delta", "text": value})


END = [
    named("content_block_stop", index=0),
    named("message_delta", delta={"stop_reason": "end_turn"}, usage={"output_tokens": 3}),
    named("message_stop"),
]


async def _ended(api: Api, script: dict, **fields) -> tuple[dict, list]:
    """Run one scripted call to its end: its final status document and its stored stream."""
    body = {"model": model(script), "max_tokens": 10, "messages": HI, "stream": True, **fields}
    resp = await api.client.post("/v1/messages", json=body, headers={"x-api-key": KEY})
    assert resp.status == 200, await resp.text()
    live = await resp.read()
    doc = await api.wait_status(resp.headers["X-Offloadd-Status-Url"], "done", "error", "stopped")
    stored = await api.stream(resp.headers["X-Offloadd-Stream-Url"])
    assert stored == live  # the transcript is the stream, byte for byte
    events = parse_all(stored)
    assert events[-1].data == b"[DONE]"
    if doc["status"] != "done":  # offloadd's ending: the named error the SDK raises
        assert events[-2].event == "error"
        assert orjson.loads(events[-2].data)["error"]["message"] == doc["error"]["message"]
    return doc, events


class TestLyingEvents:
    @pytest.mark.parametrize(
        "event",
        [
            named("message_start", message="not an object"),
            named("content_block_start", index="a", content_block={"type": "text"}),
            named("content_block_start", index=1, content_block=5),
            text(5),
            text("x", index=None),
            text("x", index=True),
            named("content_block_delta", index=0, delta="text"),
            named("content_block_delta", index=0, delta={"type": "input_json_delta"}),
            named("message_delta", delta=[1], usage="lots"),
            named("message_delta", delta={"stop_reason": 7}, usage={"output_tokens": None}),
            named("ping", extra={"deep": [1, 2, {"x": None}]}),
            named("unknown_kind_of_event", index=0),
        ],
    )
    async def test_events_of_the_wrong_shape_end_the_request(self, hostile, event):
        doc, _ = await _ended(hostile, {"lines": [START, TEXT, event, text("ok"), *END]})
        assert doc["status"] == "done"
        body = doc["response"]["body"]
        assert body["type"] == "message" and "ok" in body["content"][0]["text"]

    async def test_a_huge_block_index_does_not_grow_the_document(self, hostile):
        block = named("content_block_start", index=300000, content_block={"type": "text"})
        doc, events = await _ended(hostile, {"lines": [START, block, text("x", 300000), *END]})
        assert len(orjson.dumps(doc)) < 8 * 1024
        assert doc["response"]["body"]["content"] == [{"type": "text", "text": "x"}]

    async def test_a_negative_usage_is_not_believed(self, hostile):
        lying = named("message_delta", delta={}, usage={"output_tokens": -1_000_000})
        doc, _ = await _ended(hostile, {"lines": [START, TEXT, text("abc"), lying]})
        from offloadd.domain.status import tokens_used

        tokens, estimated = tokens_used(doc)
        assert tokens > 0 and estimated

    async def test_a_tool_call_cut_mid_json_keeps_what_parses(self, hostile):
        tool = {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}
        lines = [
            START,
            named("content_block_start", index=0, content_block=tool),
            named(
                "content_block_delta",
                index=0,
                delta={"type": "input_json_delta", "partial_json": '{"a": "b'},
            ),
        ]
        doc, _ = await _ended(hostile, {"lines": lines, "then": "close"})
        assert doc["status"] == "error" and doc["error"]["code"] == "upstream_disconnected"
        assert doc["response"]["body"]["content"] == [tool]


class TestCutAndBrokenStreams:
    async def test_the_end_without_message_stop_is_an_error_the_sdk_raises(self, hostile):
        lines = [START, TEXT, text("partial"), named("content_block_stop", index=0)]
        doc, events = await _ended(hostile, {"lines": lines})
        assert doc["error"]["code"] == "upstream_disconnected"
        assert "message_stop" in doc["error"]["message"]
        assert doc["response"]["body"]["content"][0]["text"] == "partial"
        assert doc["response"]["body"]["usage"]["input_tokens"] == 7
        base = str(hostile.client.make_url(""))
        async with anthropic.AsyncAnthropic(base_url=base, api_key=KEY) as client:
            script = model({"lines": lines})
            async with client.messages.stream(model=script, max_tokens=10, messages=HI) as s:
                with pytest.raises(anthropic.APIStatusError) as raised:
                    await s.get_final_message()  # not a partial message passed off as whole
        assert raised.value.error_code == "upstream_disconnected"

    async def test_garbage_in_the_stream(self, hostile):
        lines = [START, TEXT, "event: content_block_delta\ndata: not json {", *END]
        doc, _ = await _ended(hostile, {"lines": lines})
        assert doc["error"]["code"] == "upstream_bad_chunk"

    async def test_an_error_event_of_the_wrong_shape(self, hostile):
        lines = [START, TEXT, text("a"), 'event: error\ndata: {"type": "error", "error": "boom"}']
        doc, events = await _ended(hostile, {"lines": lines})
        assert doc["status"] == "error" and doc["error"]["message"] == "boom"
        error = orjson.loads(events[-2].data)["error"]
        assert error["type"] == "api_error" and error["message"] == "boom"

    @pytest.mark.parametrize("status", [400, 401, 404, 500, 529])
    async def test_an_http_error_whose_body_is_not_json(self, hostile, status):
        script = {"status": status, "raw": "PGh0bWw+b3ZlcmxvYWRlZDwvaHRtbD4="}
        body = {"model": model(script), "max_tokens": 10, "messages": HI}
        resp = await hostile.client.post("/v1/messages", json=body, headers={"x-api-key": KEY})
        assert resp.status == status and resp.headers["x-should-retry"] == "false"
        answer = await resp.json()
        assert answer["type"] == "error" and "<html>" in answer["error"]["message"]


class TestTheKeyNeverLeaks:
    async def test_an_upstream_echoing_the_key(self, hostile, data_dir):
        lines = [START, TEXT, text("your key is $KEY"), "data: not json, and $KEY"]
        doc, events = await _ended(hostile, {"lines": lines, "echo_key": True})
        assert doc["error"]["code"] == "upstream_bad_chunk"
        served = b"".join(e.data for e in events) + orjson.dumps(doc)
        on_disk = b"".join(p.read_bytes() for p in files_under(data_dir))
        for said in (served, on_disk):
            assert KEY.encode() not in said and KEY[:14].encode() not in said
