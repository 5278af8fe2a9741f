"""Fixtures only: a real mock upstream on a port, offloadd apps pointed at it, real daemons.
What tests share besides fixtures is in `helpers.py`."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from pathlib import Path

import hypothesis
import pytest

from helpers import ANTHROPIC_KEY, OPENAI_KEY, Api, Daemon, closed_after
from offloadd.config import Config
from offloadd.http.app import make_app
from offloadd.mock.app import make_mock_app

# The fuzzers (hypothesis, schemathesis) are deterministic in the test command, so a
# green run is repeatable; `HYPOTHESIS_PROFILE=explore python -m pytest` draws new cases.
hypothesis.settings.register_profile("repeatable", derandomize=True)
hypothesis.settings.register_profile("explore", derandomize=False)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))


@pytest.fixture
async def mock_server(aiohttp_server):
    """The mock upstream, a real HTTP server on a loopback port."""
    return await aiohttp_server(make_mock_app())


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def config(data_dir: Path, mock_server) -> Config:
    return Config(
        data=data_dir,
        upstream_url=str(mock_server.make_url("/v1")),
        anthropic_url=str(mock_server.make_url("")),
        auth=False,
        poll_interval=0.02,
        grace_seconds=1.0,
        upstream_retries=0,
    )


@pytest.fixture
def make_client(aiohttp_client, config: Config):
    """An offloadd app on a real port, with config fields overridden as given."""

    async def make(**changes):
        return await aiohttp_client(make_app(dataclasses.replace(config, **changes)))

    return make


@pytest.fixture
async def client(make_client):
    return await make_client()


@pytest.fixture
def api(client, mock_server) -> Api:
    return Api(client, mock_server)


@pytest.fixture
def make_api(make_client, mock_server):
    async def make(**changes) -> Api:
        return Api(await make_client(**changes), mock_server)

    return make


@pytest.fixture
async def sdk():
    """`sdk(server, key, **headers)`: an official `openai.AsyncOpenAI` client on an `Api`'s
    server (or a base URL), with the upstream key in `X-OpenAI-API-Key`; closed after."""
    import openai

    def make(server, key: str = "unused", **headers):
        base = str(server.client.make_url("/v1")) if isinstance(server, Api) else server
        return openai.AsyncOpenAI(
            base_url=base,
            api_key=key,
            max_retries=0,
            default_headers={"X-OpenAI-API-Key": OPENAI_KEY, **headers},
        )

    async with closed_after(make) as made:
        yield made


@pytest.fixture
async def spawn():
    """Start real daemons; all are stopped at the end of the test."""
    daemons: list[Daemon] = []

    async def start(*args: str, ready: bytes = b"listening", wrap: tuple = (), **popen) -> Daemon:
        daemon = Daemon(*args, ready=ready, wrap=wrap, **popen)
        daemons.append(daemon)
        return await asyncio.to_thread(daemon.start)  # the test's loop serves meanwhile

    yield start
    for daemon in daemons:
        await asyncio.to_thread(daemon.stop)


@pytest.fixture
async def mock_process(spawn) -> Daemon:
    """The mock upstream as its own process, shared by the daemons a test starts."""
    return await spawn("mock-upstream", ready=b"mock upstream listening")


@pytest.fixture
def serve_with_mock(spawn, mock_process):
    """Start `offloadd serve` on `data` against the shared mock process, without auth."""

    async def start(data: Path, *args: str, **popen) -> Daemon:
        upstream = ("--upstream-url", f"{mock_process.url}/v1", "--upstream-key", "sk-own")
        return await spawn("serve", "--data", str(data), "--no-auth", *upstream, *args, **popen)

    return start


@pytest.fixture
async def http():
    import aiohttp

    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture(scope="session")
def postgres():
    """One server for the session (each test makes a database of its own); in a folder
    of /tmp, since pytest's own are closed to the `postgres` user the server runs as."""
    import contextlib
    import shutil
    import subprocess
    import tempfile

    from realworld import Postgres

    root = Path(tempfile.mkdtemp(prefix="offloadd-pg-"))
    try:
        try:
            server = Postgres(root)
        except RuntimeError as e:
            pytest.fail(str(e), pytrace=False)
        server.start()
        yield server
        with contextlib.suppress(subprocess.CalledProcessError):
            server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def pg_dsn(postgres) -> str:
    return await postgres.new_database()


@pytest.fixture
def no_sdk_environment(monkeypatch):
    """The SDK reads these even with explicit arguments: a developer's own must not leak in."""
    for name in ("ANTHROPIC_BASE_URL", "ANTHROPIC_CUSTOM_HEADERS", "ANTHROPIC_API_KEY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def claude():
    """`claude(base, key=…, **options)`: an `AsyncAnthropic` on an `Api`'s server (or a base
    URL), with the SDK's own retries unless told otherwise; closed after."""
    import anthropic

    def make(server, key: str = ANTHROPIC_KEY, **options):
        base = str(server.client.make_url("")) if hasattr(server, "client") else server
        return anthropic.AsyncAnthropic(base_url=base, api_key=key, **options)

    async with closed_after(make) as made:
        yield made


@pytest.fixture
async def hostile(aiohttp_server, aiohttp_client, config) -> Api:
    """An offloadd app whose upstreams (OpenAI's APIs and Anthropic's) are the hostile fake,
    which answers whatever each request's `model` scripts."""
    from hostile_upstream import make_hostile_app

    upstream = await aiohttp_server(make_hostile_app())
    changed = dataclasses.replace(
        config,
        upstream_url=str(upstream.make_url("/v1")),
        anthropic_url=str(upstream.make_url("")),
    )
    return Api(await aiohttp_client(make_app(changed)), upstream)
