"""The command line's group, `offloadd`: `serve`, `mock-upstream`, `webhook-secret` and `gc`
here; `keys …` (`keys.py`) and `ask`/`follow` (`client_cmds.py`) are added to it.

Only the `cli` package reads argv and the `OFFLOADD_*` environment: `serve` builds one
`Config` and hands it to the server (`server/serve.py`), which hands it to the app factory.
"""

from __future__ import annotations

import os
from pathlib import Path

import click
from aiohttp import web

from offloadd.cli.client_cmds import ask, follow
from offloadd.cli.keys import keys
from offloadd.cli.options import DATA_OPTION, KEYS_OPTION
from offloadd.config import ANTHROPIC_URL, MOCK, OPENAI_URL, Config
from offloadd.mock.app import make_mock_app
from offloadd.server.logs import setup


def _origins(value: str) -> tuple[str, ...]:
    return tuple(o.strip() for o in value.split(",") if o.strip())


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    from offloadd.storage.retention import parse_duration

    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


@click.group()
@click.version_option(package_name="offloadd")
def main() -> None:
    """offloadd: a self-hosted OffloadGPT."""


@main.command()
@click.option(
    "--data",
    type=click.Path(file_okay=False, path_type=Path),
    default="./data",
    show_default=True,
    envvar="OFFLOADD_DATA",
    help="Data directory (conversations).",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    envvar="OFFLOADD_HOST",
    help="Address to listen on.",
)
@click.option(
    "--port",
    default=8080,
    show_default=True,
    type=int,
    envvar="OFFLOADD_PORT",
    help="Port to listen on.",
)
@click.option(
    "--public-url",
    envvar="OFFLOADD_PUBLIC_URL",
    help="Base URL clients reach this server at (default: from each request).",
)
@click.option(
    "--upstream-url",
    default=OPENAI_URL,
    show_default=True,
    envvar="OFFLOADD_UPSTREAM_URL",
    help="OpenAI-compatible base URL, or `mock` for the built-in mock model.",
)
@click.option(
    "--upstream-key",
    envvar="OFFLOADD_UPSTREAM_KEY",
    help="The server's own upstream key, for requests that bring none.",
)
@click.option(
    "--anthropic-url",
    default=ANTHROPIC_URL,
    show_default=True,
    envvar="OFFLOADD_ANTHROPIC_URL",
    help="Anthropic's base URL (no /v1) for POST /v1/messages, or `mock`.",
)
@click.option(
    "--anthropic-key",
    envvar=["OFFLOADD_ANTHROPIC_KEY", "ANTHROPIC_API_KEY"],
    help="The server's own Anthropic key, for /v1/messages requests that bring none.",
)
@click.option(
    "--default-model",
    default="gpt-3.5-turbo",
    show_default=True,
    envvar="OFFLOADD_DEFAULT_MODEL",
    help="Model used when a request names none.",
)
@click.option(
    "--plans",
    "plans_file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="OFFLOADD_PLANS",
    help="Plans file (TOML or JSON) with quotas per plan.",
)
@click.option(
    "--retention",
    callback=_duration,
    envvar="OFFLOADD_RETENTION",
    help="Remove finished conversations older than this (30d, 12h…), checked hourly.",
)
@click.option(
    "--accel-redirect",
    envvar="OFFLOADD_ACCEL_REDIRECT",
    help="Behind nginx: hand finished public files to this internal location "
    "(e.g. /_offloadd_files/) with X-Accel-Redirect.",
)
@click.option(
    "--keepalive",
    default=15.0,
    show_default=True,
    envvar="OFFLOADD_KEEPALIVE",
    help="Seconds between `: keep-alive` comments on idle streams.",
)
@click.option(
    "--workers",
    default=1,
    show_default=True,
    envvar="OFFLOADD_WORKERS",
    help="Processes serving one socket (one per core).",
)
@click.option(
    "--fd", type=int, envvar="OFFLOADD_FD", help="Serve on this inherited listening socket."
)
@click.option("--unix", envvar="OFFLOADD_UNIX", help="Serve on a Unix socket at this path.")
@click.option(
    "--allow-private-webhooks",
    is_flag=True,
    envvar="OFFLOADD_ALLOW_PRIVATE_WEBHOOKS",
    help="Let `webhook_url` reach loopback and private addresses.",
)
@click.option(
    "--webhook-secret",
    envvar="OFFLOADD_WEBHOOK_SECRET",
    help="Secret for webhook signatures (default: DATA/webhook-secret, made on first use).",
)
@click.option(
    "--no-auth",
    is_flag=True,
    envvar="OFFLOADD_NO_AUTH",
    help="Accept create requests without an offloadd API key (trusted setups only).",
)
@click.option(
    "--max-timeout",
    default=90.0,
    show_default=True,
    envvar="OFFLOADD_MAX_TIMEOUT",
    help="Longest `timeout` (seconds) a request may ask for.",
)
@click.option(
    "--max-body",
    default=1024 * 1024,
    show_default=True,
    envvar="OFFLOADD_MAX_BODY",
    help="Largest create body, in bytes.",
)
@click.option(
    "--cors-origins",
    default="*",
    show_default=True,
    envvar="OFFLOADD_CORS_ORIGINS",
    help="Origins allowed to read status, stream and stop URLs (comma-separated).",
)
@click.option(
    "--create-cors-origins",
    default="",
    envvar="OFFLOADD_CREATE_CORS_ORIGINS",
    help="Origins allowed to call the create endpoints from a browser (default none).",
)
@click.option(
    "--grace",
    default=10.0,
    show_default=True,
    envvar="OFFLOADD_GRACE",
    help="Seconds running requests may finish in on shutdown.",
)
@click.option(
    "--forwarded-allow-ips",
    default="127.0.0.1,::1",
    show_default=True,
    envvar="OFFLOADD_FORWARDED_ALLOW_IPS",
    help="Addresses whose X-Forwarded-Host/-Proto are believed (comma-separated; * for any).",
)
@click.option(
    "--header-timeout",
    default=60.0,
    show_default=True,
    envvar="OFFLOADD_HEADER_TIMEOUT",
    help="Seconds a new connection has to send its request headers.",
)
@click.option(
    "--body-timeout",
    default=60.0,
    show_default=True,
    envvar="OFFLOADD_BODY_TIMEOUT",
    help="Seconds a create request has to send its body.",
)
@click.option(
    "--max-connections",
    default=10_000,
    show_default=True,
    envvar="OFFLOADD_MAX_CONNECTIONS",
    help="Connections served at once per process; more are answered 503.",
)
@click.option(
    "--owner-stale",
    default=10.0,
    show_default=True,
    envvar="OFFLOADD_OWNER_STALE",
    help="Seconds without a heartbeat after which another daemon's requests are ended.",
)
@click.option(
    "--long-poll-timeout",
    default=20.0,
    show_default=True,
    envvar="OFFLOADD_LONG_POLL_TIMEOUT",
    help="Seconds a Durable Streams long-poll waits for data before its 204.",
)
@KEYS_OPTION
@click.option(
    "--log-level",
    default="INFO",
    show_default=True,
    envvar="OFFLOADD_LOG_LEVEL",
    help="Lowest level logged: DEBUG, INFO, WARNING, ERROR or CRITICAL.",
)
def serve(**options) -> None:
    """Run the daemon."""
    setup(options["log_level"])
    config = Config(
        data=options["data"],
        host=options["host"],
        port=options["port"],
        public_url=options["public_url"],
        upstream_url=options["upstream_url"],
        upstream_key=options["upstream_key"],
        anthropic_url=options["anthropic_url"],
        anthropic_key=options["anthropic_key"],
        default_model=options["default_model"],
        auth=not options["no_auth"],
        plans_file=options["plans_file"],
        keys_url=options["keys_url"],
        owner_stale_seconds=options["owner_stale"],
        allow_private_webhooks=options["allow_private_webhooks"],
        webhook_secret=options["webhook_secret"],
        max_timeout=options["max_timeout"],
        default_timeout=min(90.0, options["max_timeout"]),
        max_body_bytes=options["max_body"],
        cors_origins=_origins(options["cors_origins"]),
        create_cors_origins=_origins(options["create_cors_origins"]),
        grace_seconds=options["grace"],
        workers=options["workers"],
        keepalive_seconds=options["keepalive"],
        accel_redirect=options["accel_redirect"],
        retention_seconds=options["retention"],
        fd=options["fd"],
        unix=options["unix"],
        forwarded_allow_ips=_origins(options["forwarded_allow_ips"]),
        header_timeout=options["header_timeout"],
        body_timeout=options["body_timeout"],
        max_connections=options["max_connections"],
        long_poll_seconds=options["long_poll_timeout"],
    )
    run(config)


def describe_upstream(config: Config) -> str:
    if config.upstream_url == MOCK:
        return "the built-in mock model (no OpenAI key needed)"
    key = "the server's own key" if config.upstream_key else "the key each request brings"
    return f"{config.upstream_url} with {key}"


def run(config: Config) -> None:
    """Start the server and serve until SIGINT or SIGTERM."""
    from offloadd.server.serve import serve

    try:
        config.data.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise click.ClickException(f"cannot use data directory {config.data}: {e}") from e
    try:
        serve(config, lambda: click.echo(_start_line(config)))
    except OSError as e:
        raise click.ClickException(f"cannot listen: {e}") from e


def _start_line(config: Config) -> str:
    if config.unix:
        place = f"unix:{config.unix}"
    elif config.fd is not None or os.environ.get("LISTEN_FDS"):
        place = "an inherited socket"
    else:
        place = f"http://{config.host}:{config.port}"
    workers = f" ({config.workers} workers)" if config.workers > 1 else ""
    return (
        f"offloadd listening on {place}{workers}, "
        f"upstream: {describe_upstream(config)}, "
        f"Anthropic: {'the built-in mock' if config.anthropic_mock else config.anthropic_url}, "
        f"data: {config.data}"
    )


@main.command("mock-upstream")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8090, show_default=True, type=int, help="Port to listen on.")
def mock_upstream(host: str, port: int) -> None:
    """Run the mock OpenAI-compatible upstream (SPEC §8)."""
    from offloadd.server.serve import use_uvloop

    use_uvloop()  # as `serve` does: the mock shares a benchmark's cores with offloadd
    web.run_app(
        make_mock_app(),
        host=host,
        port=port,
        print=lambda _: click.echo(f"mock upstream listening on http://{host}:{port}/v1"),
        handler_cancellation=True,
        access_log=None,
    )


# --- keys -------------------------------------------------------------------------------

main.add_command(keys)


@main.command("webhook-secret")
@DATA_OPTION
def webhook_secret(data: Path) -> None:
    """Print the secret webhooks are signed with (HMAC-SHA256), making it if needed."""
    from offloadd.domain.webhooks import load_or_create_secret

    click.echo(load_or_create_secret(data).decode())


# --- retention --------------------------------------------------------------------------


@main.command()
@click.option(
    "--older-than",
    required=True,
    callback=_duration,
    help="Age of conversations to remove: 30d, 12h, 90m, …",
)
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@DATA_OPTION
def gc(older_than: float, dry_run: bool, data: Path) -> None:
    """Remove finished conversations older than a cutoff (never a running one), and
    application streams expired or idle for longer than it."""
    from offloadd.requests.streams import collect as collect_streams
    from offloadd.storage.retention import collect
    from offloadd.storage.streams import StreamFiles

    paths = collect(data, older_than, dry_run=dry_run)
    for path in paths:
        click.echo(path.relative_to(data).with_suffix(""))
    streams = collect_streams(StreamFiles(data), older_than, dry_run=dry_run)
    for stream in streams:
        click.echo(f"stream {stream}")
    verb = "would remove" if dry_run else "removed"
    click.echo(f"{verb} {len(paths)} conversation(s) and {len(streams)} stream(s)")


# --- the terminal client: client_cmds.py ------------------------------------------------

main.add_command(ask)
main.add_command(follow)
