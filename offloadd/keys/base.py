"""What every key store shares: the `KeyStore` protocol, plans, charges and the limits they
report, and the one rule of refusal (`limits_for`), so every store refuses alike.

The stores: `sqlite` (one machine, in the data directory) and `postgres` (several hosts).
"""

from __future__ import annotations

import calendar
import hashlib
import json
import secrets
import time
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from offloadd.errors import TooManyRequests

USAGE_COLUMNS = ("name", "prefix", "plan", "period", "requests", "tokens", "estimated_tokens")
KEY_PREFIX = "ofd_"
DEFAULT_PLANS = {
    "free": {"monthly": 1000, "per_minute": 10},
    "unlimited": {"monthly": None, "per_minute": None},
}


@dataclass(frozen=True)
class Plan:
    name: str
    monthly: int | None
    per_minute: int | None
    monthly_tokens: int | None = None  # prompt + completion tokens a month


@dataclass(frozen=True)
class Limits:
    """What the `X-RateLimit-*` headers say: the limit that binds, what is left, and the
    seconds until it resets."""

    limit: int
    remaining: int
    reset: int

    def headers(self) -> dict:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(max(0, self.remaining)),
            "X-RateLimit-Reset": str(self.reset),
        }


@dataclass(frozen=True)
class Charge:
    key_id: int
    period: str
    limits: Limits | None


def load_plans(path: Path | None) -> dict[str, Plan]:
    """Plans from a TOML or JSON file (`[free] monthly = 1000, per_minute = 10`), else defaults."""
    raw: dict = DEFAULT_PLANS
    if path is not None:
        text = path.read_text()
        raw = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    return {
        name: Plan(
            name,
            (v or {}).get("monthly"),
            (v or {}).get("per_minute"),
            (v or {}).get("monthly_tokens"),
        )
        for name, v in raw.items()
    }


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def month_period(now: float) -> str:
    return time.strftime("%Y-%m", time.gmtime(now))


def _month_reset(now: float) -> int:
    d = datetime.fromtimestamp(now, UTC)
    year, month = (d.year + 1, 1) if d.month == 12 else (d.year, d.month + 1)
    return int(calendar.timegm((year, month, 1, 0, 0, 0)) - now) + 1


class KeyStore(Protocol):
    """What the server needs of a key store; SQLite here, a database server across hosts."""

    async def charge(self, key: str) -> Charge: ...
    async def refund(self, charge: Charge) -> None: ...
    async def check(self, key: str) -> None: ...
    async def add_tokens(self, charge: Charge, tokens: int, estimated: bool) -> None: ...


def limits_for(
    plan: Plan, month_used: int, minute_used: int, tokens_used: int, now: float
) -> Limits | None:
    """The figures to report before this request, or TooManyRequests if it may not run.
    Shared by every key store, so they all refuse alike."""
    if plan.monthly_tokens is not None and tokens_used >= plan.monthly_tokens:
        spent = Limits(plan.monthly_tokens, 0, _month_reset(now))
        raise _over(f"the monthly budget of {plan.monthly_tokens} tokens is used up", spent)
    month = plan.monthly is not None and Limits(
        plan.monthly, plan.monthly - month_used, _month_reset(now)
    )
    minute = plan.per_minute is not None and Limits(
        plan.per_minute, plan.per_minute - minute_used, 60 - int(now % 60)
    )
    if month and month.remaining <= 0:
        raise _over(f"the monthly quota of {plan.monthly} requests is used up", month)
    if minute and minute.remaining <= 0:
        raise _over(f"the rate of {plan.per_minute} requests a minute is exceeded", minute)
    return month or minute or None  # the month's figures while it has room, as RapidAPI did


def _over(message: str, limits: Limits) -> TooManyRequests:
    headers = {**limits.headers(), "Retry-After": str(limits.reset)}
    return TooManyRequests(message, code="quota_exceeded", headers=headers)
