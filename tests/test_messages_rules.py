"""/v1/messages under the rules every create endpoint keeps: bad input refused in
Anthropic's error shape with nothing left behind, keys, and the rest of offloadd (private
access, idempotency, continuations, webhooks, budgets) through the official SDK."""

from __future__ import annotations

import anthropic
import pytest

from helpers import ANTHROPIC_KEY, HI, eventually, files_under


@pytest.fixture(autouse=True)
def _no_sdk_environment(no_sdk_environment):
    """The SDK reads ANTHROPIC_* variables even with explicit arguments."""


class TestBadInput:
    @pytest.mark.parametrize(
        "body, where",
        [
            ([1, 2], "JSON object"),
            ({"max_tokens": 10, "messages": HI}, "model"),
            ({"model": 7, "max_tokens": 10, "messages": HI}, "model"),
            ({"model": "mock", "messages": HI}, "max_tokens"),
            ({"model": "mock", "max_tokens": -1, "messages": HI}, "max_tokens"),
            ({"model": "mock", "max_tokens": 10**12, "messages": HI}, "max_tokens"),
            ({"model": "mock", "max_tokens": "100", "messages": HI}, "max_tokens"),
            ({"model": "mock", "max_tokens": True, "messages": HI}, "max_tokens"),
            ({"model": "mock", "max_tokens": 10, "messages": []}, "messages"),
            ({"model": "mock", "max_tokens": 10, "messages": "hi"}, "messages"),
            ({"model": "mock", "max_tokens": 10, "messages": [{"role": "bot"}]}, "role"),
            (
                {
                    "model": "mock",
                    "max_tokens": 10,
                    "messages": [{"role": "user", "content": [{"type": "foo"}]}],
                },
                "messages.0.content.0.type: unknown content block type 'foo'",
            ),
            (
                {"model": "mock", "max_tokens": 10, "messages": [{"role": "user", "content": 5}]},
                "content",
            ),
            ({"model": "mock", "max_tokens": 10, "messages": HI, "system": 5}, "system"),
            ({"model": "mock", "max_tokens": 10, "messages": HI, "tools": [1]}, "tools"),
            ({"model": "mock", "max_tokens": 10, "messages": HI, "stream": "yes"}, "stream"),
            (
                {"model": "mock", "max_tokens": 10, "messages": HI, "stop_sequences": [1]},
                "stop_sequences",
            ),
            ({"model": "mock", "max_tokens": 10, "messages": HI, "timeout": 10**6}, "timeout"),
        ],
    )
    async def test_a_400_in_anthropics_shape_and_nothing_left(self, api, data_dir, body, where):
        resp = await api.client.post("/v1/messages", json=body, headers={"x-api-key": "k"})
        assert resp.status == 400
        answer = await resp.json()
        assert answer["type"] == "error" and answer["error"]["type"] == "invalid_request_error"
        assert where in answer["error"]["message"]
        assert files_under(data_dir) == [] and await api.upstream_requests() == []

    async def test_the_sdk_raises_its_bad_request(self, claude, api):
        with pytest.raises(anthropic.BadRequestError) as raised:
            await claude(api).messages.create(
                model="mock", max_tokens=10, messages=[{"role": "user", "content": [{"type": "x"}]}]
            )
        assert raised.value.type == "invalid_request_error"
        assert raised.value.error_code == "invalid_messages"

    async def test_a_body_over_max_body_is_anthropics_413(self, make_api, claude, data_dir):
        api = await make_api(max_body_bytes=2000)
        big = [{"role": "user", "content": "x" * 5000}]
        with pytest.raises(anthropic.RequestTooLargeError) as raised:
            await claude(api, max_retries=0).messages.create(
                model="mock", max_tokens=10, messages=big
            )
        assert raised.value.type == "request_too_large"
        assert files_under(data_dir) == [] and await api.upstream_requests() == []


class TestKeys:
    async def test_auth_on_the_sdks_key_is_offloadds_and_claudes_has_its_header(
        self, make_api, claude, data_dir, tmp_path
    ):
        from helpers import make_key
        from offloadd.keys.base import load_plans
        from offloadd.keys.sqlite import SQLiteKeys

        plans = tmp_path / "plans.json"
        plans.write_text('{"tokens": {"monthly_tokens": 1000}}')
        key = make_key(data_dir, plan="tokens", plans=plans)
        api = await make_api(auth=True, plans_file=plans)
        headers = {"X-Anthropic-API-Key": ANTHROPIC_KEY}
        client = claude(api, key, default_headers=headers)
        message = await client.messages.create(model="mock?tokens=5", max_tokens=10, messages=HI)
        assert message.content[0].text == "t0 t1 t2 t3 t4"
        with pytest.raises(anthropic.AuthenticationError):
            await claude(api, "ofd-wrong", default_headers=headers).messages.create(
                model="mock", max_tokens=10, messages=HI
            )
        with pytest.raises(anthropic.AuthenticationError, match="X-Anthropic-API-Key"):
            await claude(api, key).messages.create(model="mock", max_tokens=10, messages=HI)
        with pytest.raises(anthropic.BadRequestError):  # bad input is not charged
            await client.messages.create(model="mock", max_tokens=-5, messages=HI)

        def usage() -> list:
            return SQLiteKeys(data_dir, load_plans(plans)).usage()

        # tokens are counted once the request has ended
        rows = await eventually(lambda: (rows := usage()) and rows[0]["tokens"] and rows)
        assert rows[0]["requests"] == 1
        assert (rows[0]["tokens"], rows[0]["estimated_tokens"]) == (15, 0)  # 10 in, 5 out


class TestTheRestOfOffloadd:
    async def test_a_conversation_continues_from_its_status_url(self, claude, api):
        first = await claude(api).messages.with_raw_response.create(
            model="mock", max_tokens=10, messages=HI
        )
        url = first.headers["X-Offloadd-Status-Url"]
        again = [{"role": "user", "content": "and then"}]
        second = await claude(api).messages.create(
            model="mock", max_tokens=10, messages=again, extra_body={"from_status_url": url}
        )
        assert second.content[0].text == "and then"
        sent = (await api.upstream_requests())[-1]["body"]["messages"]
        assert [m["role"] for m in sent] == ["user", "assistant", "user"]
        assert sent[1]["content"] == [{"type": "text", "text": "hello claude over there"}]
        chat = await api.create(path="/v1/async-chatgpt", model="mock")
        await api.wait_status(chat["endpoints"]["status_url"], "done")
        with pytest.raises(anthropic.BadRequestError, match="another API"):
            await claude(api).messages.create(
                model="mock",
                max_tokens=10,
                messages=again,
                extra_body={"from_status_url": chat["endpoints"]["status_url"]},
            )

    async def test_info_and_the_browsers_preflight_know_it(self, make_api):
        api = await make_api(create_cors_origins=("https://app.example",))
        info = await (await api.client.get("/v1/info")).json()
        assert "POST /v1/messages" in info["create"]
        assert info["anthropic_upstream"] == str(api.mock.make_url("")).rstrip("/")
        resp = await api.client.options(
            "/v1/messages",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "x-api-key, anthropic-version",
            },
        )
        assert resp.status == 204
        allowed = resp.headers["Access-Control-Allow-Headers"].lower()
        assert "anthropic-version" in allowed and "x-anthropic-api-key" in allowed

    async def test_a_webhook_gets_the_final_document(self, claude, make_api, aiohttp_server):
        from aiohttp import web

        got: list = []

        async def hook(request):
            got.append(await request.json())
            return web.Response()

        app = web.Application()
        app.router.add_post("/hook", hook)
        receiver = await aiohttp_server(app)
        api = await make_api(allow_private_webhooks=True)
        await claude(api).messages.create(
            model="mock?tokens=2",
            max_tokens=10,
            messages=HI,
            extra_body={"webhook_url": str(receiver.make_url("/hook"))},
        )
        await eventually(lambda: got)
        doc = got[0]["response"]
        assert doc["status"] == "done" and doc["response"]["body"]["content"][0]["text"] == "t0 t1"
