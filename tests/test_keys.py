"""API keys, plans and quotas: the CLI, the create endpoints, and two processes at once."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from helpers import OPENAI_KEY, SEED_BODY, make_key
from offloadd import cli
from offloadd.http.app import make_app
from offloadd.keys.base import load_plans
from offloadd.keys.sqlite import DB_NAME, SQLiteKeys


def keys_cli(*args: str) -> str:
    result = CliRunner().invoke(cli.main, ["keys", *args])
    assert result.exit_code == 0, result.output
    return result.output


def month_count(data_dir: Path, name: str) -> int:
    store = SQLiteKeys(data_dir, load_plans(None))
    try:
        return next(r["month"] for r in store.list() if r["name"] == name)
    finally:
        store.close()


async def post(client, headers, body=SEED_BODY):
    return await client.post(
        "/v1/stream-chatgpt", json=body, headers={"X-OpenAI-API-Key": OPENAI_KEY, **headers}
    )


@pytest.fixture
def plans_file(tmp_path: Path) -> Path:
    path = tmp_path / "plans.toml"
    path.write_text("[tiny]\nmonthly = 3\n\n[free]\nmonthly = 1000\nper_minute = 10\n")
    return path


class TestKeysCli:
    def test_create_prints_the_key_alone_on_the_last_line(self, data_dir):
        key = make_key(data_dir)
        assert re.fullmatch(r"ofd_[A-Za-z0-9_-]{43}", key)

    def test_the_key_is_stored_only_as_a_hash(self, data_dir):
        key = make_key(data_dir)
        stored = b"".join(p.read_bytes() for p in data_dir.iterdir() if p.is_file())
        assert key.encode() not in stored
        assert key[4:].encode() not in stored

    def test_list_revoke_and_usage(self, data_dir):
        key = make_key(data_dir, "alice")
        make_key(data_dir, "bob", "unlimited")
        listing = keys_cli("list", "--data", str(data_dir))
        assert "alice" in listing and "bob" in listing and key[:10] in listing
        assert "unlimited" in listing
        assert "revoked 1 key(s)" in keys_cli("revoke", key[:10], "--data", str(data_dir))
        assert "revoked" in keys_cli("list", "--data", str(data_dir)).splitlines()[1]
        assert "MONTH" in keys_cli("usage", "--data", str(data_dir))

    def test_unknown_plan_and_duplicate_names_are_refused(self, data_dir):
        make_key(data_dir, "alice")
        result = CliRunner().invoke(
            cli.main, ["keys", "create", "--name", "alice", "--data", str(data_dir)]
        )
        assert result.exit_code != 0 and "exists" in result.output
        result = CliRunner().invoke(
            cli.main, ["keys", "create", "--name", "x", "--plan", "gold", "--data", str(data_dir)]
        )
        assert result.exit_code != 0 and "unknown plan" in result.output

    def test_data_directory_from_the_environment(self, data_dir):
        result = CliRunner().invoke(
            cli.main, ["keys", "create", "--name", "env"], env={"OFFLOADD_DATA": str(data_dir)}
        )
        assert result.exit_code == 0
        assert (data_dir / DB_NAME).exists()


class TestAuthOnCreate:
    async def test_no_key_is_401(self, make_client, data_dir):
        client = await make_client(auth=True)
        resp = await post(client, {})
        assert resp.status == 401
        assert (await resp.json())["error"]["code"] == "missing_api_key"

    async def test_unknown_key_is_401(self, make_client, data_dir):
        make_key(data_dir)
        client = await make_client(auth=True)
        resp = await post(client, {"X-API-Key": "ofd_not-a-real-key"})
        assert resp.status == 401
        assert (await resp.json())["error"]["code"] == "invalid_api_key"

    async def test_revoked_key_is_401(self, make_client, data_dir):
        key = make_key(data_dir, "gone")
        keys_cli("revoke", "gone", "--data", str(data_dir))
        client = await make_client(auth=True)
        assert (await post(client, {"X-API-Key": key})).status == 401

    @pytest.mark.parametrize(
        "header",
        ["X-RapidAPI-Key", "X-API-Key", "Authorization"],
        ids=["rapidapi", "x-api-key", "bearer"],
    )
    async def test_each_header_works_and_answers_carry_rate_headers(
        self, make_client, data_dir, header
    ):
        key = make_key(data_dir)
        client = await make_client(auth=True)
        value = f"Bearer {key}" if header == "Authorization" else key
        resp = await post(client, {header: value})
        assert resp.status == 200, await resp.text()
        assert resp.headers["X-RateLimit-Limit"] == "1000"
        assert resp.headers["X-RateLimit-Remaining"] == "999"
        assert int(resp.headers["X-RateLimit-Reset"]) > 0

    async def test_reading_urls_need_no_key(self, make_client, data_dir):
        key = make_key(data_dir)
        client = await make_client(auth=True)
        answer = await (await post(client, {"X-API-Key": key})).json()
        status_path = answer["endpoints"]["status_url"].split(str(client.port), 1)[1]
        assert (await client.get(status_path)).status == 200


class TestQuotas:
    async def test_over_the_minute_rate_is_429(self, aiohttp_client, config, data_dir):
        key = make_key(data_dir)
        start = (time.time() // 60) * 60 + 5  # 5 s into a minute: all 11 requests fall in it
        keys = SQLiteKeys(data_dir, load_plans(None), clock=lambda: start)
        app = make_app(dataclasses.replace(config, auth=True), keys=keys)
        client = await aiohttp_client(app)
        statuses = [(await post(client, {"X-API-Key": key})).status for _ in range(10)]
        assert statuses == [200] * 10
        resp = await post(client, {"X-API-Key": key})
        assert resp.status == 429
        assert (await resp.json())["error"]["code"] == "quota_exceeded"
        assert int(resp.headers["Retry-After"]) == 55
        assert resp.headers["X-RateLimit-Limit"] == "10"
        assert resp.headers["X-RateLimit-Remaining"] == "0"

    async def test_over_the_monthly_quota_is_429(self, make_client, data_dir, plans_file):
        key = make_key(data_dir, plan="tiny", plans=plans_file)
        client = await make_client(auth=True, plans_file=plans_file)
        for _ in range(3):
            assert (await post(client, {"X-API-Key": key})).status == 200
        resp = await post(client, {"X-API-Key": key})
        assert resp.status == 429
        assert resp.headers["X-RateLimit-Limit"] == "3"
        assert int(resp.headers["Retry-After"]) > 60

    async def test_rejected_requests_do_not_count_failed_upstreams_do(self, make_client, data_dir):
        key = make_key(data_dir, "counted")
        client = await make_client(auth=True)
        bad = await post(client, {"X-API-Key": key}, body={"messages": []})
        assert bad.status == 400
        assert month_count(data_dir, "counted") == 0
        failing = {**SEED_BODY, "model": "mock?status=500"}
        assert (await post(client, {"X-API-Key": key}, body=failing)).status == 200
        assert month_count(data_dir, "counted") == 1


class TestTwoProcesses:
    async def test_two_servers_count_one_quota_exactly(self, data_dir, tmp_path, spawn, http):
        plans = tmp_path / "plans.json"
        plans.write_text('{"shared": {"monthly": 40, "per_minute": null}}')
        key = make_key(data_dir, "shared", "shared", plans)
        servers = [
            await spawn(
                "serve",
                "--data",
                str(data_dir),
                "--upstream-url",
                "mock",
                "--plans",
                str(plans),
                "--log-level",
                "WARNING",
            )
            for _ in range(2)
        ]
        body = {"messages": [{"role": "user", "content": "hi"}], "model": "mock?tokens=1"}
        headers = {"X-API-Key": key, "X-OpenAI-API-Key": "sk-x"}

        async def one(base: str) -> int:
            async with http.post(f"{base}/v1/stream-chatgpt", json=body, headers=headers) as r:
                return r.status

        statuses = await asyncio.gather(*(one(d.url) for _ in range(30) for d in servers))
        assert statuses.count(200) == 40
        assert statuses.count(429) == 20
        assert month_count(data_dir, "shared") == 40
