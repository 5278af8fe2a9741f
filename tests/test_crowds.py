"""Many hands at once, and the Responses surface under a hostile world (issue 22): idempotent
creates raced by a crowd, keys bound to their endpoint, assembly that trusts no index,
private responses found by their token, budgets that no upstream can lift."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import socket
import time

import orjson
import pytest
from click.testing import CliRunner

from helpers import OPENAI_KEY, SEED_BODY, Api, eventually, make_key
from hostile_upstream import chunk, event, make_hostile_app, model
from offloadd import cli
from offloadd.http.app import make_app
from offloadd.http.appkeys import CONFIG


def _post(api: Api, path: str, body: dict, **headers: str):
    return api.client.post(path, json=body, headers={"X-OpenAI-API-Key": OPENAI_KEY, **headers})


JSON_TYPE = {"Content-Type": "application/json"}


class TestIdempotencyUnderACrowd:
    async def test_one_answer_one_call_per_key_however_many_race(self, api):
        async def create(key: str):
            body = {**SEED_BODY, "model": "mock?tokens=2"}
            resp = await _post(api, "/v1/stream-chatgpt", body, **{"Idempotency-Key": key})
            return key, resp.status, await resp.json()

        keys = [f"order-{n}" for n in range(8)]
        results = await asyncio.gather(*(create(k) for k in keys for _ in range(16)))
        assert {status for _, status, _ in results} <= {200, 409}
        for key in keys:
            answers = {orjson.dumps(a) for k, status, a in results if k == key and status == 200}
            assert len(answers) == 1, f"{key} got {len(answers)} different answers"
        assert len(await api.upstream_requests()) == len(keys)

    @pytest.mark.parametrize("other", ["/v1/responses", "/v1/async-chatgpt"])
    async def test_a_key_is_bound_to_its_endpoint(self, api, other):
        first = {**SEED_BODY, "model": "mock?tokens=2"}
        assert (
            await _post(api, "/v1/stream-chatgpt", first, **{"Idempotency-Key": "k"})
        ).status == 200
        body = {**first, "input": "x"} if other == "/v1/responses" else first
        resp = await _post(api, other, body, **{"Idempotency-Key": "k"})
        assert resp.status == 422
        assert (await resp.json())["error"]["code"] == "idempotency_key_reused"
        assert len(await api.upstream_requests()) == 1


async def _response(api: Api, lines: list[str]) -> tuple[int, dict]:
    done = event("response.completed", response={"object": "response", "status": "completed"})
    body = {"model": model({"lines": [*lines, done]}), "input": "x"}
    resp = await _post(api, "/v1/responses", body)
    return resp.status, await resp.json()


class TestResponsesAssemblyTrustsNoIndex:
    def _item(self, content: object) -> str:
        item = {"type": "message", "id": "m", "role": "assistant", "content": content}
        return event("response.output_item.added", output_index=0, item=item)

    async def test_a_huge_content_index_does_not_grow_the_document(self, hostile):
        lines = [
            self._item([]),
            event(
                "response.output_text.delta", output_index=0, content_index=300_000, delta="x" * 200
            ),
        ]
        status, body = await _response(hostile, lines)
        assert status == 200
        assert len(orjson.dumps(body)) < 5_000
        assert body["output"][0]["content"][0]["text"] == "x" * 200

    @pytest.mark.parametrize("index, content", [(-1, []), (0, 5), (0, [7, "x"]), (2, None)])
    async def test_parts_that_cannot_be_placed_are_ignored_not_a_500(self, hostile, index, content):
        lines = [
            self._item(content),
            event("response.output_text.delta", output_index=0, content_index=index, delta="hi"),
        ]
        status, body = await _response(hostile, lines)
        assert status == 200, body
        assert isinstance(body["output"][0]["content"], list)


class TestTheResponsesSurface:
    async def test_from_status_url_on_a_response_is_a_400(self, api):
        earlier = await api.create(model="mock?tokens=1")
        body = {
            "model": "mock",
            "input": "x",
            "from_status_url": earlier["endpoints"]["status_url"],
        }
        resp = await _post(api, "/v1/responses", body)
        assert resp.status == 400
        assert "previous_response_id" in (await resp.json())["error"]["message"]

    async def test_a_private_response_is_found_by_its_token_only(self, api):
        body = {"model": "mock?tokens=300&delay_ms=10", "input": "hi", "access": "private"}
        resp = await _post(api, "/v1/responses", {**body, "background": True})
        assert resp.status == 200
        rid, token = resp.headers["X-Offloadd-Response-Id"], resp.headers["X-Offloadd-Bearer-Token"]
        assert (await api.get(f"/v1/responses/{rid}")).status == 404
        wrong = {"Authorization": "Bearer not-the-token"}
        assert (await api.post(f"/v1/responses/{rid}/cancel", headers=wrong)).status == 404
        for how in (
            {"headers": {"Authorization": f"Bearer {token}"}},
            {"params": {"token": token}},
        ):
            got = await api.get(f"/v1/responses/{rid}", **how)
            assert got.status == 200 and (await got.json())["id"] == rid
        auth = {"Authorization": f"Bearer {token}"}
        cancelled = await api.post(f"/v1/responses/{rid}/cancel", headers=auth)
        assert cancelled.status == 200 and (await cancelled.json())["status"] == "cancelled"

    async def test_previous_response_id_naming_a_chat_conversation_is_404(self, api):
        chat = await api.create(model="mock?tokens=1")
        await api.wait_status(chat["endpoints"]["status_url"], "done")
        *_, y, mo, d, h, mi, sec, name = chat["endpoints"]["status_url"].split("/")
        rid = f"resp_{y}{mo}{d}{h}{mi}{sec}" + name.removesuffix(".json").replace("-", "")
        body = {"model": "mock", "input": "x", "previous_response_id": rid}
        resp = await _post(api, "/v1/responses", body)
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "previous_response_not_found"
        assert len(await api.upstream_requests()) == 1


class TestBudgetsTrustNoSign:
    async def test_a_negative_usage_does_not_lift_a_budget(
        self, aiohttp_server, aiohttp_client, config, data_dir, tmp_path
    ):
        plans = tmp_path / "plans.json"
        plans.write_text('{"tokens": {"monthly_tokens": 30}}')
        key = make_key(data_dir, plan="tokens", plans=plans)
        upstream = await aiohttp_server(make_hostile_app())
        changed = dataclasses.replace(
            config, upstream_url=str(upstream.make_url("/v1")), auth=True, plans_file=plans
        )
        client = await aiohttp_client(make_app(changed))
        usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": -1_000_000}
        lines = [chunk("hi"), chunk(None, usage=usage), "data: [DONE]"]
        headers = {"X-OpenAI-API-Key": OPENAI_KEY, "X-API-Key": key}
        body = {**SEED_BODY, "model": model({"lines": lines})}

        def tokens_counted() -> int:
            result = CliRunner().invoke(cli.main, ["keys", "usage", "--data", str(data_dir)])
            return int(result.output.splitlines()[-1].split()[-2])

        resp = await client.post("/v1/async-chatgpt", json=body, headers=headers)
        assert resp.status == 200
        counted = await eventually(tokens_counted)  # counted once the request has ended
        assert counted > 0  # the estimate, not the upstream's negative figure
        again = await client.post("/v1/async-chatgpt", json=body, headers=headers)
        assert again.status == 429


class TestEveryStreamReaderIsBounded:
    """A reader that never reads costs the same bounded kernel buffer on every endpoint."""

    async def test_stalled_readers_of_the_openai_streams(self, api):
        background = await _post(
            api,
            "/v1/responses",
            {"model": "mock?tokens=8000&delay_ms=0", "input": "x", "background": True},
        )
        rid = background.headers["X-Offloadd-Response-Id"]
        chat = {
            "model": "mock?tokens=8000&delay_ms=0",
            "messages": [{"role": "user", "content": "x"}],
        }
        requests = [
            ("POST", "/v1/chat/completions", orjson.dumps({**chat, "stream": True})),
            (
                "POST",
                "/v1/responses",
                orjson.dumps(
                    {"model": "mock?tokens=8000&delay_ms=0", "input": "x", "stream": True}
                ),
            ),
            ("GET", f"/v1/responses/{rid}?stream=true", b""),
        ]
        stalled = []
        for method, path, body in requests:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", api.client.port))
            _, writer = await asyncio.open_connection(sock=sock)
            head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nX-OpenAI-API-Key: {OPENAI_KEY}\r\n"
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            writer.write(head.encode() + body)
            await writer.drain()
            stalled.append(writer)  # ... and never read
        limit = api.client.app[CONFIG].reader_send_buffer

        def send_buffers() -> list[int]:
            return [
                h.transport.get_extra_info("socket").getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
                for h in api.client.server.runner.server.connections
                if h.transport is not None and h.transport.get_write_buffer_size()
            ]

        await eventually(lambda: len(send_buffers()) >= len(requests))  # all three stuck
        assert max(send_buffers()) <= 2 * limit  # Linux doubles what it is asked for
        for writer in stalled:
            writer.close()


class TestAKeyHeldByADeadCreate:
    async def test_a_pending_record_older_than_a_minute_is_taken_anew(self, api, data_dir):
        """A daemon that died while making a keyed create left its key `pending`: a retry a
        minute later goes ahead (once), instead of a 409 for a day."""
        caller = hashlib.sha256(b"").hexdigest()  # auth off: no caller
        name = hashlib.sha256(f"{caller}\0order-9".encode()).hexdigest()
        body = {**SEED_BODY, "model": "mock?tokens=2"}
        record = {
            "state": "pending",
            "body_sha256": hashlib.sha256(orjson.dumps(body)).hexdigest(),
            "endpoint": "/v1/stream-chatgpt",
            "at": time.time() - 61,
        }
        folder = data_dir / ".offloadd" / "idempotency"
        folder.mkdir(parents=True)
        (folder / name).write_bytes(orjson.dumps(record))
        resp = await api.client.post(
            "/v1/stream-chatgpt",
            data=orjson.dumps(body),
            headers={**JSON_TYPE, "X-OpenAI-API-Key": OPENAI_KEY, "Idempotency-Key": "order-9"},
        )
        assert resp.status == 200, await resp.text()
        assert len(await api.upstream_requests()) == 1
