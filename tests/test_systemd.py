"""The systemd units a packager would accept, and `serve` on a socket systemd hands over."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
SERVICE = ROOT / "systemd" / "offloadd.service"


def unit_keys(path: Path) -> dict[str, list[str]]:
    """`Section.Key` → values, in order (systemd allows repeated keys)."""
    keys: dict[str, list[str]] = {}
    section = ""
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        keys.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return keys


class TestServiceUnit:
    def test_hardened_and_graceful(self):
        keys = unit_keys(SERVICE)
        one = {k: v[-1] for k, v in keys.items()}
        assert one.get("Service.DynamicUser") == "yes" or one.get("Service.User")
        assert one["Service.StateDirectory"] == "offloadd"
        assert one["Service.NoNewPrivileges"] == "yes"
        assert one["Service.PrivateTmp"] == "yes"
        assert one["Service.ProtectSystem"] == "strict"
        assert one["Service.Restart"] == "on-failure"
        assert one["Service.KillSignal"] == "SIGTERM"
        assert one["Service.EnvironmentFile"].lstrip("-").startswith("/etc/offloadd/")
        grace = next(
            v.split("=", 1)[1]
            for v in keys["Service.Environment"]
            if v.startswith("OFFLOADD_GRACE=")
        )
        # room for the grace period plus aiohttp's own shutdown (grace + 5 s)
        assert int(one["Service.TimeoutStopSec"]) >= int(grace) + 5
        assert one["Service.ExecStart"].endswith("offloadd serve")
        assert one["Install.WantedBy"] == "multi-user.target"

    @pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="no systemd-analyze here")
    def test_systemd_analyze_verify_finds_nothing(self, tmp_path):
        offloadd = shutil.which("offloadd") or sys.executable
        for name in ("offloadd.service", "offloadd.socket"):
            text = (ROOT / "systemd" / name).read_text()
            unit = tmp_path / name
            unit.write_text(text.replace("/usr/local/bin/offloadd", offloadd))
        result = subprocess.run(
            [
                "systemd-analyze",
                "verify",
                str(tmp_path / "offloadd.service"),
                str(tmp_path / "offloadd.socket"),
            ],
            capture_output=True,
            text=True,
        )
        complaints = [
            line for line in (result.stdout + result.stderr).splitlines() if "offloadd" in line
        ]
        assert result.returncode == 0 and complaints == [], complaints


async def _serve_on(sock: socket.socket, extra_env: dict, *args: str, tmp_path: Path):
    """Start `offloadd serve` with `sock` as fd 3, as systemd's socket activation does."""

    def as_systemd() -> None:
        os.dup2(sock.fileno(), 3)
        os.environ.update(extra_env)
        if "LISTEN_FDS" in extra_env:
            os.environ["LISTEN_PID"] = str(os.getpid())

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
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        preexec_fn=as_systemd,
        pass_fds=(3,) if sock.fileno() != 3 else (),
    )
    line = await asyncio.wait_for(proc.stdout.readline(), 20)
    assert b"listening on an inherited socket" in line, line
    return proc


@pytest.mark.parametrize("mode", ["socket-activation", "fd"])
async def test_serve_on_a_socket_it_is_given(tmp_path, http, mode):
    port = free_port()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(16)
    env = (
        {"LISTEN_FDS": "1", "PYTHONUNBUFFERED": "1"}
        if mode == "socket-activation"
        else {"PYTHONUNBUFFERED": "1"}
    )
    args = ("--fd", "3") if mode == "fd" else ()
    proc = await _serve_on(sock, env, *args, tmp_path=tmp_path)
    sock.close()
    try:
        body = {"messages": [{"role": "user", "content": "activated"}]}
        async with http.post(f"http://127.0.0.1:{port}/v1/stream-chatgpt", json=body) as resp:
            urls = (await resp.json())["endpoints"]
        async with http.get(urls["stream_events_url"]) as resp:
            assert (await resp.read()).endswith(b"data: [DONE]\n\n")
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 20) == 0
