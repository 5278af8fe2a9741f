"""Fixtures: a real mock upstream on a port, and offloadd apps pointed at it."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from pathlib import Path

import hypothesis
import orjson
import pytest
from yarl import URL

from offloadd.config import Config
from offloadd.http.app import make_app
from offloadd.mock.app import make_mock_app
from offloadd.protocol.sse import parse_all

SEED_BODY = {
    "messages": [
        {
            "role": "system",
            "content": "You are an assistant of an online store selling hardware and I do not "
            "want you to talk about anything other than my products",
        },
        {
            "role": "user",
            "content": "Can you resume the pros and cons of the Soundcore by Anker Space Q45 "
            "Adaptive Active Noise Cancelling Headphones?",
        },
    ]
}
OPENAI_KEY = "sk-test-Zq9offloaddSecretKey000"

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


class Api:
    """What a client of offloadd does, in a few verbs."""

    def __init__(self, client, mock_server):
        self.client, self.mock = client, mock_server

    async def create(
        self, body=None, *, path="/v1/stream-chatgpt", key=OPENAI_KEY, headers=None, **fields
    ):
        body = dict(body or SEED_BODY, **fields)
        headers = {**({"X-OpenAI-API-Key": key} if key else {}), **(headers or {})}
        resp = await self.client.post(path, json=body, headers=headers)
        assert resp.status == 200, await resp.text()
        return await resp.json()

    async def get(self, url: str, **kwargs):
        return await self.client.get(URL(url).path_qs, **kwargs)

    async def post(self, url: str, **kwargs):
        return await self.client.post(URL(url).path_qs, **kwargs)

    async def status(self, url: str) -> dict:
        resp = await self.get(url)
        assert resp.status == 200, await resp.text()
        return await resp.json()

    async def stream(self, url: str, **kwargs) -> bytes:
        resp = await self.get(url, **kwargs)
        assert resp.status == 200, await resp.text()
        return await resp.read()

    async def events(self, url: str, **kwargs):
        return parse_all(await self.stream(url, **kwargs))

    async def wait_status(self, url: str, *statuses: str, timeout: float = 10) -> dict:
        async with asyncio.timeout(timeout):
            while True:
                doc = await self.status(url)
                if doc["status"] in statuses:
                    return doc
                await asyncio.sleep(0.02)

    async def upstream_requests(self) -> list[dict]:
        resp = await self.mock_client_get("/_mock/requests")
        return resp["requests"]

    async def mock_client_get(self, path: str) -> dict:
        import aiohttp

        async with aiohttp.ClientSession() as s, s.get(self.mock.make_url(path)) as r:
            return await r.json()


@pytest.fixture
def api(client, mock_server) -> Api:
    return Api(client, mock_server)


@pytest.fixture
def make_api(make_client, mock_server):
    async def make(**changes) -> Api:
        return Api(await make_client(**changes), mock_server)

    return make


def how_it_ended(events: list) -> dict:
    """How a stream ended, told from the stream alone, as any reader can (README, *The event
    stream*): an event with an `error` key just before `[DONE]`, or else `done`."""
    assert events and events[-1].data == b"[DONE]", "the stream has no [DONE]"
    if len(events) > 1 and events[-2].data.startswith(b"{"):
        last = orjson.loads(events[-2].data)
        if "error" in last:
            return last
    return {"status": "done"}


def stream_text(events: list) -> str:
    """The text a reader of the stream shows: `choices[0].delta.content` of every chunk."""
    text = ""
    for event in events:
        if event.event is None and event.data.startswith(b"{"):
            choices = orjson.loads(event.data).get("choices")
            text += (choices[0].get("delta") or {}).get("content") or "" if choices else ""
    return text


@pytest.fixture
async def sdk():
    """`sdk(server, key, **headers)`: an official `openai.AsyncOpenAI` client on an `Api`'s
    server (or a base URL), with the upstream key in `X-OpenAI-API-Key`; closed after."""
    import openai

    made: list = []

    def make(server, key: str = "unused", **headers):
        base = str(server.client.make_url("/v1")) if isinstance(server, Api) else server
        client = openai.AsyncOpenAI(
            base_url=base,
            api_key=key,
            max_retries=0,
            default_headers={"X-OpenAI-API-Key": OPENAI_KEY, **headers},
        )
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


def file_of(data: Path, url: str) -> Path:
    """The file a conversation URL (status or stream) names under `data`."""
    from offloadd.storage.layout import parse_url

    found = parse_url(url)
    assert found, f"not a conversation URL: {url}"
    _, loc, suffix = found
    return data / f"{loc.rel}{suffix}"


def files_under(root: Path) -> list[Path]:
    """The conversations' files (not the key database or the daemons' own bookkeeping)."""
    return sorted(p for scope in ("pub", "priv") for p in (root / scope).rglob("*") if p.is_file())


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    """A real `offloadd` process (serve or mock-upstream) on a free loopback port."""

    def __init__(self, *args: str, ready: bytes = b"listening", wrap: tuple = (), **popen):
        self.port = free_port()
        self.args, self.ready, self.popen, self.wrap = args, ready, popen, wrap
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: asyncio.subprocess.Process | None = None
        self.output = b""

    async def start(self) -> Daemon:
        import os
        import sys

        self.proc = await asyncio.create_subprocess_exec(
            *self.wrap,  # e.g. `unshare …`: another host, as far as the daemon can tell
            sys.executable,
            "-m",
            "offloadd",
            *self.args,
            "--port",
            str(self.port),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            **{"env": {**os.environ, "PYTHONUNBUFFERED": "1"}, **self.popen},
        )
        async with asyncio.timeout(30):
            while self.ready not in (line := await self.proc.stdout.readline()):
                assert line, self.output.decode()
                self.output += line
        self.output += line
        self._drain = asyncio.create_task(self._read_output())
        return self

    async def _read_output(self) -> None:
        while chunk := await self.proc.stdout.read(65536):
            self.output += chunk

    def signal(self, sig: int) -> None:
        """Signal the daemon itself (inside a wrapper such as `unshare`, its last child)."""
        import os

        pid = self.proc.pid
        while self.wrap:
            try:
                with open(f"/proc/{pid}/task/{pid}/children") as f:
                    children = f.read().split()
            except OSError:
                break
            if not children:
                break
            pid = int(children[0])
        os.kill(pid, sig)

    async def wait(self, timeout: float = 30) -> int:
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        await self._drain
        return code

    async def close(self) -> None:
        import signal

        if self.proc and self.proc.returncode is None:
            self.signal(signal.SIGTERM)
            try:
                await self.wait(20)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


@pytest.fixture
async def spawn():
    """Start real daemons; all are stopped at the end of the test."""
    daemons: list[Daemon] = []

    async def start(*args: str, ready: bytes = b"listening", wrap: tuple = (), **popen) -> Daemon:
        daemon = await Daemon(*args, ready=ready, wrap=wrap, **popen).start()
        daemons.append(daemon)
        return daemon

    yield start
    for daemon in daemons:
        await daemon.close()


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


def require_binary(package: str, binary: str) -> str:
    """The path of `binary`; a clear failure naming the Debian package when it is missing.

    The test command's setup step (`tests/setup.sh`) installs these packages; a test whose
    real component is missing fails rather than skipping, so a green run means it ran.
    """
    import shutil

    found = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/usr/bin")
    if not found:
        pytest.fail(
            f"{binary} is missing: install Debian's {package} (`sh tests/setup.sh` as root does)",
            pytrace=False,
        )
    return found


async def wait_status(http, url: str, *statuses: str, timeout: float = 15) -> dict:
    """Poll a status URL (with a plain aiohttp session) until it reaches one of `statuses`."""
    async with asyncio.timeout(timeout):
        while True:
            async with http.get(url) as resp:
                doc = await resp.json()
            if doc["status"] in statuses:
                return doc
            await asyncio.sleep(0.05)


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
