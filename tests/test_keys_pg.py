"""Keys and quotas in a real PostgreSQL server: the same behaviour as SQLite, exact across
daemons under concurrency, token budgets, and an outage the daemon survives."""

from __future__ import annotations

import asyncio
import dataclasses
import re

import pytest
from click.testing import CliRunner

from helpers import OPENAI_KEY, SEED_BODY, eventually, files_under, wait_words
from offloadd import cli
from offloadd.http.app import make_app

PLANS = '{"tiny": {"monthly": 25, "per_minute": null}, "tokens": {"monthly_tokens": 30}}'


async def keys_cli(*args: str, dsn: str | None = None, data=None) -> str:
    """`offloadd keys …` (in a thread: the PostgreSQL store runs its own event loop)."""
    where = ["--keys", dsn] if dsn else ["--data", str(data)]
    result = await asyncio.to_thread(CliRunner().invoke, cli.main, ["keys", *args, *where])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def plans(tmp_path):
    path = tmp_path / "plans.json"
    path.write_text(PLANS)
    return path


async def _post(client, key: str, **fields):
    return await client.post(
        "/v1/stream-chatgpt",
        json={**SEED_BODY, "model": "mock?tokens=2", **fields},
        headers={"X-OpenAI-API-Key": OPENAI_KEY, "X-API-Key": key},
    )


class TestTheStore:
    async def test_the_cli_against_postgresql(self, pg_dsn, plans):
        out = await keys_cli(
            "create", "--name", "app", "--plan", "tiny", "--plans", str(plans), dsn=pg_dsn
        )
        key = out.strip().splitlines()[-1]
        assert re.fullmatch(r"ofd_[A-Za-z0-9_-]{43}", key)
        listed = await keys_cli("list", "--plans", str(plans), dsn=pg_dsn)
        assert "app" in listed and key not in listed and key[:10] in listed
        assert "revoked 1 key(s)" in await keys_cli("revoke", "app", dsn=pg_dsn)
        assert "revoked" in await keys_cli("list", "--plans", str(plans), dsn=pg_dsn)

    async def test_exact_across_two_daemons_under_concurrency(
        self, pg_dsn, plans, aiohttp_client, config, data_dir
    ):
        out = await keys_cli(
            "create", "--name", "shared", "--plan", "tiny", "--plans", str(plans), dsn=pg_dsn
        )
        key = out.strip().splitlines()[-1]
        configured = dataclasses.replace(config, auth=True, keys_url=pg_dsn, plans_file=plans)
        a = await aiohttp_client(make_app(configured))
        b = await aiohttp_client(make_app(configured))
        answers = await asyncio.gather(*(_post(c, key) for _ in range(30) for c in (a, b)))
        statuses = [r.status for r in answers]
        assert statuses.count(200) == 25 and statuses.count(429) == 35
        refused = next(r for r in answers if r.status == 429)
        assert refused.headers["X-RateLimit-Limit"] == "25" and "Retry-After" in refused.headers
        assert (await _post(a, "ofd_unknown")).status == 401
        usage = await keys_cli("usage", dsn=pg_dsn)
        assert re.search(r"shared\s+\S+\s+tiny\s+25\b", usage), usage

    async def test_a_database_that_is_down_answers_503_and_comes_back(
        self, postgres, pg_dsn, plans, aiohttp_client, config, data_dir
    ):
        out = await keys_cli(
            "create", "--name", "app", "--plan", "tiny", "--plans", str(plans), dsn=pg_dsn
        )
        key = out.strip().splitlines()[-1]
        configured = dataclasses.replace(config, auth=True, keys_url=pg_dsn, plans_file=plans)
        client = await aiohttp_client(make_app(configured))
        first = await _post(client, key)
        assert first.status == 200
        status_path = "/" + (await first.json())["endpoints"]["status_url"].split("/", 3)[3]
        postgres.stop()
        try:
            before = files_under(data_dir)
            down = await _post(client, key)
            assert down.status == 503
            assert (await down.json())["error"]["code"] == "keys_unavailable"
            assert files_under(data_dir) == before  # nothing started
            assert (await client.get(status_path)).status == 200  # reads go on
        finally:
            postgres.start()
        assert (await _post(client, key)).status == 200  # by itself, once it is back


@pytest.fixture(params=["sqlite", "postgresql"])
async def budgeted(request, plans, aiohttp_client, config, data_dir):
    """A server with auth on either store, and a key on the `tokens` plan (30 a month)."""
    dsn = None
    if request.param == "postgresql":
        dsn = await request.getfixturevalue("postgres").new_database()
    args = ["create", "--name", "app", "--plan", "tokens", "--plans", str(plans)]
    key = (await keys_cli(*args, dsn=dsn, data=data_dir)).strip().splitlines()[-1]
    configured = dataclasses.replace(config, auth=True, keys_url=dsn, plans_file=plans)
    client = await aiohttp_client(make_app(configured))

    async def tokens() -> tuple[int, int]:
        """(tokens, estimated) this month, as `offloadd keys usage` shows them."""
        last = (await keys_cli("usage", dsn=dsn, data=data_dir)).splitlines()[-1]
        tokens, estimated = map(int, last.split()[-2:])
        return tokens, estimated

    return client, key, tokens


async def _until_counted(tokens) -> tuple[int, int]:
    async def counted() -> tuple[int, int]:  # counted once the request has ended
        spent = await tokens()
        assert spent[0], f"(tokens, estimated) this month: {spent}"
        return spent

    return await eventually(counted)


class TestTokenBudgets:
    async def test_spent_budget_is_429_and_usage_shows_tokens(self, budgeted):
        client, key, tokens = budgeted
        assert (await _post(client, key, model="mock?tokens=25")).status == 200
        assert await _until_counted(tokens) == (35, 0)  # 10 prompt + 25 completion, exact
        spent = await _post(client, key)
        assert spent.status == 429
        assert "tokens" in (await spent.json())["error"]["message"]
        assert spent.headers["X-RateLimit-Limit"] == "30"

    async def test_a_stopped_request_is_counted_by_estimate(self, budgeted):
        client, key, tokens = budgeted
        answer = await (await _post(client, key, model="mock?tokens=500&delay_ms=20")).json()
        await wait_words(client, answer["endpoints"]["status_url"], 3)
        await client.post("/" + answer["endpoints"]["stop_url"].split("/", 3)[3])
        counted, estimated = await _until_counted(tokens)
        assert counted == estimated > 0
