"""Upstream faults end that one request in `error` with a reason; the server keeps serving."""

from __future__ import annotations

import socket

import pytest

from helpers import how_it_ended

FAULTS = [
    pytest.param("mock?status=401", "upstream_unauthorized", 401, id="401"),
    pytest.param("mock?status=429", "upstream_rate_limited", 429, id="429"),
    pytest.param("mock?status=500", "upstream_server_error", 500, id="500"),
    pytest.param("mock?status=502", "upstream_server_error", 502, id="502"),
    pytest.param("mock?status=503", "upstream_server_error", 503, id="503"),
    pytest.param("mock?tokens=20&disconnect_after=5", "upstream_disconnected", None, id="drop"),
    pytest.param("mock?tokens=20&garbage_after=5", "upstream_bad_chunk", None, id="garbage"),
]


async def _ends_in_error(api, urls) -> dict:
    final = how_it_ended(await api.events(urls["stream_events_url"]))
    assert final["status"] == "error"
    doc = await api.status(urls["status_url"])
    assert doc["status"] == "error"
    assert doc["error"] == final["error"]
    return doc


class TestUpstreamFaults:
    @pytest.mark.parametrize(("model", "code", "upstream_status"), FAULTS)
    async def test_fault_ends_the_request_in_error(self, api, model, code, upstream_status):
        urls = (await api.create(model=model))["endpoints"]
        doc = await _ends_in_error(api, urls)
        assert doc["error"]["code"] == code
        assert doc["error"]["upstream_status"] == upstream_status
        assert doc["error"]["message"]
        # ... and the server keeps serving.
        urls = (await api.create(model="mock?tokens=2"))["endpoints"]
        assert (await api.wait_status(urls["status_url"], "done"))["status"] == "done"

    async def test_requests_that_ended_cleanly_share_one_upstream_connection(self, api):
        """A new connection (a TLS handshake, with OpenAI) per request is not needed: after
        `[DONE]` the connection goes back to the pool; after a stop it is closed."""
        for _ in range(3):
            urls = (await api.create(model="mock?tokens=2"))["endpoints"]
            await api.wait_status(urls["status_url"], "done")
        ports = {seen["peer_port"] for seen in await api.upstream_requests()}
        assert len(ports) == 1 and None not in ports

    async def test_upstream_message_is_kept_without_the_key(self, api):
        urls = (await api.create(model="mock?status=401"))["endpoints"]
        doc = await _ends_in_error(api, urls)
        assert doc["error"]["message"].startswith("Incorrect API key provided")
        assert "Zq9offloadd" not in doc["error"]["message"]

    async def test_text_before_a_drop_is_kept(self, api):
        urls = (await api.create(model="mock?tokens=20&disconnect_after=5"))["endpoints"]
        doc = await _ends_in_error(api, urls)
        assert doc["response"]["body"]["choices"][0]["message"]["content"] == "t0 t1 t2 t3"

    async def test_a_stall_past_timeout_ends_in_error(self, api):
        urls = (await api.create(model="mock?tokens=20&stall_after=3", timeout=1))["endpoints"]
        doc = await _ends_in_error(api, urls)
        assert doc["error"]["code"] == "upstream_timeout"
        [seen] = await api.upstream_requests()
        assert seen["client_closed"] is True

    async def test_connection_refused(self, make_api):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        api = await make_api(upstream_url=f"http://127.0.0.1:{port}/v1")
        urls = (await api.create())["endpoints"]
        doc = await _ends_in_error(api, urls)
        assert doc["error"]["code"] == "upstream_unreachable"


class TestRetries:
    async def test_5xx_before_the_first_token_is_retried_a_bounded_number_of_times(self, make_api):
        api = await make_api(upstream_retries=2, upstream_retry_max_wait=0.05)
        urls = (await api.create(model="mock?status=503"))["endpoints"]
        await _ends_in_error(api, urls)
        assert len(await api.upstream_requests()) == 3

    async def test_retry_after_is_honoured(self, make_api):
        api = await make_api(upstream_retries=1, upstream_retry_max_wait=5)
        urls = (await api.create(model="mock?status=429"))["endpoints"]
        await _ends_in_error(api, urls)
        first, second = await api.upstream_requests()
        assert second["received_at"] - first["received_at"] >= 1.0  # the mock's Retry-After: 1

    async def test_a_drop_after_the_first_token_is_not_retried(self, make_api):
        api = await make_api(upstream_retries=2, upstream_retry_max_wait=0.05)
        urls = (await api.create(model="mock?tokens=9&disconnect_after=3"))["endpoints"]
        await _ends_in_error(api, urls)
        assert len(await api.upstream_requests()) == 1
