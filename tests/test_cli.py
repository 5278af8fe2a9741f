"""The command line: options and environment reach the config; a real process serves."""

from __future__ import annotations

import importlib
import signal
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from offloadd import cli
from offloadd.cli.reference import reference
from offloadd.protocol.sse import parse_all

PAGE = Path(__file__).resolve().parent.parent / "docs" / "cli.md"


@pytest.fixture
def captured(monkeypatch):
    configs = []
    # `cli.main` is the click group; the module that holds `run` is reached by its name
    monkeypatch.setattr(importlib.import_module("offloadd.cli.main"), "run", configs.append)
    return configs


class TestServeOptions:
    def test_defaults(self, captured, tmp_path, monkeypatch):
        monkeypatch.chdir(tmp_path)
        result = CliRunner().invoke(cli.main, ["serve"], env={})
        assert result.exit_code == 0, result.output
        [config] = captured
        assert (config.host, config.port) == ("127.0.0.1", 8080)
        assert config.upstream_url == "https://api.openai.com/v1"
        assert config.auth is True
        assert str(config.data) == "data"

    def test_every_option_also_from_the_environment(self, captured, tmp_path):
        env = {
            "OFFLOADD_DATA": str(tmp_path),
            "OFFLOADD_PORT": "9999",
            "OFFLOADD_HOST": "0.0.0.0",
            "OFFLOADD_PUBLIC_URL": "https://x.example",
            "OFFLOADD_UPSTREAM_URL": "mock",
            "OFFLOADD_UPSTREAM_KEY": "sk-own",
            "OFFLOADD_DEFAULT_MODEL": "gpt-4o-mini",
            "OFFLOADD_NO_AUTH": "1",
        }
        result = CliRunner().invoke(cli.main, ["serve"], env=env)
        assert result.exit_code == 0, result.output
        [config] = captured
        assert config.data == tmp_path and config.port == 9999 and config.host == "0.0.0.0"
        assert config.public_url == "https://x.example" and config.uses_mock
        assert config.upstream_key == "sk-own" and config.default_model == "gpt-4o-mini"
        assert config.auth is False

    def test_help_lists_the_options(self):
        result = CliRunner().invoke(cli.main, ["serve", "--help"])
        for option in ("--data", "--port", "--public-url", "--upstream-url", "--no-auth"):
            assert option in result.output
        # click lists any option; what can fail is one listed without saying what it does
        for param in cli.main.commands["serve"].params:
            assert param.opts[0] in result.output and getattr(param, "help", None), param.opts


class TestRealProcess:
    async def test_serve_with_the_mock_streams_an_answer(self, spawn, http, tmp_path):
        daemon = await spawn(
            "serve", "--data", str(tmp_path / "data"), "--upstream-url", "mock", "--no-auth"
        )
        assert f"listening on {daemon.url}" in daemon.output.decode()
        assert b"mock" in daemon.output
        body = {"messages": [{"role": "user", "content": "hello from a real process"}]}
        async with http.post(f"{daemon.url}/v1/stream-chatgpt", json=body) as resp:
            answer = await resp.json()
        assert answer["endpoints"]["stream_events_url"].startswith(daemon.url)
        async with http.get(answer["endpoints"]["stream_events_url"]) as resp:
            events = parse_all(await resp.read())
        assert events[-1].data == b"[DONE]"
        assert b"real" in b"".join(e.data for e in events)
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait() == 0


class TestReference:
    """docs/cli.md is generated from the commands (`python -m offloadd.cli.reference`)."""

    def test_the_page_is_the_generated_reference(self):
        assert PAGE.read_text() == reference(), (
            "docs/cli.md is stale: python -m offloadd.cli.reference > docs/cli.md"
        )

    def test_every_serve_option_is_in_the_page_with_its_variable(self):
        section = PAGE.read_text().split("## `offloadd serve`\n")[1].split("\n## ")[0]
        rows = {line.split("`")[1]: line for line in section.splitlines() if line.startswith("| `")}
        serve = cli.main.commands["serve"]
        for param in serve.params:
            assert param.opts[0] in rows, f"{param.opts[0]} is missing from docs/cli.md"
            names = [param.envvar] if isinstance(param.envvar, str) else param.envvar or []
            for name in names:  # a list of variables: each one is in the row
                assert f"`{name}`" in rows[param.opts[0]], (param.opts[0], name)
        assert len(rows) == len(serve.params)  # and no row for an option that is gone

    def test_a_new_option_appears_with_its_metadata(self):
        @click.group()
        def group() -> None:
            """A group."""

        @group.command()
        @click.option("--answer", default=42, envvar="X_ANSWER", help="What | it is.")
        @click.option("--loud", is_flag=True, help="Shout.")
        def ask(answer: int, loud: bool) -> None:
            """Ask."""

        text = reference(group)
        assert "## `offloadd ask`" in text and "offloadd ask [OPTIONS]" in text
        assert "| `--answer` | integer | `42` | `X_ANSWER` | What \\| it is. |" in text
        assert "| `--loud` | flag | off |  | Shout. |" in text
