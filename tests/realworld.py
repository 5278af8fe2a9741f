"""Real components started for tests and benchmarks alike: offloadd's own processes (the
one launcher, `Daemon`), a PostgreSQL server, and an sshfs export (sshd on loopback) that
several "hosts" mount. Plain classes, no pytest, so `bench/` uses the same ones."""

from __future__ import annotations

import asyncio
import glob
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# What tests/test_hosts.py found the mounts need: no attribute, entry or negative caching
# (readers poll sizes and names other hosts change; heartbeats are mtimes) and no page
# cache (direct_io: a reader's pread must reach the server, not a page read before the
# writer appended). With the defaults, a reader was served stale bytes.
MOUNT_OPTIONS = "attr_timeout=0,entry_timeout=0,negative_timeout=0,direct_io,dir_cache=no"


def free_port() -> int:
    """A loopback port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_tree(pid: int) -> list[int]:
    """`pid` and every process below it (a daemon's workers, nginx's), from /proc."""
    pids, todo = [], [pid]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except FileNotFoundError:
            pass
    return pids


class Daemon:
    """A real `offloadd` process (serve, mock-upstream) on a free loopback port.

    Its output goes to a file, not a pipe: a pipe nobody drains (an access log under load)
    fills and stops the daemon. `start()` returns once the output shows `ready`.
    """

    def __init__(self, *args: str, ready: bytes = b"listening", wrap: tuple = (), **popen):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args, self.ready, self.wrap, self.popen = args, ready, wrap, popen
        self.log = tempfile.TemporaryFile()
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30) -> Daemon:
        command = [*self.wrap, sys.executable, "-m", "offloadd", *self.args]
        self.proc = subprocess.Popen(
            [*command, "--port", str(self.port)],  # `wrap`: e.g. `unshare …`, another host
            stdout=self.log,
            stderr=subprocess.STDOUT,
            **{"env": {**os.environ, "PYTHONUNBUFFERED": "1"}, **self.popen},
        )
        deadline = time.monotonic() + timeout
        while self.ready not in self.output:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{' '.join(command)} did not start:\n{self.output.decode()}")
            time.sleep(0.02)
        return self

    @property
    def output(self) -> bytes:
        """All it printed so far (read at an offset: the daemon's own stays at the end)."""
        fd = self.log.fileno()
        return os.pread(fd, os.fstat(fd).st_size, 0)

    def pids(self) -> list[int]:
        assert self.proc
        return process_tree(self.proc.pid)

    def signal(self, sig: int) -> None:
        """Signal the daemon itself (inside a wrapper such as `unshare`, its last child)."""
        assert self.proc
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
        """Its exit code, awaited off the caller's event loop."""
        assert self.proc
        return await asyncio.to_thread(self.proc.wait, timeout)

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM, a bounded wait for it to end, then SIGKILL."""
        if self.proc and self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class Postgres:
    """A real PostgreSQL server on a loopback port, in a temporary directory."""

    def __init__(self, root: Path):
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
        if not bins:
            raise RuntimeError(
                "PostgreSQL is missing: install Debian's postgresql (tests/setup.sh)"
            )
        self.bin = Path(bins[-1])
        self.data, self.port = root / "pgdata", free_port()
        self.dsn = f"postgresql://offloadd@127.0.0.1:{self.port}/postgres"
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(root, "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "offloadd", "-E", "UTF8")

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run(
            [*self.as_user, str(self.bin / tool), *args], check=True, capture_output=True
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(self.data / "server.log")
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", log, "-w", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    async def new_database(self) -> str:
        """A database of its own for one test; its DSN."""
        import asyncpg

        name = "t_" + secrets.token_hex(6)
        db = await asyncpg.connect(self.dsn)
        try:
            await db.execute(f"CREATE DATABASE {name}")
        finally:
            await db.close()
        return self.dsn.rsplit("/", 1)[0] + "/" + name


class SshfsExport:
    """An sshd on loopback serving one directory over SFTP; `mount()` gives each host its
    own sshfs mount of it (its own caches, as another machine would have)."""

    def __init__(self, root: Path):
        sshd = shutil.which("sshd") or shutil.which("sshd", path="/usr/sbin")
        if not sshd or not shutil.which("sshfs"):
            raise RuntimeError("sshd or sshfs is missing: install Debian's openssh-server, sshfs")
        if not os.path.exists("/dev/fuse"):
            raise RuntimeError("no /dev/fuse: sshfs needs FUSE")
        self.root, self.port = root, free_port()
        for name in ("hostkey", "clientkey"):
            key = str(root / name)
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-f", key, "-N", ""], check=True)
        shutil.copy(root / "clientkey.pub", root / "authorized_keys")
        (root / "sshd_config").write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {root}/hostkey\n"
            f"AuthorizedKeysFile {root}/authorized_keys\nPermitRootLogin prohibit-password\n"
            f"PasswordAuthentication no\nStrictModes no\nUsePAM no\nPidFile {root}/sshd.pid\n"
            "Subsystem sftp internal-sftp\n"
        )
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)
        self.server = subprocess.Popen([sshd, "-D", "-e", "-f", str(root / "sshd_config")])
        self.directory = root / "export"
        self.directory.mkdir()
        self.mounts: list[Path] = []

    def mount(self, name: str) -> Path:
        target = self.root / f"{name}-{secrets.token_hex(4)}"
        target.mkdir()
        options = (
            f"port={self.port},IdentityFile={self.root}/clientkey,StrictHostKeyChecking=no,"
            f"UserKnownHostsFile=/dev/null,{MOUNT_OPTIONS}"
        )
        source = f"root@127.0.0.1:{self.directory}"
        for _ in range(50):  # sshd may still be starting
            done = subprocess.run(
                ["sshfs", "-o", options, source, str(target)], capture_output=True
            )
            if done.returncode == 0:
                self.mounts.append(target)
                return target
            time.sleep(0.1)
        raise RuntimeError(f"sshfs would not mount: {done.stderr.decode()}")

    def close(self) -> None:
        for target in self.mounts:
            subprocess.run(["fusermount3", "-u", "-z", str(target)], check=False)
        self.server.terminate()
        self.server.wait(10)


def other_host(name: str) -> tuple[str, ...]:
    """A command prefix that runs a program as on another host: its own UTS namespace
    (host name) and PID namespace (process ids that overlap with this host's)."""
    prefix = ("unshare", "--uts", "--pid", "--fork", "--kill-child", "--")
    return (*prefix, "sh", "-c", f'hostname {name} && exec "$@"', "sh")
