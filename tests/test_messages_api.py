"""Anthropic's Messages API offloaded, driven by the official `anthropic` SDK with nothing but
a `base_url` change (no `/v1`): streamed or not, its stream helpers, its error classes, a
stop, a crash, and following, resuming and stopping through the X-Offloadd-* URLs."""

from __future__ import annotations

import asyncio
import signal

import anthropic
import orjson
import pytest

from helpers import ANTHROPIC_KEY, HI, LONG, eventually, files_under, upstream_posts, wait_status
from offloadd.protocol.sse import parse_all
from offloadd.storage.transcript import STOPPED_MESSAGE


@pytest.fixture(autouse=True)
def _no_sdk_environment(no_sdk_environment):
    """The SDK reads ANTHROPIC_* variables even with explicit arguments."""


class TestMessages:
    async def test_not_streamed_the_message_once_done(self, claude, api):
        raw = await claude(api).messages.with_raw_response.create(
            model="mock", max_tokens=100, messages=HI, system="be kind"
        )
        message = await raw.parse()
        assert message.type == "message" and message.role == "assistant"
        assert message.content[0].text == "hello claude over there"
        assert message.stop_reason == "end_turn"
        assert (message.usage.input_tokens, message.usage.output_tokens) == (10, 4)
        assert raw.headers["x-should-retry"] == "false"
        doc = await api.status(raw.headers["X-Offloadd-Status-Url"])
        assert doc["status"] == "done" and doc["request"]["endpoint"] == "/v1/messages"
        assert doc["response"]["body"] == orjson.loads(raw.http_response.content)
        kept = doc["response"]["headers"]  # the upstream's ids and rate limits, nothing else
        assert set(kept) == {"request-id", "anthropic-ratelimit-requests-limit"}
        [sent] = (await api.upstream_requests())[-1:]
        assert sent["body"]["stream"] is True and sent["body"]["system"] == "be kind"

    async def test_streamed_named_events_kept_in_the_transcript(self, claude, api):
        raw = await claude(api).messages.with_raw_response.create(
            model="mock?tokens=6", max_tokens=100, messages=HI, stream=True
        )
        events = [e async for e in await raw.parse()]
        assert events[0].type == "message_start" and events[-1].type == "message_stop"
        text = "".join(e.delta.text for e in events if e.type == "content_block_delta")
        assert text == "t0 t1 t2 t3 t4 t5"
        stored = parse_all(await api.stream(raw.headers["X-Offloadd-Stream-Url"]))
        names = [e.event for e in stored]
        assert names[:3] == ["message_start", "content_block_start", "ping"]
        assert names[-3:] == ["message_delta", "message_stop", None]  # then `[DONE]`
        assert all(orjson.loads(e.data)["type"] == e.event for e in stored[:-1])

    async def test_the_stream_helpers(self, claude, api):
        async with claude(api).messages.stream(
            model="mock?tokens=5", max_tokens=100, messages=HI
        ) as stream:
            texts = [t async for t in stream.text_stream]
            final = await stream.get_final_message()
        assert texts == ["t0", " t1", " t2", " t3", " t4"]
        assert final.content[0].text == "t0 t1 t2 t3 t4" and final.stop_reason == "end_turn"
        assert (final.usage.input_tokens, final.usage.output_tokens) == (10, 5)

    async def test_tool_use_and_thinking_assembled(self, claude, api):
        tool = {"name": "echo", "input_schema": {"type": "object"}}
        thinking = {"type": "enabled", "budget_tokens": 1024}
        async with claude(api).messages.stream(
            model="mock?tokens=3", max_tokens=2000, messages=HI, tools=[tool], thinking=thinking
        ) as stream:
            final = await stream.get_final_message()
            status_url = stream.response.headers["X-Offloadd-Status-Url"]
        kinds = [b.type for b in final.content]
        assert kinds == ["thinking", "text", "tool_use"] and final.stop_reason == "tool_use"
        assert final.content[0].signature == "mock-signature"
        assert final.content[2].input == {"text": "t0 t1 t2"}
        body = (await api.status(status_url))["response"]["body"]
        assert body["content"] == [b.model_dump(exclude_none=True) for b in final.content]

    async def test_the_sync_client_too(self, api):
        def run() -> str:
            base = str(api.client.make_url(""))
            with anthropic.Anthropic(base_url=base, api_key=ANTHROPIC_KEY) as client:
                with client.messages.stream(
                    model="mock?tokens=4", max_tokens=10, messages=HI
                ) as stream:
                    return "".join(stream.text_stream)

        assert await asyncio.to_thread(run) == "t0 t1 t2 t3"

    async def test_the_callers_version_is_sent_and_a_default_when_it_sent_none(self, claude, api):
        """SDK 2.x sends `anthropic-version: 2026-10-21`, under which the upstream refuses
        `temperature`; a caller without a version gets `2023-06-01`, which takes it."""
        with pytest.raises(anthropic.BadRequestError, match="temperature"):
            await claude(api).messages.create(
                model="mock", max_tokens=10, messages=HI, extra_body={"temperature": 0.5}
            )
        [seen] = (await api.upstream_requests())[-1:]
        assert seen["headers"] == {"anthropic-version": "2026-10-21", "key_in": "x-api-key"}
        await claude(api).messages.create(
            model="mock", max_tokens=10, messages=HI, extra_headers={"anthropic-beta": "b-1"}
        )
        [seen] = (await api.upstream_requests())[-1:]
        assert seen["headers"]["anthropic-beta"] == "b-1"
        body = {"model": "mock", "max_tokens": 10, "messages": HI, "temperature": 0.5}
        headers = {"x-api-key": ANTHROPIC_KEY}  # curl's way, and SDK 1.x's
        resp = await api.client.post("/v1/messages", json=body, headers=headers)
        answer = await resp.json()
        assert resp.status == 200 and answer["content"][0]["text"] == "hello claude over there"
        [seen] = (await api.upstream_requests())[-1:]
        assert seen["headers"] == {"anthropic-version": "2023-06-01", "key_in": "x-api-key"}


class TestFailures:
    @pytest.mark.parametrize(
        "status, error",
        [
            (400, anthropic.BadRequestError),
            (401, anthropic.AuthenticationError),
            (403, anthropic.PermissionDeniedError),
            (404, anthropic.NotFoundError),
            (413, anthropic.RequestTooLargeError),
            (429, anthropic.RateLimitError),
            (500, anthropic.InternalServerError),
            (529, anthropic.OverloadedError),
        ],
    )
    async def test_an_upstream_error_is_the_sdks_own_class_and_one_post(
        self, claude, api, status, error
    ):
        model = f"mock?status={status}"
        with pytest.raises(error) as raised:  # the SDK's own retries (2) are on
            await claude(api).messages.create(model=model, max_tokens=10, messages=HI)
        assert raised.value.status_code == status
        assert raised.value.response.headers["x-should-retry"] == "false"
        if status == 429:
            assert raised.value.response.headers["retry-after"]
        assert await upstream_posts(api, model) == 1  # offloadd ran it once; the SDK did not retry
        doc = await api.status(raised.value.response.headers["X-Offloadd-Status-Url"])
        assert doc["status"] == "error" and doc["error"]["upstream_status"] == status

    async def test_a_mid_stream_error_event(self, claude, api):
        model = "mock?tokens=40&error_after=8"
        async with claude(api).messages.stream(model=model, max_tokens=10, messages=HI) as s:
            with pytest.raises(anthropic.APIStatusError) as raised:
                async for _ in s.text_stream:
                    pass
            assert s.current_message_snapshot.content[0].text.startswith("t0 t1")
            url = s.response.headers["X-Offloadd-Status-Url"]
        assert raised.value.type == "overloaded_error" and raised.value.api_message == "Overloaded"
        doc = await api.status(url)
        assert doc["status"] == "error" and doc["error"]["upstream_type"] == "overloaded_error"
        assert doc["response"]["body"]["usage"]["input_tokens"] == 10
        with pytest.raises(anthropic.OverloadedError):  # not streamed: Anthropic's HTTP 529
            await claude(api).messages.create(model=model, max_tokens=10, messages=HI)

    async def test_a_stop_through_the_stop_url_is_an_error_with_offloadds_message(
        self, claude, api
    ):
        async with claude(api).messages.stream(model=LONG, max_tokens=10, messages=HI) as s:
            seen = []
            with pytest.raises(anthropic.APIStatusError) as raised:
                async for text in s.text_stream:
                    seen.append(text)
                    if len(seen) == 5:
                        resp = await api.post(s.response.headers["X-Offloadd-Stop-Url"])
                        assert resp.status == 200
            partial = s.current_message_snapshot.content[0].text
            url = s.response.headers["X-Offloadd-Status-Url"]
        assert raised.value.error_code == "stopped" and raised.value.api_message == STOPPED_MESSAGE
        assert STOPPED_MESSAGE in str(raised.value) and partial.startswith("t0 t1 t2 t3 t4")
        doc = await api.status(url)
        assert doc["status"] == "stopped"
        usage = doc["response"]["body"]["usage"]
        assert usage["input_tokens"] == 10 and usage["output_tokens_estimated"] is True
        assert usage["output_tokens"] >= len(doc["response"]["body"]["content"][0]["text"]) // 4
        assert await upstream_posts(api, LONG) == 1
        [seen_upstream] = [r for r in await api.upstream_requests() if r["model"] == LONG]
        assert seen_upstream["client_closed"] is True  # the model stopped generating

    async def test_a_stopped_call_not_streamed_is_a_conflict_not_retried(
        self, claude, api, data_dir
    ):
        model = "mock?tokens=400&delay_ms=10"
        call = asyncio.ensure_future(
            claude(api).messages.create(model=model, max_tokens=10, messages=HI)
        )

        async def streaming() -> bool:
            seen = await api.upstream_requests()
            return bool(seen and seen[-1]["chunks_sent"])

        await eventually(streaming)
        [status_file] = [p for p in files_under(data_dir) if p.suffix == ".json"]
        doc = orjson.loads(status_file.read_bytes())
        assert (await api.post(doc["endpoints"]["stop_url"])).status == 200
        with pytest.raises(anthropic.ConflictError) as raised:
            await call
        assert raised.value.error_code == "stopped"
        assert raised.value.response.headers["x-should-retry"] == "false"
        assert await upstream_posts(api, model) == 1

    async def test_a_timeout_is_anthropics_timeout_error(self, claude, api):
        model = "mock?tokens=10&stall_after=3"
        async with claude(api).messages.stream(
            model=model, max_tokens=10, messages=HI, extra_body={"timeout": 1}
        ) as s:
            with pytest.raises(anthropic.APIStatusError) as raised:
                await s.get_final_message()
        assert raised.value.type == "timeout_error"
        assert raised.value.error_code == "upstream_timeout"


class TestFollowResumeStop:
    async def test_a_disconnect_leaves_it_running_to_be_resumed(self, claude, api):
        async with claude(api).messages.stream(
            model="mock?tokens=60&delay_ms=10", max_tokens=10, messages=HI
        ) as s:
            headers = s.response.headers
            async for _ in s.text_stream:
                break  # the caller leaves mid-answer
        doc = await api.wait_status(headers["X-Offloadd-Status-Url"], "done", timeout=20)
        assert len(doc["response"]["body"]["content"][0]["text"].split()) == 60
        assert doc["response"]["body"]["usage"] == {"input_tokens": 10, "output_tokens": 60}
        rest = await api.events(headers["X-Offloadd-Stream-Url"], headers={"Last-Event-ID": "5"})
        assert rest[0].id == "6" and rest[-2].event == "message_stop"
        assert rest[-1].data == b"[DONE]"

    async def test_a_disconnect_stops_it_when_asked(self, claude, api):
        client = claude(api, default_headers={"X-Offloadd-Stop-On-Disconnect": "true"})
        async with client.messages.stream(model=LONG, max_tokens=10, messages=HI) as s:
            url = s.response.headers["X-Offloadd-Status-Url"]
            async for _ in s.text_stream:
                break
        assert (await api.wait_status(url, "stopped", "done"))["status"] == "stopped"

    async def test_the_stopped_streams_end_read_later_is_the_named_error(self, claude, api):
        raw = await claude(api).messages.with_raw_response.create(
            model=LONG, max_tokens=10, messages=HI, stream=True
        )
        await (await raw.parse()).close()
        stop = await api.post(raw.headers["X-Offloadd-Stop-Url"])
        assert stop.status == 200
        assert (await api.status(raw.headers["X-Offloadd-Status-Url"]))["status"] == "stopped"
        events = await api.events(raw.headers["X-Offloadd-Stream-Url"])
        assert events[-2].event == "error" and events[-1].data == b"[DONE]"
        error = orjson.loads(events[-2].data)["error"]
        assert error == {
            "type": "api_error",
            "message": STOPPED_MESSAGE,
            "details": {"error_code": "stopped"},
        }

    async def test_private_access_and_idempotency(self, claude, api):
        client = claude(api, default_headers={"Idempotency-Key": "claude-1"})
        options = dict(model="mock?tokens=3", max_tokens=10, messages=HI)
        first = await client.messages.with_raw_response.create(
            **options, extra_body={"access": "private"}
        )
        again = await client.messages.with_raw_response.create(
            **options, extra_body={"access": "private"}
        )
        token = first.headers["X-Offloadd-Bearer-Token"]
        assert again.headers["X-Offloadd-Status-Url"] == first.headers["X-Offloadd-Status-Url"]
        assert await upstream_posts(api, "mock?tokens=3") == 1
        url = first.headers["X-Offloadd-Status-Url"]
        assert (await api.get(url)).status in (401, 403, 404)
        doc = await (await api.get(url, headers={"Authorization": f"Bearer {token}"})).json()
        assert doc["response"]["body"]["content"][0]["text"] == "t0 t1 t2"
        other = await api.client.post(
            "/v1/chat/completions",
            json={"model": "mock", "messages": HI},
            headers={"Idempotency-Key": "claude-1", "X-OpenAI-API-Key": "sk-x"},
        )
        assert other.status in (409, 422)  # a key is bound to its endpoint


class TestCrash:
    async def test_a_daemon_killed_mid_answer_ends_interrupted_with_the_partial(
        self, serve_with_mock, mock_process, tmp_path, claude, http
    ):
        data = tmp_path / "data"
        anthropic_url = ("--anthropic-url", mock_process.url)
        a, b = [await serve_with_mock(data, *anthropic_url) for _ in range(2)]
        async with claude(a.url).messages.stream(model=LONG, max_tokens=10, messages=HI) as s:
            headers = s.response.headers
            with pytest.raises(anthropic.APIConnectionError):
                async for text in s.text_stream:
                    if text == " t20":
                        a.signal(signal.SIGKILL)
        await a.wait()
        status_url = headers["X-Offloadd-Status-Url"].replace(a.url, b.url)
        doc = await wait_status(http, status_url, "error", timeout=30)
        assert doc["error"]["code"] == "interrupted"
        body = doc["response"]["body"]
        assert body["content"][0]["text"].startswith("t0 t1 t2") and body["stop_reason"] is None
        assert body["usage"]["input_tokens"] == 10 and body["usage"]["output_tokens_estimated"]
        stream_url = headers["X-Offloadd-Stream-Url"].replace(a.url, b.url)
        async with http.get(stream_url) as resp:
            events = parse_all(await resp.read())
        error = orjson.loads(events[-2].data)
        assert events[-2].event == "error" and error["error"]["details"] == {
            "error_code": "interrupted"
        }
