"""The stream as real clients read it: the official openai SDK (sync, async and its
ChatCompletionStream), httpx-sse, and transcripts written by the first release."""

from __future__ import annotations

import asyncio

import httpx
import httpx_sse
import openai
import orjson
import pytest
from openai.lib.streaming.chat import AsyncChatCompletionStream
from openai.types.chat import ChatCompletionChunk

from helpers import file_of, how_it_ended, stream_text
from offloadd.protocol.sse import parse_all

LONG = "mock?tokens=300&delay_ms=5"


def _text(doc: dict) -> str:
    return doc["response"]["body"]["choices"][0]["message"]["content"] or ""


def _sdk() -> openai.OpenAI:
    return openai.OpenAI(api_key="sk-anything", base_url="http://127.0.0.1:1/v1", max_retries=0)


def _read_sync(url: str) -> str:
    """The loop from the issue, exactly as an SDK user writes it."""
    out = ""
    stream = _sdk().get(
        url, cast_to=ChatCompletionChunk, stream=True, stream_cls=openai.Stream[ChatCompletionChunk]
    )
    for chunk in stream:
        out += chunk.choices[0].delta.content or ""
    return out


def _async_sdk() -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        api_key="sk-anything", base_url="http://127.0.0.1:1/v1", max_retries=0
    )


async def _read_async(url: str) -> tuple[str, list[ChatCompletionChunk]]:
    chunks = []
    stream = await _async_sdk().get(
        url,
        cast_to=ChatCompletionChunk,
        stream=True,
        stream_cls=openai.AsyncStream[ChatCompletionChunk],
    )
    async for chunk in stream:
        chunks.append(chunk)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


class TestOpenAISDK:
    async def test_sync_stream_live_and_finished_prints_the_status_text(self, api):
        urls = (await api.create(model=LONG))["endpoints"]
        url = urls["stream_events_url"]
        live = await asyncio.to_thread(_read_sync, url)
        doc = await api.status(urls["status_url"])
        assert doc["status"] == "done" and live == _text(doc)
        assert len(live.split()) == 300
        assert await asyncio.to_thread(_read_sync, url) == live  # finished: same again

    async def test_async_stream_live_and_finished(self, api):
        urls = (await api.create(model=LONG))["endpoints"]
        url = urls["stream_events_url"]
        live, chunks = await _read_async(url)
        doc = await api.status(urls["status_url"])
        assert live == _text(doc) and all(c.choices for c in chunks)
        assert (await _read_async(url))[0] == live

    async def test_usage_the_caller_asked_for_arrives_as_openai_sends_it(self, api):
        urls = (await api.create(model="mock?tokens=4", stream_options={"include_usage": True}))[
            "endpoints"
        ]
        _, chunks = await _read_async(urls["stream_events_url"])
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 4
        doc = await api.status(urls["status_url"])
        assert doc["response"]["body"]["usage"]["completion_tokens"] == 4

    async def test_chat_completion_stream_accumulates_the_answer(self, api):
        urls = (await api.create(model="mock?tokens=12"))["endpoints"]
        raw = await _async_sdk().get(
            urls["stream_events_url"],
            cast_to=ChatCompletionChunk,
            stream=True,
            stream_cls=openai.AsyncStream[ChatCompletionChunk],
        )
        stream = AsyncChatCompletionStream(
            raw_stream=raw, response_format=openai.omit, input_tools=openai.omit
        )
        async for _ in stream:
            pass
        completion = await stream.get_final_completion()
        doc = await api.status(urls["status_url"])
        assert completion.choices[0].message.content == _text(doc)
        assert completion.choices[0].finish_reason == "stop"

    @pytest.mark.parametrize(
        ("model", "status", "says"),
        [
            ("mock?tokens=20&disconnect_after=6", "error", "upstream"),
            ("mock?status=500", "error", ""),
        ],
    )
    async def test_an_error_ending_raises_api_error_after_the_text(self, api, model, status, says):
        urls = (await api.create(model=model))["endpoints"]
        seen = []
        with pytest.raises(openai.APIError) as raised:
            stream = await _async_sdk().get(
                urls["stream_events_url"],
                cast_to=ChatCompletionChunk,
                stream=True,
                stream_cls=openai.AsyncStream[ChatCompletionChunk],
            )
            async for chunk in stream:
                seen.append(chunk.choices[0].delta.content or "")
        doc = await api.status(urls["status_url"])
        assert doc["status"] == status
        assert raised.value.message == doc["error"]["message"]
        assert says in raised.value.message
        assert "".join(seen) == (_text(doc) if doc["response"]["body"] else "")

    async def test_a_stopped_request_raises_api_error_saying_so(self, api):
        urls = (await api.create(model="mock?tokens=500&delay_ms=20"))["endpoints"]
        await api.wait_status(urls["status_url"], "streaming")
        await api.post(urls["stop_url"])
        url = urls["stream_events_url"]
        with pytest.raises(openai.APIError, match="stopped") as raised:
            await asyncio.to_thread(_read_sync, url)
        assert raised.value.body["code"] == "stopped"

    async def test_a_private_stream_opens_with_the_query_token_despite_the_sdk_header(self, api):
        answer = await api.create(model="mock?tokens=5", access="private")
        url = answer["endpoints"]["stream_events_url"]
        arg = answer["authorization"]["stream_url_arg"]
        text = await asyncio.to_thread(_read_sync, f"{url}?{arg}")
        assert len(text.split()) == 5
        with pytest.raises(openai.NotFoundError):
            await asyncio.to_thread(_read_sync, f"{url}?token=wrong")


class TestHttpxSSE:
    async def test_every_event_is_json_until_done(self, api):
        for model in ("mock?tokens=8", "mock?tokens=20&disconnect_after=3"):
            urls = (await api.create(model=model))["endpoints"]
            parsed = []
            async with httpx.AsyncClient() as client:
                url = urls["stream_events_url"]
                async with httpx_sse.aconnect_sse(client, "GET", url) as source:
                    async for sse in source.aiter_sse():
                        if sse.data == "[DONE]":
                            break
                        parsed.append(orjson.loads(sse.data))
            assert parsed and all(isinstance(p, dict) for p in parsed)


# The first release's format: a lone retry record, a named usage chunk, a named status.
OLD = (
    b"retry: 3000\n\n"
    b'id: 1\ndata: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,'
    b'"delta":{"role":"assistant","content":"old"},"finish_reason":null}]}\n\n'
    b'id: 2\ndata: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,'
    b'"delta":{"content":" text"},"finish_reason":"stop"}]}\n\n'
    b'id: 3\nevent: usage\ndata: {"id":"c","choices":[],"usage":{"completion_tokens":2}}\n\n'
    b'id: 4\nevent: status\ndata: {"status":"done","finish_reason":"stop"}\n\n'
    b"id: 5\ndata: [DONE]\n\n"
)


class TestFirstReleaseTranscripts:
    async def _old(self, api, data_dir) -> dict:
        urls = (await api.create(model="mock?tokens=2"))["endpoints"]
        await api.stream(urls["stream_events_url"])
        file_of(data_dir, urls["stream_events_url"]).write_bytes(OLD)
        return urls

    async def test_served_resumed_and_ended_as_before(self, api, data_dir):
        urls = await self._old(api, data_dir)
        assert await api.stream(urls["stream_events_url"]) == OLD
        rest = await api.events(urls["stream_events_url"], headers={"Last-Event-ID": "1"})
        assert [e.id for e in rest] == ["2", "3", "4", "5"]
        resp = await api.get(urls["stream_events_url"], headers={"Last-Event-ID": "5"})
        assert resp.status == 204
        assert stream_text(parse_all(OLD)) == "old text"
        assert how_it_ended(parse_all(OLD)) == {"status": "done"}
