"""Several hosts, measured: `python bench/hosts.py [--runs 3]` (as root, on a machine where
`sh tests/setup.sh` ran: it needs sshd, sshfs, FUSE and PostgreSQL).

1. Cross-host reader latency: daemons A and B, each in UTS and PID namespaces of its own,
   each on its own sshfs mount of one export (the mount options the tests found). Streams
   run on A (`mock?stamp=1`: each token is its send time); readers follow them on B.
   Latency is B's reader's receipt time minus the stamp; p50/p99 over every token.
2. Creates with keys: one daemon on local disk with auth on, closed-loop creates of
   1-token requests, with SQLite keys and with PostgreSQL keys (the same machine).

Each figure is run `--runs` times; min / median / max are printed.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
from load import Result, run_readers  # noqa: E402

from realworld import Daemon, Postgres, SshfsExport, other_host  # noqa: E402

STREAMS, READERS, TOKENS = 10, 10, 100


class _Pipe:
    def send(self, message) -> None:
        pass


async def cross_host(a: str, b: str) -> dict:
    body = {"messages": [{"role": "user", "content": "x"}]}
    model = f"mock?tokens={TOKENS}&delay_ms=20&stamp=1&wait_ms=1500"
    targets = []
    async with aiohttp.ClientSession() as s:
        for _ in range(STREAMS):
            async with s.post(f"{a}/v1/stream-chatgpt", json={**body, "model": model}) as r:
                url = (await r.json())["endpoints"]["stream_events_url"]
            on_b = f"{b}/" + url.split("/", 3)[3]
            targets += [("GET", on_b, None)] * READERS
    result: Result = await run_readers(targets, "ids", TOKENS + 3, _Pipe(), None)
    ms = sorted(x / 1e6 for x in result.latencies_ns)
    return {
        "complete": not result.errors and result.events == len(targets) * (TOKENS + 3),
        "p50_ms": ms[len(ms) // 2],
        "p99_ms": ms[int(len(ms) * 0.99)],
    }


async def creates(base: str, key: str, n: int = 600, concurrency: int = 20) -> float:
    body = {"messages": [{"role": "user", "content": "x"}], "model": "mock?tokens=1"}
    sem = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession() as s:

        async def one() -> None:
            async with (
                sem,
                s.post(f"{base}/v1/stream-chatgpt", json=body, headers={"X-API-Key": key}) as r,
            ):
                await r.read()
                assert r.status == 200, r.status

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        return n / (time.perf_counter() - t0)


def spread(values: list[float]) -> str:
    return f"{min(values):.1f} / {statistics.median(values):.1f} / {max(values):.1f}"


def make_key(data: Path, plans: Path, dsn: str | None) -> str:
    where = ["--keys", dsn] if dsn else ["--data", str(data)]
    command = [sys.executable, "-m", "offloadd", "keys", "create", "--name", "bench"]
    done = subprocess.run(
        [*command, "--plan", "big", "--plans", str(plans), *where], capture_output=True, check=True
    )
    return done.stdout.decode().strip().splitlines()[-1]


def main() -> None:
    runs = int(sys.argv[sys.argv.index("--runs") + 1]) if "--runs" in sys.argv else 3
    work = Path(tempfile.mkdtemp(prefix="offloadd-bench-"))
    mock = Daemon("mock-upstream", "--host", "127.0.0.1").start()
    upstream = ("--upstream-url", f"{mock.url}/v1", "--upstream-key", "sk-bench")
    (work / "sshfs").mkdir()
    export, pg, daemons = SshfsExport(work / "sshfs"), Postgres(Path(tempfile.mkdtemp())), []
    try:
        data = []
        for host in ("host-a", "host-b"):
            data.append(export.mount(host) / "data")
            data[-1].mkdir(exist_ok=True)
            args = ("serve", "--data", str(data[-1]), "--no-auth", *upstream)
            daemons.append(Daemon(*args, wrap=other_host(host)).start())
        latency = [asyncio.run(cross_host(daemons[0].url, daemons[1].url)) for _ in range(runs)]
        print(f"cross-host readers ({STREAMS} streams on A x {READERS} readers on B, sshfs):")
        print(f"  complete: {all(r['complete'] for r in latency)}")
        print(f"  p50 ms min/median/max: {spread([r['p50_ms'] for r in latency])}")
        print(f"  p99 ms min/median/max: {spread([r['p99_ms'] for r in latency])}")

        pg.start()
        plans = work / "plans.json"
        plans.write_text('{"big": {"monthly": null, "per_minute": null}}')
        for name, dsn in (("SQLite", None), ("PostgreSQL", pg.dsn)):
            local = work / f"local-{name}"
            key = make_key(local, plans, dsn)
            keys = ("--keys", dsn) if dsn else ()
            serve = ("serve", "--data", str(local), *upstream, "--plans", str(plans), *keys)
            daemon = Daemon(*serve).start()
            daemons.append(daemon)
            rates = [asyncio.run(creates(daemon.url, key)) for _ in range(runs)]
            print(
                f"creates/s with {name} keys (closed loop, 20 in flight) min/median/max: "
                f"{spread(rates)}"
            )
    finally:
        for daemon in [*daemons, mock]:
            daemon.stop()
        export.close()
        pg.stop()


if __name__ == "__main__":
    main()
