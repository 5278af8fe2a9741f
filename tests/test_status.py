"""The status document: partial while streaming, complete when done."""

from __future__ import annotations

import orjson

from helpers import ANSWER_KEYS, file_of


class TestStatusDocument:
    async def test_partial_text_while_streaming_then_complete(self, api):
        urls = (await api.create(model="mock?tokens=60&delay_ms=20"))["endpoints"]
        doc = await api.wait_status(urls["status_url"], "streaming")
        assert doc["README"].startswith("The ChatGPT API is sending its response")
        partial = None
        while doc["status"] == "streaming":
            text = doc["response"]["body"]["choices"][0]["message"]["content"]
            if text and len(text.split()) < 60:
                partial = text
            doc = await api.status(urls["status_url"])
        assert partial is not None, "never saw a partial answer"
        assert doc["status"] == "done"
        body = doc["response"]["body"]
        full = body["choices"][0]["message"]["content"]
        assert full == " ".join(f"t{i}" for i in range(60))
        assert full.startswith(partial)
        assert body["object"] == "chat.completion"
        assert body["choices"][0]["finish_reason"] == "stop"
        assert body["usage"]["completion_tokens"] == 60
        assert doc["error"] is None
        assert doc["request"]["finished_at"] >= doc["request"]["processed_at"]
        assert doc["response"]["status_code"] == 200
        assert "x-request-id" in doc["response"]["headers"]

    async def test_document_shape_and_events_count(self, api):
        urls = (await api.create(model="mock?tokens=3"))["endpoints"]
        events = await api.events(urls["stream_events_url"])
        doc = await api.status(urls["status_url"])
        assert list(doc) == [
            *ANSWER_KEYS,
            "request",
            "options",
            "parameters",
            "response",
            "error",
            "events",
        ]
        assert doc["events"] == int(events[-1].id)
        assert doc["options"] == {"timeout": 90, "connect_timeout": 5}
        assert doc["parameters"]["messages"][0]["role"] == "system"
        assert doc["endpoints"]["status_url"] == urls["status_url"]

    async def test_file_on_disk_is_final_before_done_is_streamed(self, api, data_dir):
        urls = (await api.create(model="mock?tokens=3"))["endpoints"]
        await api.stream(urls["stream_events_url"])
        on_disk = orjson.loads(file_of(data_dir, urls["status_url"]).read_bytes())
        assert on_disk["status"] == "done"
        assert on_disk["response"]["body"]["choices"][0]["message"]["content"] == "t0 t1 t2"

    async def test_tool_calls_are_assembled(self, api):
        tools = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
        body = {"messages": [{"role": "user", "content": "find the headphones"}]}
        urls = (await api.create(body, tools=tools, tool_choice="auto"))["endpoints"]
        doc = await api.wait_status(urls["status_url"], "done")
        choice = doc["response"]["body"]["choices"][0]
        assert choice["finish_reason"] == "tool_calls"
        [call] = choice["message"]["tool_calls"]
        assert call["function"]["name"] == "lookup"
        assert orjson.loads(call["function"]["arguments"]) == {"text": "find the headphones"}
        assert call["id"].startswith("call_")

    async def test_status_reads_through_the_2_prefix_too(self, api):
        urls = (await api.create(model="mock?tokens=2"))["endpoints"]
        await api.wait_status(urls["status_url"], "done")
        doc = await api.status(urls["status_url"].replace("/1/r/", "/2/r/"))
        assert doc["status"] == "done"
