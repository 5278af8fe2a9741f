"""Bad input: a clear JSON error with the right status, and no files."""

from __future__ import annotations

import orjson
import pytest

from helpers import OPENAI_KEY, SEED_BODY, files_under

HEADERS = {"X-OpenAI-API-Key": OPENAI_KEY, "Content-Type": "application/json"}

BAD_BODIES = [
    pytest.param(b"{not json", 400, "invalid_json", id="bad-json"),
    pytest.param(b"[1, 2]", 400, "invalid_json", id="not-an-object"),
    pytest.param(b"{}", 400, "invalid_messages", id="no-messages"),
    pytest.param(b'{"messages": []}', 400, "invalid_messages", id="empty-messages"),
    pytest.param(b'{"messages": 5}', 400, "invalid_messages", id="messages-a-number"),
    pytest.param(b'{"messages": "[not json"}', 400, "invalid_messages", id="bad-string-messages"),
    pytest.param(b'{"messages": ["hi"]}', 400, "invalid_messages", id="message-a-string"),
    pytest.param(
        b'{"messages": [{"role": "robot", "content": "x"}]}', 400, "invalid_messages", id="bad-role"
    ),
    pytest.param(b'{"messages": [{"role": "user"}]}', 400, "invalid_messages", id="no-content"),
    pytest.param(
        b'{"messages": [{"role": "user", "content": 5}]}', 400, "invalid_messages", id="int-content"
    ),
    pytest.param(
        b'{"messages": [{"role": "user", "content": "x"}], "model": 3}',
        400,
        "invalid_model",
        id="model-a-number",
    ),
    pytest.param(
        b'{"messages": [{"role": "user", "content": "x"}], "timeout": 900}',
        400,
        "bad_request",
        id="timeout-too-long",
    ),
    pytest.param(
        b'{"messages": [{"role": "user", "content": "x"}], "connect_timeout": 11}',
        400,
        "bad_request",
        id="connect-timeout-too-long",
    ),
    pytest.param(
        b'{"messages": [{"role": "user", "content": "x"}], "access": "secret"}',
        400,
        "invalid_access",
        id="bad-access",
    ),
    pytest.param(
        b'{"messages": [{"role": "user", "content": "x"}], "conversation_id": "../../etc"}',
        400,
        "invalid_conversation_id",
        id="conversation-id-a-path",
    ),
    pytest.param(
        b'{"messages": [{"role": "user", "content": "x"}], "stream_options": 1}',
        400,
        "invalid_parameter",
        id="stream-options-not-object",
    ),
]


class TestBadBodies:
    @pytest.mark.parametrize(("body", "status", "code"), BAD_BODIES)
    async def test_answer_and_no_files(self, client, data_dir, body, status, code):
        resp = await client.post("/v1/stream-chatgpt", data=body, headers=HEADERS)
        assert resp.status == status
        assert resp.content_type == "application/json"
        answer = await resp.json()
        assert answer["status"] == "error"
        assert answer["error"]["code"] == code
        assert answer["error"]["message"]
        assert "Traceback" not in answer["error"]["message"]
        assert files_under(data_dir) == []

    async def test_not_json_content_type_is_415(self, client, data_dir):
        resp = await client.post(
            "/v1/stream-chatgpt",
            data=orjson.dumps(SEED_BODY),
            headers={"X-OpenAI-API-Key": OPENAI_KEY, "Content-Type": "text/plain"},
        )
        assert resp.status == 415
        assert (await resp.json())["error"]["code"] == "unsupported_media_type"
        assert files_under(data_dir) == []

    async def test_body_over_the_limit_is_413(self, make_client, data_dir):
        client = await make_client(max_body_bytes=1000)
        big = {"messages": [{"role": "user", "content": "x" * 5000}]}
        resp = await client.post("/v1/stream-chatgpt", json=big, headers=HEADERS)
        assert resp.status == 413
        assert (await resp.json())["error"]["code"] == "payload_too_large"
        assert files_under(data_dir) == []


class TestGoodVariants:
    async def test_messages_as_a_json_string_are_accepted(self, api):
        as_string = orjson.dumps(SEED_BODY["messages"]).decode()
        urls = (await api.create({"messages": as_string}))["endpoints"]
        doc = await api.wait_status(urls["status_url"], "done")
        assert doc["parameters"]["messages"] == SEED_BODY["messages"]
        [seen] = await api.upstream_requests()
        assert seen["body"]["messages"] == SEED_BODY["messages"]

    async def test_assistant_tool_call_message_may_have_no_content(self, api):
        messages = [
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
            {"role": "user", "content": "thanks"},
        ]
        urls = (await api.create({"messages": messages}))["endpoints"]
        doc = await api.wait_status(urls["status_url"], "done")
        assert doc["response"]["body"]["choices"][0]["message"]["content"] == "thanks"


class TestUnknownRoutes:
    async def test_unknown_path_is_a_json_404(self, client):
        resp = await client.get("/v1/nothing-here")
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "not_found"

    async def test_wrong_method_is_a_json_405(self, client):
        resp = await client.get("/v1/stream-chatgpt")
        assert resp.status == 405
        assert (await resp.json())["error"]["code"] == "method_not_allowed"
