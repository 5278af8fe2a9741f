"""What the tests share besides fixtures: the seed request, a client's verbs (`Api`), how to
read a stream's ending and text, where a conversation's files are, a real daemon process,
and `eventually`, the one way a test waits for something to become true."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient
from yarl import URL

from offloadd.protocol.sse import parse_all
from realworld import Daemon, free_port

__all__ = [
    "ANSWER_KEYS",
    "OPENAI_KEY",
    "SEED_BODY",
    "Api",
    "Daemon",
    "eventually",
    "file_of",
    "files_under",
    "free_port",
    "how_it_ended",
    "make_key",
    "require_binary",
    "status_of",
    "stream_text",
    "wait_status",
    "wait_words",
]

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
# The documented keys of a create's answer, in order; the status document begins with them
ANSWER_KEYS = ["status", "created_at", "conversation_id", "README", "authorization", "endpoints"]


async def eventually(
    check: Callable[[], Any | Awaitable[Any]], timeout: float = 10, interval: float = 0.02
) -> Any:
    """The first truthy value `check()` returns (it may be async), polled every `interval`.

    A check says why it is not there yet by raising AssertionError (or returning a falsy
    value); when `timeout` runs out, that last word is the failure, so a test that waits
    in vain says what it saw instead of a bare TimeoutError.
    """
    last = "nothing yet"
    timer = asyncio.timeout(timeout)
    try:
        async with timer:
            while True:
                try:
                    value = check()
                    if inspect.isawaitable(value):
                        value = await value
                    if value:
                        return value
                    last = f"{check.__name__}() returned {value!r}"
                except AssertionError as e:
                    last = str(e) or repr(e)
                await asyncio.sleep(interval)
    except TimeoutError:
        if not timer.expired():
            raise
        raise AssertionError(f"not so within {timeout} s; last seen: {last}") from None


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

    async def wait_status(self, url: str, *statuses: str, timeout: float = 15) -> dict:
        return await wait_status(self, url, *statuses, timeout=timeout)

    async def upstream_requests(self) -> list[dict]:
        resp = await self.mock_client_get("/_mock/requests")
        return resp["requests"]

    async def mock_client_get(self, path: str) -> dict:
        import aiohttp

        async with aiohttp.ClientSession() as s, s.get(self.mock.make_url(path)) as r:
            return await r.json()


async def status_of(source, url: str) -> dict:
    """The status document at `url`, read through an `Api`, an app's test client or a
    plain aiohttp session."""
    if isinstance(source, Api):
        return await source.status(url)
    if isinstance(source, TestClient):
        url = URL(url).path_qs
    async with source.get(url) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def wait_status(source, url: str, *statuses: str, timeout: float = 15) -> dict:
    """The status document once it says one of `statuses` (`source` as for `status_of`)."""

    async def reached() -> dict:
        doc = await status_of(source, url)
        assert doc["status"] in statuses, f"status {doc['status']!r}, waiting for {statuses}"
        return doc

    return await eventually(reached, timeout=timeout)


async def wait_words(source, url: str, words: int, timeout: float = 15) -> dict:
    """The status document once the request is streaming and its text has `words` words:
    tokens have flowed, and the request is still running."""

    async def flowed() -> dict:
        doc = await status_of(source, url)
        body = (doc.get("response") or {}).get("body") or {"choices": [{"message": {}}]}
        text = body["choices"][0]["message"].get("content") or ""
        assert doc["status"] == "streaming", f"status {doc['status']!r} with text {text!r}"
        assert len(text.split()) >= words, f"{len(text.split())} words of {words}: {text!r}"
        return doc

    return await eventually(flowed, timeout=timeout)


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


def make_key(data_dir: Path, name: str = "app", plan: str = "free", plans=None) -> str:
    """A new API key in the SQLite store under `data_dir`, made as an operator would: with
    `offloadd keys create`."""
    from click.testing import CliRunner

    from offloadd import cli

    result = CliRunner().invoke(
        cli.main,
        ["keys", "create", "--name", name, "--plan", plan, "--data", str(data_dir)]
        + (["--plans", str(plans)] if plans else []),
    )
    assert result.exit_code == 0, result.output
    return result.output.strip().splitlines()[-1]


def require_binary(package: str, binary: str) -> str:
    """The path of `binary`; a clear failure naming the Debian package when it is missing.

    The test command's setup step (`tests/setup.sh`) installs these packages; a test whose
    real component is missing fails rather than skipping, so a green run means it ran.
    """
    found = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/usr/bin")
    if not found:
        pytest.fail(
            f"{binary} is missing: install Debian's {package} (`sh tests/setup.sh` as root does)",
            pytrace=False,
        )
    return found


# Anthropic's Messages API, in the tests of /v1/messages
ANTHROPIC_KEY = "sk-ant-test-Zq9offloaddSecretKey000"
HI = [{"role": "user", "content": "hello claude over there"}]
LONG = "mock?tokens=400&delay_ms=10"


async def upstream_posts(api, model: str) -> int:
    return len([r for r in await api.upstream_requests() if r["model"] == model])


@contextlib.asynccontextmanager
async def closed_after(make: Callable[..., Any]) -> AsyncIterator[Callable[..., Any]]:
    """`make`, as a fixture hands it out: every client it made is closed at the end."""
    made: list = []

    def making(*args: Any, **kwargs: Any) -> Any:
        made.append(client := make(*args, **kwargs))
        return client

    try:
        yield making
    finally:
        for client in made:
            await client.close()
