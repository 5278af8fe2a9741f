"""The mock upstream on its own, as any OpenAI client would use it."""

from __future__ import annotations

import orjson

from offloadd.protocol.sse import parse_all

AUTH = {"Authorization": "Bearer sk-anything"}
HELLO = {"messages": [{"role": "user", "content": "hello mock world"}]}


class TestMockUpstream:
    async def test_missing_authorization_is_401(self, aiohttp_client, mock_server):
        client = await aiohttp_client(mock_server)
        resp = await client.post("/v1/chat/completions", json=HELLO)
        assert resp.status == 401
        assert "error" in await resp.json()

    async def test_streams_the_last_user_message_word_by_word_then_usage(
        self, aiohttp_client, mock_server
    ):
        client = await aiohttp_client(mock_server)
        resp = await client.post(
            "/v1/chat/completions", json={**HELLO, "stream": True}, headers=AUTH
        )
        chunks = [orjson.loads(e.data) for e in parse_all(await resp.read())[:-1]]
        words = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
        assert words == ["", "hello", " mock", " world", None]
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3

    async def test_tokens_and_stamp(self, aiohttp_client, mock_server):
        client = await aiohttp_client(mock_server)
        resp = await client.post(
            "/v1/chat/completions",
            json={**HELLO, "stream": True, "model": "mock?tokens=4&stamp=1&delay_ms=1"},
            headers=AUTH,
        )
        chunks = [orjson.loads(e.data) for e in parse_all(await resp.read())[:-1]]
        stamps = [int(c["choices"][0]["delta"]["content"]) for c in chunks[1:5]]
        assert stamps == sorted(stamps) and len(stamps) == 4

    async def test_non_stream_answers_one_completion(self, aiohttp_client, mock_server):
        client = await aiohttp_client(mock_server)
        resp = await client.post("/v1/chat/completions", json=HELLO, headers=AUTH)
        body = await resp.json()
        assert body["object"] == "chat.completion"
        assert body["choices"][0]["message"]["content"] == "hello mock world"

    async def test_status_switch_answers_an_openai_error(self, aiohttp_client, mock_server):
        client = await aiohttp_client(mock_server)
        resp = await client.post(
            "/v1/chat/completions", json={**HELLO, "model": "mock?status=429"}, headers=AUTH
        )
        assert resp.status == 429
        assert resp.headers["Retry-After"] == "1"
        assert (await resp.json())["error"]["message"]

    async def test_models_and_requests_log(self, aiohttp_client, mock_server):
        client = await aiohttp_client(mock_server)
        models = await (await client.get("/v1/models")).json()
        assert "mock" in [m["id"] for m in models["data"]]
        await client.post("/v1/chat/completions", json=HELLO, headers=AUTH)
        await client.post("/v1/chat/completions", json={**HELLO, "model": "mock?tokens=2"})
        seen = (await (await client.get("/_mock/requests")).json())["requests"]
        assert [s["authorized"] for s in seen] == [True, False]
        assert seen[1]["model"] == "mock?tokens=2"
        assert {"model", "authorized", "client_closed", "chunks_sent"} <= set(seen[0])


class TestMockMessages:
    """The mock's Anthropic Messages API, as Anthropic's own answers (docs/anthropic.md)."""

    BODY = {"model": "mock", "max_tokens": 10, "messages": HELLO["messages"]}
    KEY = {"x-api-key": "sk-ant-anything", "anthropic-version": "2023-06-01"}

    async def test_a_key_and_a_version_are_required(self, aiohttp_client, mock_server):
        client = await aiohttp_client(mock_server)
        no_key = await client.post("/v1/messages", json=self.BODY)
        assert no_key.status == 401
        assert (await no_key.json())["error"]["type"] == "authentication_error"
        no_version = await client.post(
            "/v1/messages", json=self.BODY, headers={"x-api-key": "sk-ant-anything"}
        )
        assert no_version.status == 400 and "anthropic-version" in await no_version.text()
        new = {**self.KEY, "anthropic-version": "2026-10-21"}
        sampled = await client.post("/v1/messages", json={**self.BODY, "top_k": 5}, headers=new)
        assert sampled.status == 400 and "top_k" in await sampled.text()

    async def test_named_events_then_an_overloaded_error_mid_stream(
        self, aiohttp_client, mock_server
    ):
        client = await aiohttp_client(mock_server)
        body = {**self.BODY, "stream": True, "model": "mock?tokens=20&error_after=5"}
        events = parse_all(
            await (await client.post("/v1/messages", json=body, headers=self.KEY)).read()
        )
        names = [e.event for e in events]
        assert names[:3] == ["message_start", "content_block_start", "ping"]
        assert names[-1] == "error" and len(events) == 6
        assert orjson.loads(events[-1].data)["error"]["type"] == "overloaded_error"

    async def test_its_statuses_are_anthropics(self, aiohttp_client, mock_server):
        client = await aiohttp_client(mock_server)
        body = {**self.BODY, "model": "mock?status=529"}
        resp = await client.post("/v1/messages", json=body, headers=self.KEY)
        assert resp.status == 529
        assert (await resp.json())["error"] == {"type": "overloaded_error", "message": "Overloaded"}
