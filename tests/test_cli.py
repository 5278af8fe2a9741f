"""The command line: options and environment reach the config; a real process serves."""

from __future__ import annotations

import importlib
import signal

import pytest
from click.testing import CliRunner

from offloadd import cli
from offloadd.protocol.sse import parse_all


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
