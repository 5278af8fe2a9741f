"""The command line: options and environment reach the config; a real process serves."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys

import aiohttp
import pytest
from click.testing import CliRunner

from offloadd import cli
from offloadd.sse import parse_all


@pytest.fixture
def captured(monkeypatch):
    configs = []
    monkeypatch.setattr(cli, "run", configs.append)
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TestRealProcess:
    async def test_serve_with_the_mock_streams_an_answer(self, tmp_path):
        port = _free_port()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "offloadd",
            "serve",
            "--data",
            str(tmp_path / "data"),
            "--upstream-url",
            "mock",
            "--no-auth",
            "--port",
            str(port),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
            assert f"listening on http://127.0.0.1:{port}" in line
            assert "mock" in line
            async with aiohttp.ClientSession() as session:
                base = f"http://127.0.0.1:{port}"
                body = {"messages": [{"role": "user", "content": "hello from a real process"}]}
                async with session.post(f"{base}/v1/stream-chatgpt", json=body) as resp:
                    answer = await resp.json()
                assert answer["endpoints"]["stream_events_url"].startswith(base)
                async with session.get(answer["endpoints"]["stream_events_url"]) as resp:
                    events = parse_all(await resp.read())
            assert events[-1].data == b"[DONE]"
            assert b"real" in b"".join(e.data for e in events)
        finally:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 20)
        assert proc.returncode == 0
