"""The key store in PostgreSQL (asyncpg), for daemons on several hosts: `--keys postgresql://…`.

The same behaviour as the SQLite store — hashed keys, plans, exact monthly and
per-minute counts, token budgets — with counting exact across any number of daemons:
each charge is one transaction that locks the key's row first (`SELECT … FOR UPDATE`),
so concurrent charges of one key queue, and no update is lost.

A database that is down or unreachable makes creates answer 503 `keys_unavailable`
(nothing is started, nothing counted); the daemon keeps serving reads, and the next
create tries to connect again, so it recovers by itself when the database is back.
"""

from __future__ import annotations

import asyncio
import builtins
import time
from collections.abc import Callable
from typing import Any

import asyncpg

from offloadd.errors import Unauthorized, Unavailable
from offloadd.keys.base import (
    KEY_PREFIX,
    USAGE_COLUMNS,
    Charge,
    Limits,
    Plan,
    hash_key,
    limits_for,
    month_period,
    new_key,
)

MIGRATIONS = [
    """
    CREATE TABLE offloadd_keys (
        id BIGSERIAL PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        prefix TEXT NOT NULL,
        hash TEXT NOT NULL UNIQUE,
        plan TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        last_used_at DOUBLE PRECISION,
        revoked_at DOUBLE PRECISION
    );
    CREATE TABLE offloadd_usage (
        key_id BIGINT NOT NULL REFERENCES offloadd_keys(id),
        period TEXT NOT NULL,
        count BIGINT NOT NULL,
        PRIMARY KEY (key_id, period)
    );
    """,
    """
    ALTER TABLE offloadd_usage ADD COLUMN tokens BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE offloadd_usage ADD COLUMN estimated_tokens BIGINT NOT NULL DEFAULT 0;
    """,
]
DOWN = (OSError, asyncio.TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError)


class PostgresKeys:
    def __init__(
        self,
        dsn: str,
        plans: dict[str, Plan],
        clock: Callable[[], float] = time.time,
        connect_timeout: float = 3.0,
    ):
        self.dsn, self.plans, self.clock = dsn, plans, clock
        self.connect_timeout = connect_timeout
        self._pool: Any = None
        self._lock = asyncio.Lock()

    async def _connected(self) -> Any:
        """The pool, made (and the schema migrated) on first use or after an outage."""
        async with self._lock:
            if self._pool is None:
                try:
                    pool = await asyncpg.create_pool(
                        self.dsn, min_size=1, max_size=10, timeout=self.connect_timeout
                    )
                    async with pool.acquire() as db:
                        await migrate(db)
                except DOWN as e:
                    raise Unavailable(
                        f"the key store is unreachable ({type(e).__name__}); try again shortly",
                        code="keys_unavailable",
                    ) from None
                self._pool = pool
            return self._pool

    async def _run(self, fn: Callable, *args: Any) -> Any:
        pool = await self._connected()
        try:
            async with pool.acquire(timeout=self.connect_timeout) as db:
                return await fn(db, *args)
        except DOWN as e:
            await self._forget(pool)
            raise Unavailable(
                f"the key store is unreachable ({type(e).__name__}); try again shortly",
                code="keys_unavailable",
            ) from None

    async def _forget(self, pool: Any) -> None:
        async with self._lock:
            if self._pool is pool:
                self._pool = None
        pool.terminate()

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    # --- the server's side --------------------------------------------------------------

    async def check(self, key: str) -> None:
        await self._run(self._lookup, key, False)

    async def charge(self, key: str) -> Charge:
        return await self._run(self._charge, key, self.clock())

    async def refund(self, charge: Charge) -> None:
        await self._run(
            lambda db: db.execute(
                "UPDATE offloadd_usage SET count = count - 1 "
                "WHERE key_id = $1 AND period = $2 AND count > 0",
                charge.key_id,
                charge.period,
            )
        )

    async def add_tokens(self, charge: Charge, tokens: int, estimated: bool) -> None:
        await self._run(
            lambda db: db.execute(
                "UPDATE offloadd_usage SET tokens = tokens + $1, "
                "estimated_tokens = estimated_tokens + $2 WHERE key_id = $3 AND period = $4",
                tokens,
                tokens if estimated else 0,
                charge.key_id,
                charge.period,
            )
        )

    async def _lookup(self, db: Any, key: str, lock: bool) -> tuple[int, Plan]:
        query = "SELECT id, plan, revoked_at FROM offloadd_keys WHERE hash = $1"
        row = await db.fetchrow(query + (" FOR UPDATE" if lock else ""), hash_key(key))
        if row is None or row["revoked_at"] is not None:
            raise Unauthorized(
                "this offloadd API key is unknown or revoked", code="invalid_api_key"
            )
        return row["id"], self.plans.get(row["plan"]) or Plan(row["plan"], 0, 0)

    async def _charge(self, db: Any, key: str, now: float) -> Charge:
        period, minute = month_period(now), f"m{int(now // 60)}"
        async with db.transaction():
            key_id, plan = await self._lookup(db, key, True)  # charges of one key queue here
            rows = await db.fetch(
                "SELECT period, count, tokens FROM offloadd_usage "
                "WHERE key_id = $1 AND period = ANY($2::text[])",
                key_id,
                [period, minute],
            )
            used = {r["period"]: (r["count"], r["tokens"]) for r in rows}
            month_used, tokens_used = used.get(period, (0, 0))
            limits = limits_for(plan, month_used, used.get(minute, (0, 0))[0], tokens_used, now)
            await db.execute(
                "DELETE FROM offloadd_usage WHERE key_id = $1 AND period LIKE 'm%' "
                "AND period != $2",
                key_id,
                minute,
            )
            await db.executemany(
                "INSERT INTO offloadd_usage (key_id, period, count) VALUES ($1, $2, 1) "
                "ON CONFLICT (key_id, period) DO UPDATE SET count = offloadd_usage.count + 1",
                [(key_id, period), (key_id, minute)],
            )
            await db.execute(
                "UPDATE offloadd_keys SET last_used_at = $1 WHERE id = $2", now, key_id
            )
        shown = limits and Limits(limits.limit, limits.remaining - 1, limits.reset)
        return Charge(key_id, period, shown)

    # --- the CLI's side -----------------------------------------------------------------

    async def create(self, name: str, plan: str) -> str:
        if plan not in self.plans:
            raise ValueError(f"unknown plan {plan!r}; plans: {', '.join(self.plans)}")
        key = new_key()

        async def insert(db: Any) -> None:
            await db.execute(
                "INSERT INTO offloadd_keys (name, prefix, hash, plan, created_at) "
                "VALUES ($1, $2, $3, $4, $5)",
                name,
                key[: len(KEY_PREFIX) + 6],
                hash_key(key),
                plan,
                time.time(),
            )

        try:
            await self._run(insert)
        except asyncpg.UniqueViolationError:
            raise ValueError(f"a key named {name!r} exists already") from None
        return key

    async def revoke(self, name_or_prefix: str) -> int:
        status = await self._run(
            lambda db: db.execute(
                "UPDATE offloadd_keys SET revoked_at = $1 "
                "WHERE revoked_at IS NULL AND (name = $2 OR prefix = $2)",
                time.time(),
                name_or_prefix,
            )
        )
        return int(status.split()[-1])

    async def list(self, now: float | None = None) -> list[dict]:
        rows = await self._run(
            lambda db: db.fetch(
                "SELECT k.name, k.prefix, k.plan, k.created_at, k.last_used_at, k.revoked_at, "
                "COALESCE(u.count, 0) AS month FROM offloadd_keys k LEFT JOIN offloadd_usage u "
                "ON u.key_id = k.id AND u.period = $1 ORDER BY k.id",
                month_period(now or time.time()),
            )
        )
        return [dict(r) for r in rows]

    async def usage(self) -> builtins.list[dict]:
        rows = await self._run(
            lambda db: db.fetch(
                "SELECT k.name, k.prefix, k.plan, u.period, u.count AS requests, u.tokens, "
                "u.estimated_tokens FROM offloadd_usage u JOIN offloadd_keys k ON k.id = u.key_id "
                "WHERE u.period NOT LIKE 'm%' ORDER BY u.period DESC, k.name"
            )
        )
        return [{c: r[c] for c in USAGE_COLUMNS} for r in rows]


async def migrate(db: Any) -> None:
    """Create the schema, or bring it up to date, in one transaction (under a lock, so
    daemons starting together do not race)."""
    async with db.transaction():
        await db.execute("SELECT pg_advisory_xact_lock(7262010)")
        await db.execute("CREATE TABLE IF NOT EXISTS offloadd_schema (version INTEGER NOT NULL)")
        version = await db.fetchval("SELECT max(version) FROM offloadd_schema") or 0
        for number, sql in enumerate(MIGRATIONS[version:], start=version + 1):
            await db.execute(sql)
            await db.execute("INSERT INTO offloadd_schema (version) VALUES ($1)", number)
