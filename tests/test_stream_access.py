"""Who may do what to an application stream (issue 25.5): with auth on, making and
changing a stream takes an offloadd API key and counts against its plan (one request a
stream created, one an append); reading is public, or private with the read token
handed out at creation (or the owner's key)."""

from __future__ import annotations

import pytest
from test_keys import make_key, month_count

TEXT = {"Content-Type": "text/plain"}


@pytest.fixture
async def authed(make_client, data_dir, tmp_path):
    plans = tmp_path / "plans.toml"
    plans.write_text("[tiny]\nmonthly = 4\n")
    keys = {
        "owner": make_key(data_dir, "owner", "tiny", plans),
        "other": make_key(data_dir, "other", "tiny", plans),
    }
    client = await make_client(auth=True, plans_file=plans)
    return client, keys


def key(value: str) -> dict:
    return {"X-API-Key": value, **TEXT}


async def test_writes_need_a_key(authed):
    client, _ = authed
    assert (await client.put("/v1/stream/s", headers=TEXT)).status == 401
    assert (await client.post("/v1/stream/s", data=b"x", headers=TEXT)).status == 401
    assert (await client.delete("/v1/stream/s")).status == 401
    bad = await client.put("/v1/stream/s", headers=key("ofd_nope"))
    assert bad.status == 401


async def test_creates_and_appends_count_against_the_plan(authed, data_dir):
    client, keys = authed
    made = await client.put("/v1/stream/s", headers=key(keys["owner"]))
    assert made.status == 201 and made.headers["X-RateLimit-Remaining"] == "3"
    again = await client.put("/v1/stream/s", headers=key(keys["owner"]))
    assert again.status == 200  # nothing made: not counted
    for _ in range(3):
        resp = await client.post("/v1/stream/s", data=b"x", headers=key(keys["owner"]))
        assert resp.status == 204
    refused = await client.post("/v1/stream/s", data=b"y", headers=key(keys["owner"]))
    assert refused.status == 429
    assert month_count(data_dir, "owner") == 4
    read = await client.get("/v1/stream/s?offset=-1")
    assert await read.read() == b"xxx"  # the refused append appended nothing


async def test_a_failed_append_is_not_counted(authed, data_dir):
    client, keys = authed
    await client.put(
        "/v1/stream/j", headers={**key(keys["owner"]), "Content-Type": "application/json"}
    )
    bad = await client.post(
        "/v1/stream/j",
        data=b"[1,",
        headers={**key(keys["owner"]), "Content-Type": "application/json"},
    )
    assert bad.status == 400
    assert month_count(data_dir, "owner") == 1


async def test_only_the_owner_changes_a_stream(authed):
    client, keys = authed
    await client.put("/v1/stream/s", headers=key(keys["owner"]))
    for method in ("post", "delete"):
        resp = await getattr(client, method)("/v1/stream/s", data=b"x", headers=key(keys["other"]))
        assert resp.status == 403 and (await resp.json())["error"]["code"] == "not_owner"
    assert (await client.delete("/v1/stream/s", headers=key(keys["owner"]))).status == 204


async def test_a_private_stream_is_read_with_its_token(authed):
    client, keys = authed
    made = await client.put(
        "/v1/stream/p", data=b"secret", headers={**key(keys["owner"]), "Stream-Access": "private"}
    )
    token = made.headers["Stream-Read-Token"]
    assert (await client.get("/v1/stream/p?offset=-1")).status == 404
    assert (await client.head("/v1/stream/p")).status == 404
    other = await client.get("/v1/stream/p?offset=-1", headers={"X-API-Key": keys["other"]})
    assert other.status == 404
    by_query = await client.get(f"/v1/stream/p?offset=-1&token={token}")
    assert await by_query.read() == b"secret"
    assert by_query.headers["Cache-Control"].startswith("private")
    by_header = await client.get(
        "/v1/stream/p?offset=-1", headers={"Authorization": f"Bearer {token}"}
    )
    assert by_header.status == 200
    owner = await client.get("/v1/stream/p?offset=-1", headers={"X-API-Key": keys["owner"]})
    assert owner.status == 200
    fork = await client.put(
        "/v1/stream/f", headers={**key(keys["other"]), "Stream-Forked-From": "/v1/stream/p"}
    )
    assert fork.status == 404  # another key cannot fork what it cannot read


async def test_public_streams_are_read_by_anyone(authed):
    client, keys = authed
    made = await client.put("/v1/stream/o", data=b"open", headers=key(keys["owner"]))
    assert "Stream-Read-Token" not in made.headers
    assert await (await client.get("/v1/stream/o?offset=-1")).read() == b"open"


async def test_no_auth_needs_no_key(client):
    assert (await client.put("/v1/stream/s", data=b"a", headers=TEXT)).status == 201
    assert (await client.post("/v1/stream/s", data=b"b", headers=TEXT)).status == 204


async def test_a_session_stream_must_be_the_callers(authed):
    client, keys = authed
    json_type = {"Content-Type": "application/json"}
    await client.put("/v1/stream/chat", headers={**key(keys["owner"]), **json_type})
    body = {"messages": [{"role": "user", "content": "hi"}], "session_stream": "chat"}
    headers = {"X-OpenAI-API-Key": "sk-x", "X-API-Key": keys["other"]}
    resp = await client.post("/v1/stream-chatgpt", json=body, headers=headers)
    assert resp.status == 404 and (await resp.json())["error"]["code"] == "session_not_found"
    headers["X-API-Key"] = keys["owner"]
    assert (await client.post("/v1/stream-chatgpt", json=body, headers=headers)).status == 200
