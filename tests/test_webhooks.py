"""Webhooks: signed, retried with backoff, and never aimed at private addresses unless allowed."""

from __future__ import annotations

import hashlib
import hmac

import orjson
import pytest
from aiohttp import web

from helpers import eventually

SECRET = "webhook-test-secret"


class Receiver:
    """A webhook receiver that fails its first `failures` deliveries."""

    def __init__(self, failures: int = 0):
        self.failures = failures
        self.received: list[tuple[bytes, dict]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append((await request.read(), dict(request.headers)))
        if len(self.received) <= self.failures:
            return web.Response(status=500)
        return web.Response(text="ok")


@pytest.fixture
def receiver():
    return Receiver(failures=1)


@pytest.fixture
async def hook_url(aiohttp_server, receiver):
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    server = await aiohttp_server(app)
    return str(server.make_url("/hook?secret=abc"))


async def _wait_webhook(api, status_url: str, *states: str) -> dict:
    async def reached() -> dict:
        doc = await api.status(status_url)
        webhook = doc.get("webhook", {})
        assert webhook.get("status") in states, f"webhook {webhook}, waiting for {states}"
        return doc

    return await eventually(reached)


class TestDelivery:
    async def test_signed_and_retried_after_a_500(self, make_api, receiver, hook_url):
        api = await make_api(
            allow_private_webhooks=True, webhook_secret=SECRET, webhook_backoff=0.05
        )
        urls = (await api.create(model="mock?tokens=3", webhook_url=hook_url))["endpoints"]
        doc = await _wait_webhook(api, urls["status_url"], "delivered")
        assert len(receiver.received) == 2
        webhook = doc["webhook"]
        assert webhook["attempts"] == 2 and webhook["last_status_code"] == 200
        assert "secret=abc" not in webhook["url"]
        for body, headers in receiver.received:
            expected = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
            assert headers["X-Offloadd-Signature"] == f"sha256={expected}"
            payload = orjson.loads(body)
            assert payload["response"]["status"] == "done"
            assert payload["response"]["response"]["body"]["choices"][0]["message"]["content"] == (
                "t0 t1 t2"
            )

    @pytest.mark.parametrize(
        "model", ["mock?status=500", "mock?tokens=500&delay_ms=20"], ids=["error", "stopped"]
    )
    async def test_fires_for_errors_and_stops_too(self, make_api, receiver, hook_url, model):
        receiver.failures = 0
        api = await make_api(allow_private_webhooks=True, webhook_secret=SECRET)
        urls = (await api.create(model=model, webhook_url=hook_url))["endpoints"]
        await api.get(urls["stop_url"])
        await _wait_webhook(api, urls["status_url"], "delivered")
        [(body, _)] = receiver.received
        assert orjson.loads(body)["response"]["status"] in ("error", "stopped")

    async def test_gives_up_after_the_bounded_time(self, make_api, receiver, hook_url):
        receiver.failures = 1000
        api = await make_api(
            allow_private_webhooks=True, webhook_backoff=0.05, webhook_max_seconds=0.3
        )
        urls = (await api.create(model="mock?tokens=1", webhook_url=hook_url))["endpoints"]
        doc = await _wait_webhook(api, urls["status_url"], "failed")
        assert 2 <= doc["webhook"]["attempts"] == len(receiver.received) <= 5
        assert doc["webhook"]["last_status_code"] == 500

    async def test_the_secret_is_made_once_and_shown_by_the_cli(
        self, make_api, receiver, hook_url, data_dir
    ):
        from click.testing import CliRunner

        from offloadd import cli

        receiver.failures = 0
        api = await make_api(allow_private_webhooks=True)
        urls = (await api.create(model="mock?tokens=1", webhook_url=hook_url))["endpoints"]
        await _wait_webhook(api, urls["status_url"], "delivered")
        secret = CliRunner().invoke(cli.main, ["webhook-secret", "--data", str(data_dir)])
        secret = secret.output.strip().encode()
        [(body, headers)] = receiver.received
        expected = hmac.new(secret, body, hashlib.sha256).hexdigest()
        assert headers["X-Offloadd-Signature"] == f"sha256={expected}"
        assert (data_dir / "webhook-secret").stat().st_mode & 0o777 == 0o600


class TestPrivateAddressesRefused:
    async def test_a_loopback_literal_is_refused_at_create(self, api, hook_url, data_dir):
        resp = await api.client.post(
            "/v1/stream-chatgpt",
            json={"messages": [{"role": "user", "content": "x"}], "webhook_url": hook_url},
            headers={"X-OpenAI-API-Key": "sk-x"},
        )
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "forbidden_webhook_url"

    async def test_a_name_resolving_to_loopback_is_never_contacted(
        self, make_api, receiver, hook_url
    ):
        api = await make_api(webhook_backoff=0.05, webhook_max_seconds=0.2)
        via_name = hook_url.replace("127.0.0.1", "localhost")
        urls = (await api.create(model="mock?tokens=1", webhook_url=via_name))["endpoints"]
        doc = await _wait_webhook(api, urls["status_url"], "failed")
        assert receiver.received == []
        assert "private" in doc["webhook"]["last_error"]

    @pytest.mark.parametrize(
        "url",
        ["ftp://example.com/x", "not a url", "http:///nohost"],
        ids=["ftp", "garbage", "no-host"],
    )
    async def test_malformed_urls_are_400(self, api, url):
        resp = await api.client.post(
            "/v1/stream-chatgpt",
            json={"messages": [{"role": "user", "content": "x"}], "webhook_url": url},
            headers={"X-OpenAI-API-Key": "sk-x"},
        )
        assert resp.status == 400
