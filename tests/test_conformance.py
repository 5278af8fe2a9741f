"""The Durable Streams conformance suite (`@durable-streams/server-conformance-tests`, pinned
in tests/js/package-lock.json) against a real `offloadd serve`: 0 failed (issue 25)."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import orjson
import pytest

JS = Path(__file__).parent / "js"


async def test_the_conformance_suite_passes_in_full(spawn, tmp_path):
    node, npx = shutil.which("node"), shutil.which("npx")
    if not (node and npx and (JS / "node_modules" / "vitest").is_dir()):
        pytest.fail("node and tests/js/node_modules are needed: run tests/setup.sh", pytrace=False)
    # A long-poll answers its 204 within Vitest's 5 s test timeout (the production
    # default, 20 s, is for caches in front of offloadd)
    server = await spawn(
        "serve", "--data", str(tmp_path / "data"), "--no-auth", "--upstream-url", "mock",
        "--long-poll-timeout", "1.5",
    )  # fmt: skip
    report = tmp_path / "vitest.json"
    proc = await asyncio.create_subprocess_exec(
        npx,
        "vitest",
        "run",
        "--reporter=json",
        f"--outputFile={report}",
        cwd=JS,
        env={**os.environ, "DS_BASE_URL": server.url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(proc.communicate(), 300)
    assert report.exists(), output.decode(errors="replace")[-3000:]
    results = orjson.loads(report.read_bytes())
    failed = [
        " > ".join([*t["ancestorTitles"], t["title"]])
        + "\n  "
        + (t["failureMessages"] or [""])[0][:500]
        for f in results["testResults"]
        for t in f["assertionResults"]
        if t["status"] == "failed"
    ]
    assert not failed, "\n".join(failed)
    assert results["numFailedTests"] == 0 and results["numPassedTests"] >= 332
    assert results["numPendingTests"] + results["numTodoTests"] <= 6  # what the suite skips
    assert b'"status":5' not in server.output  # and no request ever failed on the server
