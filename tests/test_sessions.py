"""Model answers into an app's session stream (issue 25.4), followed with the TypeScript
client: the app's messages and two answers, interleaved in the order they happened."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest
from test_durable_read import _node

JS = Path(__file__).parent / "js"
JSON_TYPE = {"Content-Type": "application/json"}


async def session_messages(api, path: str) -> list:
    resp = await api.client.get(f"/v1/stream/{path}?offset=-1")
    assert resp.status == 200
    return await resp.json()


async def wait_ends(api, path: str, n: int) -> list:
    async with asyncio.timeout(15):
        while True:
            messages = await session_messages(api, path)
            if sum(m.get("type") == "answer.end" for m in messages) >= n:
                return messages
            await asyncio.sleep(0.05)


async def test_a_session_follows_app_messages_and_two_answers(api):
    client = api.client
    assert (await client.put("/v1/stream/chat-1", headers=JSON_TYPE)).status == 201
    url = str(client.make_url("/v1/stream/chat-1"))
    follower = await asyncio.create_subprocess_exec(
        _node(), str(JS / "follow-json.mjs"), url, "sse",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    answers = []
    for i, session in enumerate(["chat-1", "/v1/stream/chat-1"]):
        said = {"type": "user", "text": f"question {i}"}
        assert (await client.post("/v1/stream/chat-1", json=said)).status == 204
        answers.append(await api.create(model="mock?tokens=8&delay_ms=20", session_stream=session))
        await wait_ends(api, "chat-1", i + 1)
    close = await client.post("/v1/stream/chat-1", headers={"Stream-Closed": "true"})
    assert close.status == 204
    out, err = await asyncio.wait_for(follower.communicate(), 30)
    assert follower.returncode == 0, err
    followed = [orjson.loads(line) for line in out.splitlines()]
    assert followed == await session_messages(api, "chat-1")  # the client saw all, in order
    kinds = [m["type"] for m in followed]
    first_end = kinds.index("answer.end")
    assert kinds[:2] == ["user", "answer.start"] and kinds[first_end + 1 : first_end + 3] == [
        "user",
        "answer.start",
    ]
    for answer in answers:
        cid = answer["conversation_id"]
        mine = [m for m in followed if m.get("conversation_id") == cid]
        start, *deltas, end = mine
        assert start["endpoints"] == answer["endpoints"]
        assert {m["type"] for m in deltas} == {"answer.delta"}
        doc = await api.status(answer["endpoints"]["status_url"])
        text = doc["response"]["body"]["choices"][0]["message"]["content"]
        assert "".join(m["text"] for m in deltas) == end["text"] == text
        assert end["status"] == "done" and end["usage"]["completion_tokens"] > 0
        assert end["error"] is None


@pytest.mark.parametrize(
    "stream, status, code",
    [
        (None, 404, "session_not_found"),
        ("text", 400, "invalid_session"),
        ("closed", 400, "invalid_session"),
    ],
    ids=["missing", "not-json", "closed"],
)
async def test_a_bad_session_stream_refuses_the_create(api, data_dir, stream, status, code):
    if stream == "text":
        await api.client.put("/v1/stream/s", headers={"Content-Type": "text/plain"})
    elif stream == "closed":
        await api.client.put("/v1/stream/s", headers={**JSON_TYPE, "Stream-Closed": "true"})
    resp = await api.client.post(
        "/v1/stream-chatgpt",
        json={"messages": [{"role": "user", "content": "hi"}], "session_stream": "s"},
        headers={"X-OpenAI-API-Key": "sk-x"},
    )
    assert resp.status == status and (await resp.json())["error"]["code"] == code
    assert not (data_dir / "pub").exists()  # no request was made
