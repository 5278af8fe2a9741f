"""The page at `/`, driven in a real headless Chromium (Debian's) by Playwright."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest
from playwright import async_api as playwright_api

from helpers import eventually, make_key, require_binary

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
async def browser():
    executable = require_binary("chromium", "chromium")
    async with playwright_api.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        await browser.close()


@pytest.fixture
async def page(browser, make_client):
    client = await make_client(upstream_key="sk-server-own-key")  # the page sends no key
    page = await browser.new_page(viewport={"width": 900, "height": 900})
    await page.goto(str(client.make_url("/")))
    yield page
    await page.close()


async def _status(page) -> str:
    return await page.text_content("#status")


async def _until_status(page, status: str, timeout: float = 10) -> None:
    async def shown() -> bool:
        shown = await _status(page)
        assert shown == status, f"the page shows {shown!r}, waiting for {status!r}"
        return True

    await eventually(shown, timeout=timeout)


async def _send(page, message: str, model: str) -> None:
    await page.fill("#message", message)
    await page.fill("#model", model)
    await page.click("#send")


class TestPage:
    async def test_tokens_appear_one_after_another_then_done(self, page, tmp_path):
        words = "one two three four five six seven eight"
        await page.fill("#system", "Answer briefly.")
        await _send(page, words, "mock?delay_ms=150")
        seen: list[str] = []

        async def done_watching_it_grow() -> bool:
            if await _status(page) == "done":
                return True
            text = await page.evaluate(
                "document.querySelector('.msg.assistant .text')?.textContent ?? ''"
            )
            if text and (not seen or text != seen[-1]):
                seen.append(text)
            return False

        await eventually(done_watching_it_grow, timeout=20)
        final = await page.text_content(".msg.assistant .text")
        assert final == words
        partial = [t for t in seen if t != words]
        assert len(partial) >= 3, seen  # the answer grew in steps, before `done`
        assert all(words.startswith(t) for t in partial)
        assert not await page.is_visible("#api-key-label")  # this server runs without auth
        urls = await page.eval_on_selector_all("#urls dd", "els => els.map(e => e.textContent)")
        assert any(u.endswith(".txt") for u in urls) and any(u.endswith("/stop") for u in urls)
        await page.click("#urls-box summary")
        shot = tmp_path / "page.png"
        await page.screenshot(path=str(shot), full_page=True)
        if target := os.environ.get("OFFLOADD_SCREENSHOT"):
            shutil.copy(shot, target)
        assert shot.stat().st_size > 10_000

    async def test_stop_button_stops_a_long_answer(self, page, api):
        await _send(page, "go on", "mock?tokens=3000&delay_ms=20")
        await _until_status(page, "streaming")
        await page.click("#stop")
        await _until_status(page, "stopped")
        [seen] = await api.upstream_requests()
        assert seen["client_closed"] is True

    async def test_no_request_hits_the_stream_after_done(self, page):
        stream_requests: list[str] = []
        page.on("request", lambda r: stream_requests.append(r.url) if ".txt" in r.url else None)
        await _send(page, "short answer", "mock?tokens=3")
        await _until_status(page, "done")
        # time is the subject: nothing reconnects for longer than the stream's `retry: 3000`
        await asyncio.sleep(4)
        assert len(stream_requests) == 1, stream_requests

    async def test_continuing_sends_from_status_url(self, page, api):
        await _send(page, "first turn", "mock?tokens=2")
        await _until_status(page, "done")
        await _send(page, "second turn", "mock")
        await _until_status(page, "done")
        first, second = await api.upstream_requests()
        assert [m["content"] for m in second["body"]["messages"]] == [
            "first turn",
            "t0 t1",
            "second turn",
        ]

    async def test_private_request_and_reload_resumes_watching(self, page):
        await page.select_option("#access", "private")
        await _send(page, "alpha beta gamma delta", "mock?delay_ms=100")
        await _until_status(page, "done")
        assert "watch=" in page.url and "token=" in page.url
        await page.reload()
        await _until_status(page, "done")
        assert await page.text_content(".msg.assistant .text") == "alpha beta gamma delta"


class TestPageWithAuth:
    async def test_asks_for_an_api_key_and_uses_it(self, browser, make_client, data_dir):
        key = make_key(data_dir)
        client = await make_client(auth=True, upstream_key="sk-server-own-key")
        page = await browser.new_page()
        await page.goto(str(client.make_url("/")))
        assert await page.is_visible("#api-key-label")
        await _send(page, "no key yet", "mock?tokens=2")
        await page.wait_for_selector("#error:not([hidden])")
        assert "missing_api_key" in await page.text_content("#error")
        await page.fill("#api-key", key)
        await _send(page, "with a key", "mock?tokens=2")
        await _until_status(page, "done")
        await page.close()


def test_screenshot_is_in_the_readme():
    root = Path(__file__).resolve().parent.parent
    assert "docs/screenshot.png" in (root / "README.md").read_text()
    assert (root / "docs" / "screenshot.png").stat().st_size > 10_000
