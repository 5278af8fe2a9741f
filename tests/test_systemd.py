"""The systemd units a packager would accept, and `serve` on a socket systemd hands over."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import free_port, require_binary

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

    def test_systemd_analyze_verify_finds_nothing(self, tmp_path):
        analyze = require_binary("systemd", "systemd-analyze")
        offloadd = shutil.which("offloadd") or sys.executable
        for name in ("offloadd.service", "offloadd.socket"):
            text = (ROOT / "systemd" / name).read_text()
            unit = tmp_path / name
            unit.write_text(text.replace("/usr/local/bin/offloadd", offloadd))
        result = subprocess.run(
            [
                analyze,
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


@pytest.mark.parametrize("mode", ["socket-activation", "fd"])
async def test_serve_on_a_socket_it_is_given(tmp_path, http, spawn, mode):
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

    def as_systemd() -> None:
        """In the child, before exec: the socket at fd 3, the variables systemd sets."""
        os.dup2(sock.fileno(), 3)
        os.environ.update(env)
        if "LISTEN_FDS" in env:
            os.environ["LISTEN_PID"] = str(os.getpid())

    daemon = await spawn(
        "serve",
        "--data",
        str(tmp_path / "data"),
        "--upstream-url",
        "mock",
        "--no-auth",
        *args,
        ready=b"listening on an inherited socket",
        env=None,
        preexec_fn=as_systemd,
        pass_fds=(3,) if sock.fileno() != 3 else (),
    )
    sock.close()
    body = {"messages": [{"role": "user", "content": "activated"}]}
    async with http.post(f"http://127.0.0.1:{port}/v1/stream-chatgpt", json=body) as resp:
        urls = (await resp.json())["endpoints"]
    async with http.get(urls["stream_events_url"]) as resp:
        assert (await resp.read()).endswith(b"data: [DONE]\n\n")
    daemon.signal(signal.SIGTERM)
    assert await daemon.wait() == 0
