"""A hostile world: upstreams that lie, URLs and headers that are not what they seem.
Whatever comes, every request ends with a final status, nothing leaks, nothing is a 5xx."""

from __future__ import annotations

import base64

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import (
    OPENAI_KEY,
    SEED_BODY,
    Api,
    eventually,
    file_of,
    files_under,
    how_it_ended,
)
from hostile_upstream import chunk, model
from offloadd.protocol.sse import parse_all

FUZZ = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


async def _ended(api: Api, script: dict, **fields) -> tuple[dict, bytes]:
    """Run one scripted request to its end; its final status document and its stream."""
    urls = (await api.create(model=model(script), **fields))["endpoints"]
    raw = await api.stream(urls["stream_events_url"])
    events = parse_all(raw)
    final = how_it_ended(events)
    doc = await api.status(urls["status_url"])
    assert doc["status"] == final["status"] and doc["status"] in ("done", "error", "stopped")
    return doc, raw


class TestLyingChunks:
    async def test_a_null_index_beside_index_0_still_ends(self, hostile):
        lines = [chunk("a", index=0), chunk("b", index=None), chunk("c", index=0), "data: [DONE]"]
        doc, _ = await _ended(hostile, {"lines": lines})
        assert doc["status"] == "done"
        assert doc["response"]["body"]["choices"][0]["message"]["content"] == "abc"

    async def test_a_huge_tool_call_index_does_not_grow_the_document(self, hostile):
        call = {"index": 300000, "id": "t", "function": {"name": "f", "arguments": "{}"}}
        body = {"choices": [{"index": 0, "delta": {"tool_calls": [call]}}]}
        doc, raw = await _ended(hostile, {"lines": ["data: " + orjson.dumps(body).decode()]})
        assert len(orjson.dumps(doc)) < 4 * 1024 + len(raw)
        [tool] = doc["response"]["body"]["choices"][0]["message"]["tool_calls"]
        assert tool["function"] == {"name": "f", "arguments": "{}"}

    @pytest.mark.parametrize(
        "body",
        [
            {"choices": "nope"},
            {"choices": [1, None, "x"]},
            {"choices": [{"delta": "text"}]},
            {"choices": [{"index": True, "delta": {"tool_calls": "x"}}]},
            {"choices": [{"delta": {"tool_calls": [1, {"index": "a", "function": 5}]}}]},
            {"choices": [{"logprobs": [1], "finish_reason": 7, "delta": {"content": 5}}]},
            {"usage": "lots", "model": {"x": 1}, "id": [1]},
        ],
    )
    async def test_chunks_of_the_wrong_shape_end_the_request(self, hostile, body):
        lines = ["data: " + orjson.dumps(body).decode(), chunk("ok"), "data: [DONE]"]
        doc, _ = await _ended(hostile, {"lines": lines})
        assert doc["status"] == "done"

    @FUZZ
    @given(st.lists(JSON, min_size=1, max_size=4))
    async def test_any_json_ends_with_a_final_status(self, hostile, bodies):
        lines = ["data: " + orjson.dumps(b).decode() for b in bodies] + ["data: [DONE]"]
        await _ended(hostile, {"lines": lines})

    @FUZZ
    @given(st.binary(max_size=300), st.sampled_from(["close", None]))
    async def test_any_bytes_end_with_a_final_status(self, hostile, raw, then):
        script = {"lines": [chunk("first")], "raw": base64.b64encode(raw).decode(), "then": then}
        await _ended(hostile, script)

    async def test_integers_beyond_64_bits_end_the_request(self, hostile):
        lines = [chunk("a"), 'data: {"choices":[{"index":1' + "0" * 30 + "}]}", "data: [DONE]"]
        doc, _ = await _ended(hostile, {"lines": lines})
        assert doc["response"]["body"]["choices"][0]["message"]["content"] == "a"

    async def test_a_stall_ends_within_the_timeout(self, hostile):
        doc, _ = await _ended(hostile, {"lines": [chunk("x")], "then": "hang"}, timeout=5)
        assert doc["error"]["code"] == "upstream_timeout"


class TestTheKeyNeverLeaks:
    async def test_an_upstream_echoing_the_key_in_chunks_and_headers(self, hostile, data_dir):
        lines = [chunk("your key is $KEY"), "data: not json, and $KEY", "data: [DONE]"]
        doc, raw = await _ended(hostile, {"lines": lines, "echo_key": True})
        assert doc["status"] == "error" and doc["error"]["code"] == "upstream_bad_chunk"
        assert doc["response"]["headers"]["x-request-id"].startswith("req-")
        served = raw + orjson.dumps(doc)
        on_disk = b"".join(p.read_bytes() for p in files_under(data_dir))
        for text in (served, on_disk):
            assert OPENAI_KEY.encode() not in text
            assert OPENAI_KEY[:12].encode() not in text  # not even its prefix

    async def test_info_shows_no_credentials_of_the_upstream_url(self, make_client):
        client = await make_client(upstream_url="http://user:pass@127.0.0.1:9/v1?key=secret")
        info = await (await client.get("/v1/info")).json()
        assert info["upstream"] == "http://127.0.0.1:9/v1"


PRIVATE_WEBHOOKS = [
    "http://１２７.０.０.１:{port}/",  # fullwidth digits, made 127.0.0.1 by the URL library
    "http://127.1:{port}/",
    "http://2130706433:{port}/",
    "http://[::ffff:127.0.0.1]:{port}/",
    "http://[::127.0.0.1]:{port}/",  # IPv4-compatible
    "http://[64:ff9b::7f00:1]:{port}/",  # NAT64
    "http://[::ffff:0:7f00:1]:{port}/",  # IPv4-translated
    "http://[2002:7f00:1::]:{port}/",  # 6to4
    "http://[fe80::1%25eth0]:{port}/",
    "http://localhost:{port}/",  # a name resolving to loopback
]


class TestWebhooksReachOnlyPublicAddresses:
    @pytest.mark.parametrize("url", PRIVATE_WEBHOOKS)
    async def test_no_form_of_a_private_address_is_reached(self, make_api, aiohttp_server, url):
        from aiohttp import web

        hits = []

        async def listener(request):
            hits.append(request.path)
            return web.Response()

        app = web.Application()
        app.router.add_post("/", listener)
        server = await aiohttp_server(app)
        api = await make_api(allow_private_webhooks=False, webhook_max_seconds=0.5)
        resp = await api.client.post(
            "/v1/stream-chatgpt",
            json={
                **SEED_BODY,
                "model": "mock?tokens=2",
                "webhook_url": url.format(port=server.port),
            },
            headers={"X-OpenAI-API-Key": OPENAI_KEY},
        )
        if resp.status == 200:  # a name: refused when it resolves, at connect time
            urls = (await resp.json())["endpoints"]
            doc = await api.wait_status(urls["status_url"], "done")
            webhook = await _webhook_outcome(api, urls["status_url"])
            assert webhook["last_status_code"] is None and doc["status"] == "done"
        else:
            assert resp.status == 400
            assert (await resp.json())["error"]["code"] == "forbidden_webhook_url"
        assert hits == []


async def _webhook_outcome(api: Api, status_url: str) -> dict:
    async def settled() -> dict:
        webhook = (await api.status(status_url)).get("webhook") or {}
        assert webhook.get("status") in ("failed", "delivered"), f"webhook: {webhook}"
        return webhook

    return await eventually(settled)


URLISH = st.one_of(
    st.text(max_size=40),
    st.builds(
        lambda host, port: f"http://{host}:{port}/",
        st.text(max_size=12),
        st.one_of(st.integers(-5, 10**6).map(str), st.text(max_size=5)),
    ),
    st.sampled_from(
        ["http://[::1", "http://a\r\nb/", "http://h:99999/", "http://h:abc/", "http://ä.ß/"]
    ),
)


def _is_json_error(status: int, body: bytes) -> None:
    assert status < 500, body
    if status >= 400:
        assert orjson.loads(body)["status"] == "error"


class TestNoClientInputIsA5xx:
    @FUZZ
    @given(URLISH, URLISH)
    async def test_webhook_and_from_status_urls(self, api, webhook, earlier):
        for field, value in (("webhook_url", webhook), ("from_status_url", earlier)):
            resp = await api.client.post(
                "/v1/stream-chatgpt",
                json={**SEED_BODY, "model": "mock?tokens=1", field: value},
                headers={"X-OpenAI-API-Key": OPENAI_KEY},
            )
            _is_json_error(resp.status, await resp.read())

    @FUZZ
    @given(st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=60))
    async def test_forwarded_host_and_last_event_id(self, api, value):
        resp = await api.client.post(
            "/v1/stream-chatgpt",
            json={**SEED_BODY, "model": "mock?tokens=1"},
            headers={
                "X-OpenAI-API-Key": OPENAI_KEY,
                "X-Forwarded-Host": value.encode("utf-8").decode("latin-1"),
            },
        )
        _is_json_error(resp.status, await resp.read())
        if resp.status == 200:
            url = (await resp.json())["endpoints"]["stream_events_url"]
            read = await api.get(url, headers={"Last-Event-ID": value.encode().decode("latin-1")})
            _is_json_error(read.status, await read.read())

    async def test_last_event_ids_that_are_not_ours_read_from_the_start(self, api):
        urls = (await api.create(model="mock?tokens=2"))["endpoints"]
        whole = await api.stream(urls["stream_events_url"])
        for value in ("9" * 5000, "²", "-1", "1e3"):
            got = await api.stream(urls["stream_events_url"], params={"last_event_id": value})
            assert got == whole


class TestForwardedHeaders:
    async def test_are_believed_only_from_the_addresses_named(self, make_api):
        api = await make_api(forwarded_allow_ips=())
        answer = await api.create(
            headers={"X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "javascript"}
        )
        assert answer["endpoints"]["status_url"].startswith(str(api.client.make_url("/")))
        trusting = await make_api(forwarded_allow_ips=("127.0.0.1",))
        answer = await trusting.create(
            headers={"X-Forwarded-Host": "offloadd.example", "X-Forwarded-Proto": "javascript"}
        )
        assert answer["endpoints"]["status_url"].startswith("http://offloadd.example/")


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs, to fill up for real."""
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)])
    if done.returncode != 0:
        pytest.skip("mounting a tmpfs is not allowed here (needs root or CAP_SYS_ADMIN)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


class TestAFullDisk:
    async def test_ends_storage_error_then_reaches_its_final_state_once_space_is_back(
        self, small_disk, make_api
    ):
        import asyncio

        data = small_disk / "data"
        api = await make_api(data=data, orphan_sweep_seconds=0.2)
        filler = small_disk / "filler"
        filler.write_bytes(b"x" * (1024 * 1024 - 160 * 1024))  # leave ~160 KiB
        urls = (await api.create(model="mock?tokens=100000&delay_ms=0"))["endpoints"]
        reader = asyncio.create_task(api.events(urls["stream_events_url"]))
        doc = await api.wait_status(urls["status_url"], "error", "done", timeout=30)
        assert doc["error"]["code"] == "storage_error"

        before = files_under(data)  # a create on the full disk: 503, nothing left behind
        resp = await api.client.post(
            "/v1/stream-chatgpt", json=SEED_BODY, headers={"X-OpenAI-API-Key": OPENAI_KEY}
        )
        assert resp.status == 503
        assert (await resp.json())["error"]["code"] == "storage_unavailable"
        assert files_under(data) == before

        filler.unlink()  # space is back: the final state is written, the reader released
        events = await asyncio.wait_for(reader, 15)
        assert how_it_ended(events)["error"]["code"] == "storage_error"
        on_disk = file_of(data, urls["status_url"])  # the document follows at the next retry
        await eventually(lambda: orjson.loads(on_disk.read_bytes())["status"] == "error")


class TestIdempotencyKey:
    async def test_a_retry_gets_the_first_answer_and_no_second_model_call(self, api):
        headers = {"Idempotency-Key": "order-42"}
        first = await api.create(model="mock?tokens=3", headers=headers)
        again = await api.create(model="mock?tokens=3", headers=headers)
        assert again == first
        assert len(await api.upstream_requests()) == 1
        other = await api.create(model="mock?tokens=3", headers={"Idempotency-Key": "order-43"})
        assert other["conversation_id"] != first["conversation_id"]

    async def test_a_private_retry_gets_a_token_that_opens_it(self, api, data_dir):
        headers = {"Idempotency-Key": "private-1"}
        first = await api.create(model="mock?tokens=3", access="private", headers=headers)
        again = await api.create(model="mock?tokens=3", access="private", headers=headers)
        assert again == first
        token = again["authorization"]["bearer_token"]
        auth = {"Authorization": f"Bearer {token}"}
        resp = await api.get(again["endpoints"]["status_url"], headers=auth)
        assert resp.status == 200
        on_disk = b"".join(p.read_bytes() for p in data_dir.rglob("*") if p.is_file())
        assert token.encode() not in on_disk  # only its hash is kept

    async def test_the_same_key_with_another_body_is_refused(self, api):
        await api.create(model="mock?tokens=3", headers={"Idempotency-Key": "k"})
        resp = await api.client.post(
            "/v1/stream-chatgpt",
            json={**SEED_BODY, "model": "mock?tokens=4"},
            headers={"X-OpenAI-API-Key": OPENAI_KEY, "Idempotency-Key": "k"},
        )
        assert resp.status == 422
        assert (await resp.json())["error"]["code"] == "idempotency_key_reused"


class TestAnyCreateBody:
    @FUZZ
    @given(st.dictionaries(st.text(max_size=20), JSON, max_size=6), st.booleans())
    async def test_is_an_answer_or_a_json_error_never_a_5xx(self, api, fields, with_messages):
        body = {**fields, "model": "mock?tokens=1"}
        if with_messages:
            body.setdefault("messages", [{"role": "user", "content": "x"}])
        for path in ("/v1/stream-chatgpt", "/v1/chat/completions", "/v1/responses"):
            resp = await api.client.post(path, json=body, headers={"X-OpenAI-API-Key": OPENAI_KEY})
            _is_json_error(resp.status, await resp.read())
