"""Health, metrics and the access log, as an operator reads them."""

from __future__ import annotations

import logging
import re

import orjson
import pytest


async def _metrics(api) -> dict[str, float]:
    resp = await api.client.get("/metrics")
    assert resp.status == 200 and resp.content_type == "text/plain"
    values = {}
    for line in (await resp.text()).splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


class TestHealth:
    async def test_healthz_is_cheap_and_says_ok(self, api):
        resp = await api.client.get("/healthz")
        body = await resp.json()
        assert resp.status == 200 and body["status"] == "ok" and body["running"] == 0
        assert await api.upstream_requests() == []  # no upstream call


class TestMetrics:
    async def test_counts_what_happened(self, api):
        ok = (await api.create(model="mock?tokens=3"))["endpoints"]
        await api.stream(ok["stream_events_url"])
        bad = (await api.create(model="mock?status=500"))["endpoints"]
        await api.stream(bad["stream_events_url"])
        await api.client.post(
            "/v1/stream-chatgpt",
            data=b"{",
            headers={"Content-Type": "application/json", "X-OpenAI-API-Key": "sk-x"},
        )
        m = await _metrics(api)
        created = 'offloadd_requests_created_total{endpoint="/v1/stream-chatgpt",outcome='
        assert m[created + '"accepted"}'] == 2
        assert m[created + '"invalid_json"}'] == 1
        finished = 'offloadd_requests_finished_total{endpoint="/v1/stream-chatgpt",status='
        assert m[finished + '"done"}'] == 1 and m[finished + '"error"}'] == 1
        assert m['offloadd_upstream_errors_total{code="upstream_server_error"}'] == 1
        assert m["offloadd_running_requests"] == 0
        assert m["offloadd_connected_readers"] == 0
        # 3 tokens: role chunk + 3 + finish + done = 6 events; the failed one: error + done.
        # Both streams were read whole once.
        assert m["offloadd_delivered_events_total"] == 6 + 2
        assert m["offloadd_delivered_bytes_total"] > 500
        assert m['offloadd_upstream_ttft_seconds_bucket{le="+Inf"}'] == 1
        assert m["offloadd_upstream_ttft_seconds_count"] == 1

    async def test_readers_are_counted_while_connected(self, api):
        urls = (await api.create(model="mock?tokens=200&delay_ms=20"))["endpoints"]
        resp = await api.get(urls["stream_events_url"])
        await resp.content.readuntil(b"id: 1\n")
        assert (await _metrics(api))["offloadd_connected_readers"] == 1
        assert (await _metrics(api))["offloadd_running_requests"] == 1
        await api.get(urls["stop_url"])
        await resp.read()


class TestAccessLog:
    async def test_one_json_line_per_request_without_query(self, api, caplog):
        from offloadd.server.logs import AccessLogger

        urls = (await api.create(model="mock?tokens=2", access="private"))["endpoints"]
        logger = AccessLogger(logging.getLogger("offloadd.access"), "")
        caplog.set_level(logging.INFO, logger="offloadd.access")

        class Req:
            remote, method = "127.0.0.1", "GET"
            rel_url = __import__("yarl").URL(urls["stream_events_url"] + "?token=SECRET").relative()

        class Resp:
            status, body_length = 200, 123

        logger.log(Req(), Resp(), 0.5)
        [record] = caplog.records
        line = orjson.loads(record.getMessage())
        assert line["path"].endswith(".txt") and "SECRET" not in record.getMessage()
        assert re.fullmatch(r"GET", line["method"]) and line["status"] == 200
        assert "offset" not in line

    @pytest.mark.parametrize(
        ("offset", "logged"),
        [
            ("0000000000000000_0000000000000042", True),
            ("-1", True),
            ("now", True),
            ("SECRET", False),
            ("0000000000000000_00000000000000SECRET", False),
        ],
    )
    async def test_an_offset_of_ours_is_logged_nothing_else(self, caplog, offset, logged):
        """What a cache in front lets through, per offset (docs/deployment-cache.md)."""
        from offloadd.server.logs import AccessLogger

        logger = AccessLogger(logging.getLogger("offloadd.access"), "")
        caplog.set_level(logging.INFO, logger="offloadd.access")
        url = f"/1/r/pub/x.txt?token=SECRET&offset={offset}&live=long-poll&cursor=7"

        class Req:
            remote, method = "127.0.0.1", "GET"
            rel_url = __import__("yarl").URL(url)

        class Resp:
            status, body_length = 200, 1

        logger.log(Req(), Resp(), 0.5)
        [record] = caplog.records
        assert orjson.loads(record.getMessage()).get("offset") == (offset if logged else None)
        assert "SECRET" not in record.getMessage()
