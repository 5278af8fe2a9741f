"""The key store in SQLite: offloadd API keys and their quotas, what RapidAPI did for the
original (plans, limits and the `KeyStore` protocol are in `base`).

Keys live in an SQLite database in the data directory (WAL mode), so several
offloadd processes on one machine share them and count exactly: every charge
is one `BEGIN IMMEDIATE` transaction. Keys are stored only as SHA-256 hashes
(they are 256 random bits, so a fast hash is enough) with a short prefix kept
for display. Across hosts, use a real database server behind the same
`KeyStore` interface (`postgres`).
"""

from __future__ import annotations

import asyncio
import builtins
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from offloadd.errors import Unauthorized
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

DB_NAME = "offloadd.sqlite3"
SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    plan TEXT NOT NULL,
    created_at REAL NOT NULL,
    last_used_at REAL,
    revoked_at REAL
);
CREATE TABLE IF NOT EXISTS usage (
    key_id INTEGER NOT NULL REFERENCES keys(id),
    period TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (key_id, period)
);
"""


class SQLiteKeys:
    """The key store in `DATA/offloadd.sqlite3`; blocking calls run on one worker thread."""

    def __init__(self, data: Path, plans: dict[str, Plan], clock: Callable[[], float] = time.time):
        self.path = data / DB_NAME
        self.plans, self.clock = plans, clock
        self._db: sqlite3.Connection | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="offloadd-keys")

    # --- connection -------------------------------------------------------------------

    def db(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(
                self.path, timeout=10, isolation_level=None, check_same_thread=False
            )
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=10000")
            db.executescript(SCHEMA)
            columns = {row[1] for row in db.execute("PRAGMA table_info(usage)")}
            for column in ("tokens", "estimated_tokens"):  # added with token budgets
                if column not in columns:
                    db.execute(f"ALTER TABLE usage ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0")
            self._db = db
        return self._db

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        if self._db is not None:
            self._db.close()
            self._db = None

    async def _call(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    # --- the server's side --------------------------------------------------------------

    async def check(self, key: str) -> None:
        await self._call(self._lookup, key)

    async def charge(self, key: str) -> Charge:
        return await self._call(self.charge_sync, key, self.clock())

    async def refund(self, charge: Charge) -> None:
        await self._call(self._refund, charge)

    async def add_tokens(self, charge: Charge, tokens: int, estimated: bool) -> None:
        await self._call(self._add_tokens, charge, tokens, estimated)

    def _add_tokens(self, charge: Charge, tokens: int, estimated: bool) -> None:
        self.db().execute(
            "UPDATE usage SET tokens = tokens + ?, estimated_tokens = estimated_tokens + ? "
            "WHERE key_id = ? AND period = ?",
            (tokens, tokens if estimated else 0, charge.key_id, charge.period),
        )

    def _lookup(self, key: str) -> tuple[int, Plan]:
        row = (
            self.db()
            .execute("SELECT id, plan, revoked_at FROM keys WHERE hash = ?", (hash_key(key),))
            .fetchone()
        )
        if row is None or row[2] is not None:
            raise Unauthorized(
                "this offloadd API key is unknown or revoked", code="invalid_api_key"
            )
        plan = self.plans.get(row[1]) or Plan(row[1], 0, 0)
        return row[0], plan

    def charge_sync(self, key: str, now: float) -> Charge:
        """Count one request against the key's month and minute, or refuse it; exact across
        processes because the read and the write share one immediate transaction."""
        db = self.db()
        key_id, plan = self._lookup(key)
        period, minute = month_period(now), f"m{int(now // 60)}"
        db.execute("BEGIN IMMEDIATE")
        try:
            month_used, tokens_used = self._count(key_id, period)
            minute_used, _ = self._count(key_id, minute)
            limits = limits_for(plan, month_used, minute_used, tokens_used, now)
            db.execute(
                "DELETE FROM usage WHERE key_id = ? AND period LIKE 'm%' AND period != ?",
                (key_id, minute),
            )
            for p in (period, minute):
                db.execute(
                    "INSERT INTO usage (key_id, period, count) VALUES (?, ?, 1) "
                    "ON CONFLICT (key_id, period) DO UPDATE SET count = count + 1",
                    (key_id, p),
                )
            db.execute("UPDATE keys SET last_used_at = ? WHERE id = ?", (now, key_id))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return Charge(
            key_id, period, limits and Limits(limits.limit, limits.remaining - 1, limits.reset)
        )

    def _count(self, key_id: int, period: str) -> tuple[int, int]:
        row = (
            self.db()
            .execute(
                "SELECT count, tokens FROM usage WHERE key_id = ? AND period = ?",
                (key_id, period),
            )
            .fetchone()
        )
        return (row[0], row[1]) if row else (0, 0)

    def _refund(self, charge: Charge) -> None:
        self.db().execute(
            "UPDATE usage SET count = count - 1 WHERE key_id = ? AND period = ? AND count > 0",
            (charge.key_id, charge.period),
        )

    # --- the CLI's side -----------------------------------------------------------------

    def create(self, name: str, plan: str) -> str:
        if plan not in self.plans:
            raise ValueError(f"unknown plan {plan!r}; plans: {', '.join(self.plans)}")
        key = new_key()
        try:
            self.db().execute(
                "INSERT INTO keys (name, prefix, hash, plan, created_at) VALUES (?, ?, ?, ?, ?)",
                (name, key[: len(KEY_PREFIX) + 6], hash_key(key), plan, time.time()),
            )
        except sqlite3.IntegrityError:
            raise ValueError(f"a key named {name!r} exists already") from None
        return key

    def revoke(self, name_or_prefix: str) -> int:
        cur = self.db().execute(
            "UPDATE keys SET revoked_at = ? WHERE revoked_at IS NULL AND (name = ? OR prefix = ?)",
            (time.time(), name_or_prefix, name_or_prefix),
        )
        return cur.rowcount

    def list(self, now: float | None = None) -> list[dict]:
        period = month_period(now or time.time())
        rows = (
            self.db()
            .execute(
                "SELECT k.name, k.prefix, k.plan, k.created_at, k.last_used_at, k.revoked_at, "
                "COALESCE(u.count, 0) FROM keys k "
                "LEFT JOIN usage u ON u.key_id = k.id AND u.period = ? ORDER BY k.id",
                (period,),
            )
            .fetchall()
        )
        names = ("name", "prefix", "plan", "created_at", "last_used_at", "revoked_at", "month")
        return [dict(zip(names, row, strict=True)) for row in rows]

    def usage(self) -> builtins.list[dict]:
        rows = (
            self.db()
            .execute(
                "SELECT k.name, k.prefix, k.plan, u.period, u.count, u.tokens, "
                "u.estimated_tokens FROM usage u "
                "JOIN keys k ON k.id = u.key_id WHERE u.period NOT LIKE 'm%' "
                "ORDER BY u.period DESC, k.name"
            )
            .fetchall()
        )
        names = USAGE_COLUMNS
        return [dict(zip(names, row, strict=True)) for row in rows]
