"""`offloadd keys …`: making, listing, revoking keys and reading their usage."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import click

from offloadd.cli.options import DATA_OPTION, KEYS_OPTION, PLANS_OPTION


def _with_keys(data: Path, plans: Path | None, keys_url: str | None, method: str, *args):
    """Call one method of the key store the options name (SQLite, or PostgreSQL), then
    close it; the PostgreSQL store is asynchronous, so it runs in its own event loop."""
    from offloadd.keys.base import load_plans
    from offloadd.keys.sqlite import SQLiteKeys

    if keys_url:
        from offloadd.errors import Unavailable
        from offloadd.keys.postgres import PostgresKeys

        async def call():
            store = PostgresKeys(keys_url, load_plans(plans))
            try:
                return await getattr(store, method)(*args)
            finally:
                await store.close()

        try:
            return asyncio.run(call())
        except Unavailable as e:
            raise click.ClickException(e.message) from None
    store = SQLiteKeys(data, load_plans(plans))
    try:
        return getattr(store, method)(*args)
    finally:
        store.close()


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts)) if ts else "-"


@click.group()
def keys() -> None:
    """Manage offloadd API keys (stored only as hashes)."""


@keys.command("create")
@click.option("--name", required=True, help="A name for the key's owner.")
@click.option("--plan", default="free", show_default=True, help="Plan: free, unlimited, …")
@DATA_OPTION
@PLANS_OPTION
@KEYS_OPTION
def keys_create(name: str, plan: str, data: Path, plans: Path | None, keys_url: str | None) -> None:
    """Create a key; it is shown once, on the last line."""
    try:
        key = _with_keys(data, plans, keys_url, "create", name, plan)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"Created key {name!r} on plan {plan!r}. It is shown only now; keep it safe:")
    click.echo(key)


@keys.command("list")
@DATA_OPTION
@PLANS_OPTION
@KEYS_OPTION
def keys_list(data: Path, plans: Path | None, keys_url: str | None) -> None:
    """List keys: name, prefix, plan, created, last used, requests this month."""
    rows = _with_keys(data, plans, keys_url, "list")
    click.echo(
        f"{'NAME':<20} {'PREFIX':<12} {'PLAN':<10} {'CREATED':<16} {'LAST USED':<16} "
        f"{'MONTH':>6}  STATE"
    )
    for r in rows:
        state = "revoked" if r["revoked_at"] else "active"
        click.echo(
            f"{r['name']:<20} {r['prefix']:<12} {r['plan']:<10} {_when(r['created_at']):<16} "
            f"{_when(r['last_used_at']):<16} {r['month']:>6}  {state}"
        )


@keys.command("revoke")
@click.argument("name_or_prefix")
@DATA_OPTION
@KEYS_OPTION
def keys_revoke(name_or_prefix: str, data: Path, keys_url: str | None) -> None:
    """Revoke a key by its name or its prefix."""
    count = _with_keys(data, None, keys_url, "revoke", name_or_prefix)
    if not count:
        raise click.ClickException(f"no active key named or prefixed {name_or_prefix!r}")
    click.echo(f"revoked {count} key(s)")


@keys.command("usage")
@DATA_OPTION
@KEYS_OPTION
def keys_usage(data: Path, keys_url: str | None) -> None:
    """Requests and tokens per key and month (tokens estimated where usage never came)."""
    rows = _with_keys(data, None, keys_url, "usage")
    click.echo(
        f"{'MONTH':<8} {'NAME':<20} {'PREFIX':<12} {'PLAN':<10} {'REQUESTS':>8} "
        f"{'TOKENS':>10} {'ESTIMATED':>9}"
    )
    for r in rows:
        click.echo(
            f"{r['period']:<8} {r['name']:<20} {r['prefix']:<12} {r['plan']:<10} "
            f"{r['requests']:>8} {r['tokens']:>10} {r['estimated_tokens']:>9}"
        )
