"""The official openai SDK pointed at offloadd with nothing but a `base_url` change."""

from __future__ import annotations

import asyncio

import openai
import pytest

from helpers import OPENAI_KEY, how_it_ended, make_key, stream_text
from offloadd.protocol.sse import parse_all

MESSAGES = [{"role": "user", "content": "hello from the sdk"}]


class TestChatCompletions:
    async def test_a_stream_live_with_the_request_urls_in_headers(self, sdk, api):
        raw = await sdk(api).chat.completions.with_raw_response.create(
            model="mock?tokens=30", messages=MESSAGES, stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in raw.parse()])
        assert text.split() == [f"t{i}" for i in range(30)]
        doc = await api.status(raw.headers["X-Offloadd-Status-Url"])
        assert doc["status"] == "done" and doc["request"]["endpoint"] == "/v1/chat/completions"
        assert doc["response"]["body"]["choices"][0]["message"]["content"] == text
        stream = parse_all(await api.stream(raw.headers["X-Offloadd-Stream-Url"]))
        assert stream_text(stream) == text

    async def test_not_streamed_the_completion_once_done(self, sdk, api):
        completion = await sdk(api).chat.completions.create(model="mock", messages=MESSAGES)
        assert completion.object == "chat.completion"
        assert completion.choices[0].message.content == "hello from the sdk"
        assert completion.choices[0].finish_reason == "stop"
        assert completion.usage.completion_tokens == 4

    async def test_usage_when_the_caller_asked_for_it(self, sdk, api):
        stream = await sdk(api).chat.completions.create(
            model="mock?tokens=3",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [c async for c in stream]
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 3

    async def test_a_disconnect_leaves_the_call_running_to_be_resumed(self, sdk, api):
        raw = await sdk(api).chat.completions.with_raw_response.create(
            model="mock?tokens=200&delay_ms=10", messages=MESSAGES, stream=True
        )
        stream = raw.parse()
        seen = []
        async for chunk in stream:
            seen.append(chunk)
            if len(seen) == 5:
                break
        await stream.close()  # the caller goes away mid-answer
        assert len(seen) == 5
        doc = await api.wait_status(raw.headers["X-Offloadd-Status-Url"], "done", timeout=20)
        assert len(doc["response"]["body"]["choices"][0]["message"]["content"].split()) == 200
        rest = await api.events(
            raw.headers["X-Offloadd-Stream-Url"], headers={"Last-Event-ID": "5"}
        )
        assert rest[0].id == "6" and how_it_ended(rest) == {"status": "done"}

    async def test_a_disconnect_stops_the_call_when_asked(self, sdk, api):
        client = sdk(api, **{"X-Offloadd-Stop-On-Disconnect": "true"})
        raw = await client.chat.completions.with_raw_response.create(
            model="mock?tokens=500&delay_ms=10", messages=MESSAGES, stream=True
        )
        stream = raw.parse()
        async for _ in stream:
            break
        await stream.close()
        doc = await api.wait_status(raw.headers["X-Offloadd-Status-Url"], "stopped", "done")
        assert doc["status"] == "stopped"

    async def test_upstream_errors_as_the_sdk_expects_them(self, sdk, api):
        with pytest.raises(openai.RateLimitError) as raised:
            await sdk(api).chat.completions.create(model="mock?status=429", messages=MESSAGES)
        assert raised.value.status_code == 429
        stream = await sdk(api).chat.completions.create(
            model="mock?tokens=20&disconnect_after=4", messages=MESSAGES, stream=True
        )
        with pytest.raises(openai.APIError, match="upstream"):
            async for _ in stream:
                pass

    async def test_bad_input_is_the_sdks_bad_request(self, sdk, api):
        with pytest.raises(openai.BadRequestError):
            await sdk(api).chat.completions.create(model="mock", messages=[])


class TestWithKeys:
    async def test_the_sdks_api_key_is_the_offloadd_key(self, sdk, make_api, data_dir):
        key = make_key(data_dir)
        api = await make_api(auth=True)
        completion = await sdk(api, key).chat.completions.create(
            model="mock?tokens=2", messages=MESSAGES
        )
        assert completion.choices[0].message.content == "t0 t1"
        with pytest.raises(openai.AuthenticationError):
            await sdk(api, "ofd-wrong").chat.completions.create(model="mock", messages=MESSAGES)


async def test_the_sync_sdk_too(api):
    def run() -> str:
        client = openai.OpenAI(
            base_url=str(api.client.make_url("/v1")),
            api_key="unused",
            max_retries=0,
            default_headers={"X-OpenAI-API-Key": OPENAI_KEY},
        )
        stream = client.chat.completions.create(
            model="mock?tokens=4", messages=MESSAGES, stream=True
        )
        return "".join(c.choices[0].delta.content or "" for c in stream)

    assert (await asyncio.to_thread(run)).split() == ["t0", "t1", "t2", "t3"]
