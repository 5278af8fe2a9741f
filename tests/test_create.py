"""Creating a request: the answer, the files, and what reaches the upstream."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from helpers import ANSWER_KEYS, OPENAI_KEY, SEED_BODY, file_of, files_under

URL_RE = (
    r"http://127\.0\.0\.1:\d+/{kind}/r/pub/(\d{{4}}/\d{{2}}/\d{{2}}/\d{{2}}/\d{{2}}/\d{{2}})/"
    r"([0-9a-f]{{8}}-[0-9a-f]{{4}}-4[0-9a-f]{{3}}-[89ab][0-9a-f]{{3}}-[0-9a-f]{{12}})"
)


class TestSeedExample:
    async def test_answer_has_the_documented_shape(self, api):
        answer = await api.create(SEED_BODY)
        assert list(answer) == ANSWER_KEYS
        assert answer["status"] == "success"
        assert answer["README"] == (
            "The `stream_events_url` endpoint below streams data sent by the ChatGPT API. "
            "Open it to receive incoming messages."
        )
        assert answer["authorization"] == {"access": "public"}
        assert list(answer["endpoints"]) == ["status_url", "stream_events_url", "stop_url"]

    async def test_urls_mirror_the_creation_time_and_uuid(self, api):
        answer = await api.create(SEED_BODY)
        urls = answer["endpoints"]
        m = re.fullmatch(URL_RE.format(kind=1) + r"\.json", urls["status_url"])
        assert m, urls["status_url"]
        stamp, uuid = m.groups()
        assert urls["stream_events_url"] == urls["status_url"][: -len(".json")] + ".txt"
        assert urls["stop_url"] == urls["status_url"][: -len(".json")] + "/stop"
        assert answer["conversation_id"] == uuid
        created = datetime.fromtimestamp(answer["created_at"], UTC)
        assert stamp == created.strftime("%Y/%m/%d/%H/%M/%S")

    async def test_two_files_are_written_where_the_urls_point(self, api, data_dir):
        answer = await api.create(SEED_BODY)
        urls = answer["endpoints"]
        await api.wait_status(urls["status_url"], "done")
        expected = [
            file_of(data_dir, urls["status_url"]),
            file_of(data_dir, urls["stream_events_url"]),
        ]
        assert files_under(data_dir) == expected

    async def test_each_request_gets_a_new_uuid(self, api):
        first, second = await api.create(), await api.create()
        assert first["conversation_id"] != second["conversation_id"]


class TestAsyncEndpoint:
    async def test_answers_status_and_stop_urls_under_2(self, api):
        answer = await api.create(path="/v1/async-chatgpt")
        assert answer["README"] == (
            "The `status_url` endpoint below continuously updates with data sent by the "
            "ChatGPT API. Load it to check for new data."
        )
        assert list(answer["endpoints"]) == ["status_url", "stop_url"]
        assert re.fullmatch(URL_RE.format(kind=2) + r"\.json", answer["endpoints"]["status_url"])
        doc = await api.wait_status(answer["endpoints"]["status_url"], "done")
        assert doc["request"]["endpoint"] == "/v1/async-chatgpt"
        assert (
            doc["response"]["body"]["choices"][0]["message"]["content"]
            == (SEED_BODY["messages"][1]["content"])
        )


class TestUpstreamCall:
    async def test_answer_comes_before_the_upstream_answers(self, api):
        answer = await api.create(model="mock?tokens=3&delay_ms=1500")
        doc = await api.status(answer["endpoints"]["status_url"])
        assert doc["status"] == "waiting"
        seen = await api.upstream_requests()
        assert seen[-1]["chunks_sent"] == 0
        await api.get(answer["endpoints"]["stop_url"])

    async def test_request_key_is_sent_as_bearer(self, api):
        answer = await api.create()
        await api.wait_status(answer["endpoints"]["status_url"], "done")
        [seen] = await api.upstream_requests()
        assert seen["authorized"] is True

    async def test_every_chat_completions_field_passes_through(self, api):
        fields = {
            "model": "gpt-4o-mini",
            "temperature": 0.2,
            "top_p": 0.9,
            "n": 1,
            "max_tokens": 50,
            "stop": ["\n\n"],
            "presence_penalty": 0.1,
            "frequency_penalty": 0.2,
            "logit_bias": {"50256": -100},
            "seed": 7,
            "user": "user-123",
            "response_format": {"type": "text"},
        }
        answer = await api.create(**fields, timeout=30, connect_timeout=3)
        await api.wait_status(answer["endpoints"]["status_url"], "done")
        [seen] = await api.upstream_requests()
        body = seen["body"]
        for name, value in fields.items():
            assert body[name] == value, name
        assert body["stream"] is True
        assert body["stream_options"] == {"include_usage": True}
        for own in ("timeout", "connect_timeout", "access"):
            assert own not in body

    async def test_model_defaults_to_the_servers(self, make_api):
        api = await make_api(default_model="mock?tokens=2")
        answer = await api.create()
        doc = await api.wait_status(answer["endpoints"]["status_url"], "done")
        assert doc["parameters"]["model"] == "mock?tokens=2"
        assert doc["response"]["body"]["choices"][0]["message"]["content"] == "t0 t1"

    async def test_without_any_openai_key_the_answer_is_401(self, client, data_dir):
        resp = await client.post("/v1/stream-chatgpt", json=SEED_BODY)
        assert resp.status == 401
        body = await resp.json()
        assert body["error"]["code"] == "missing_openai_key"
        assert files_under(data_dir) == []

    async def test_the_servers_own_key_serves_requests_without_one(self, make_api):
        api = await make_api(upstream_key="sk-server-own-key-123")
        answer = await api.create(key=None)
        await api.wait_status(answer["endpoints"]["status_url"], "done")
        [seen] = await api.upstream_requests()
        assert seen["authorized"] is True

    async def test_given_conversation_id_is_kept(self, api):
        answer = await api.create(conversation_id="chat-42")
        assert answer["conversation_id"] == "chat-42"
        doc = await api.wait_status(answer["endpoints"]["status_url"], "done")
        assert doc["conversation_id"] == "chat-42"

    async def test_key_is_never_written(self, api, data_dir):
        answer = await api.create(model="mock?status=401")
        await api.wait_status(answer["endpoints"]["status_url"], "error")
        for path in files_under(data_dir):
            assert OPENAI_KEY.encode() not in path.read_bytes()
        assert OPENAI_KEY[-12:].encode() not in b"".join(
            p.read_bytes() for p in files_under(data_dir)
        )

    async def test_public_url_is_used_for_the_answer(self, make_api):
        api = await make_api(public_url="https://chat.example.org/")
        answer = await api.create()
        assert answer["endpoints"]["status_url"].startswith("https://chat.example.org/1/r/pub/")

    async def test_forwarded_host_and_proto_shape_the_urls(self, api):
        resp = await api.client.post(
            "/v1/stream-chatgpt",
            json=SEED_BODY,
            headers={
                "X-OpenAI-API-Key": OPENAI_KEY,
                "X-Forwarded-Proto": "https",
                "X-Forwarded-Host": "api.example.com",
            },
        )
        answer = await resp.json()
        assert answer["endpoints"]["stop_url"].startswith("https://api.example.com/1/r/pub/")
