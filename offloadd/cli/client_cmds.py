"""`offloadd ask` and `offloadd follow`: the terminal client's commands."""

from __future__ import annotations

import click

# --- the terminal client -----------------------------------------------------------------


@click.command()
@click.argument("question")
@click.option("--system", help="A system prompt.")
@click.option("--model", help="Model (default: the server's).")
@click.option("--private", is_flag=True, help="Make the conversation private.")
@click.option(
    "--server",
    default="http://127.0.0.1:8080",
    show_default=True,
    envvar="OFFLOADD_SERVER",
    help="The offloadd server.",
)
@click.option("--api-key", envvar="OFFLOADD_API_KEY", help="Your offloadd API key.")
@click.option(
    "--openai-key", envvar="OPENAI_API_KEY", help="Upstream key (default: the server's own)."
)
@click.option(
    "--api",
    type=click.Choice(["offloadgpt", "responses", "messages"]),
    default="offloadgpt",
    show_default=True,
    help="Create with the original's endpoint, OpenAI's Responses API (background), or "
    "Anthropic's Messages API.",
)
@click.option(
    "--anthropic-key",
    envvar="ANTHROPIC_API_KEY",
    help="Anthropic key, for --api messages (default: the server's own).",
)
def ask(
    question: str,
    system: str | None,
    model: str | None,
    private: bool,
    server: str,
    api_key: str | None,
    openai_key: str | None,
    api: str,
    anthropic_key: str | None,
) -> None:
    """Ask a question and print the answer as it streams (Ctrl-C stops it)."""
    import asyncio
    import sys

    from offloadd.cli.client import ask as run_ask

    messages = [{"role": "system", "content": system}] if system else []
    body: dict = {"messages": [*messages, {"role": "user", "content": question}]}
    if model:
        body["model"] = model
    if private:
        body["access"] = "private"
    try:
        code = asyncio.run(
            run_ask(server, body, api_key, openai_key, sys.stdout, api, anthropic_key)
        )
    except aiohttp_errors() as e:
        raise click.ClickException(f"cannot reach {server}: {e}") from None
    sys.exit(code)


@click.command()
@click.argument("url")
@click.option("--token", help="The bearer token of a private conversation.")
def follow(url: str, token: str | None) -> None:
    """Follow a stream URL (live or finished), resuming after a dropped connection."""
    import asyncio
    import sys

    from offloadd.cli.client import follow_url

    try:
        code = asyncio.run(follow_url(url, token, sys.stdout))
    except aiohttp_errors() as e:
        raise click.ClickException(f"cannot reach {url}: {e}") from None
    sys.exit(code)


def aiohttp_errors() -> tuple[type[Exception], ...]:
    import aiohttp

    return (aiohttp.ClientError, OSError)
