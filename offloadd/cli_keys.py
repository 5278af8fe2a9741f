"""`offloadd keys …`: making, listing, revoking keys and reading their usage."""

from __future__ import annotations

import time
from pathlib import Path

import click

from offloadd.cli_options import DATA_OPTION, PLANS_OPTION


def _keys(data: Path, plans: Path | None):
    from offloadd.keys import SQLiteKeys, load_plans

    return SQLiteKeys(data, load_plans(plans))


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
def keys_create(name: str, plan: str, data: Path, plans: Path | None) -> None:
    """Create a key; it is shown once, on the last line."""
    store = _keys(data, plans)
    try:
        key = store.create(name, plan)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    finally:
        store.close()
    click.echo(f"Created key {name!r} on plan {plan!r}. It is shown only now; keep it safe:")
    click.echo(key)


@keys.command("list")
@DATA_OPTION
@PLANS_OPTION
def keys_list(data: Path, plans: Path | None) -> None:
    """List keys: name, prefix, plan, created, last used, requests this month."""
    store = _keys(data, plans)
    rows = store.list()
    store.close()
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
def keys_revoke(name_or_prefix: str, data: Path) -> None:
    """Revoke a key by its name or its prefix."""
    store = _keys(data, None)
    count = store.revoke(name_or_prefix)
    store.close()
    if not count:
        raise click.ClickException(f"no active key named or prefixed {name_or_prefix!r}")
    click.echo(f"revoked {count} key(s)")


@keys.command("usage")
@DATA_OPTION
def keys_usage(data: Path) -> None:
    """Requests per key and month."""
    store = _keys(data, None)
    rows = store.usage()
    store.close()
    click.echo(f"{'MONTH':<8} {'NAME':<20} {'PREFIX':<12} {'PLAN':<10} {'REQUESTS':>8}")
    for r in rows:
        click.echo(
            f"{r['period']:<8} {r['name']:<20} {r['prefix']:<12} {r['plan']:<10} {r['requests']:>8}"
        )
