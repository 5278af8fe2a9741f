"""offloadd's benchmarks, one run: `python bench/run.py` (see bench/README.md).

Everything runs on loopback with the mock upstream's `stamp=1`, so each token
carries the time it was sent; latency is a reader's receipt time minus that.
nginx + Nchan runs beside offloadd in the same run, on the same event sequence.
The scenarios are in bench/scenarios/, the tables in bench/render.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "tests")]  # tests/realworld: one launcher
from measure import DELAY_MS, TOKENS, raise_fd_limit  # noqa: E402
from render import markdown  # noqa: E402
from scenarios import creates, crowd, fanout, nchan, streams, sustained  # noqa: E402

from realworld import Daemon  # noqa: E402

POINTS = [(10, 1), (10, 10), (40, 25), (100, 100)]  # streams × readers per stream
FLASH_POINTS = [(40, 1000), (100, 10000)]  # streams, readers in all
CROWD_POINTS = FLASH_POINTS  # long-poll readers through the nginx cache (issue 24.4)
ONLY = ["delivery", "creates", "crowd", "streams"]
BACKLOG_SYSCTLS = {"net.core.somaxconn": "65535", "net.ipv4.tcp_max_syn_backlog": "65535"}
# On the repository's disk, like a deployment's ./data: this machine's /tmp makes a
# file ten times slower (0.9 ms vs 0.09 ms of CPU each, measured), which no user has
OUT = ROOT / "bench" / "out"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=1, help="offloadd serve --workers")
    parser.add_argument("--quick", action="store_true", help="small points only (a smoke run)")
    parser.add_argument("--no-nchan", action="store_true")
    parser.add_argument("--points", help="streams x readers to run, e.g. 100x100,40x25")
    parser.add_argument("--flash", help="flash crowds, streams x readers in all, e.g. 40x1000")
    parser.add_argument("--crowd", help="crowds through the cache, streams x readers in all")
    parser.add_argument(
        "--only", choices=ONLY, help="delivery: no creates, stop, static; or one scenario"
    )
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    parser.add_argument(
        "--sustained", help="steady create rates, 60 s each on a full directory, e.g. 300,500"
    )
    parser.add_argument("--bursts", help="create rates for the 4-s bursts, e.g. 500,1000")
    args = parser.parse_args(argv)
    args.points = parse_points(args.points) if args.points else POINTS[: 2 if args.quick else 4]
    quick_flashes = [] if args.quick else FLASH_POINTS
    args.flash = parse_points(args.flash) if args.flash is not None else quick_flashes
    quick_crowds = [(4, 40)] if args.quick else CROWD_POINTS
    args.crowd = parse_points(args.crowd) if args.crowd is not None else quick_crowds
    # a smoke run's creates: two low rates for a second each, five stops
    args.rates, args.seconds = ((50, 100), 1) if args.quick else (creates.CREATE_RATES, 4)
    if args.bursts is not None:  # '' for none
        args.rates = tuple(int(r) for r in args.bursts.split(",") if r)
    # a smoke run's steady load: 100/s for 20 s (two windows) on a directory of 1,000
    steady = "100" if args.quick else "300,500"
    chosen = steady if args.sustained is None else args.sustained
    args.sustained = [int(r) for r in chosen.split(",") if r]
    args.steady_seconds, args.filled = (20, 1000) if args.quick else (60, sustained.FILLED_ANSWERS)
    args.stops = 5 if args.quick else 20
    return args


def parse_points(text: str) -> list[tuple[int, int]]:
    return [(int(a), int(b)) for a, b in (p.split("x") for p in text.split(",") if p)]


def raise_backlogs() -> dict[str, str]:
    """Both servers listen with a backlog of 65,535, which the kernel caps at somaxconn:
    raised for the run when we may (as root), as a site expecting flash crowds would."""
    before = {}
    for key, value in BACKLOG_SYSCTLS.items():
        path = Path("/proc/sys") / key.replace(".", "/")
        try:
            before[key] = path.read_text().strip()
            path.write_text(value)
        except OSError:
            pass
    return before


def restore_backlogs(before: dict[str, str]) -> None:
    for key, value in before.items():
        with contextlib.suppress(OSError):
            (Path("/proc/sys") / key.replace(".", "/")).write_text(value)


def machine() -> str:
    with open("/proc/cpuinfo") as f:
        names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    cpu = names[0] if names else platform.processor()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, Python {platform.python_version()}"


def commit() -> str:
    """The commit measured (with `+` when the work tree has changes)."""
    git = ["git", "-C", str(ROOT)]
    try:
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True)
        dirty = subprocess.run([*git, "diff", "--quiet", "HEAD", "--", "offloadd"]).returncode
    except OSError:
        return "unknown"
    return head.stdout.decode().strip() + ("+" if dirty else "")


def new_report(args: argparse.Namespace) -> dict:
    return {
        "machine": machine(),
        "workers": args.workers,
        "tokens": TOKENS,
        "delay_ms": DELAY_MS,
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],  # others share the machine
        "commit": commit(),
        "sysctls": {
            key: Path("/proc/sys", key.replace(".", "/")).read_text().strip()
            for key in BACKLOG_SYSCTLS
        },
    }


def start_servers(data: Path, workers: int) -> tuple[Daemon, Daemon]:
    """The mock upstream and `offloadd serve` against it, as real processes."""
    limits = {"preexec_fn": raise_fd_limit}
    mock = Daemon("mock-upstream", ready=b"mock upstream listening", **limits).start()
    serve = ("serve", "--data", str(data), "--no-auth", "--workers", str(workers))
    upstream = ("--upstream-url", f"{mock.url}/v1", "--upstream-key", "bench")
    # --max-connections above nginx's worker_connections (20,000)
    quiet = ("--max-connections", "25000", "--log-level", "WARNING")
    try:
        return mock, Daemon(*serve, *upstream, *quiet, **limits).start()
    except BaseException:
        mock.stop()
        raise


def record(report: dict, name: str, figures) -> None:
    report[name] = figures
    print(name, figures, flush=True)


def measure_offloadd(report: dict, args, server: Daemon, mock: Daemon) -> None:
    """Fan-out, flash crowds and idle CPU; then creates and stops unless `--only delivery`."""
    record(report, "floor", fanout.floor(mock.url, 100))
    record(report, "offloadd", [fanout.delivery(server, s, p) for s, p in args.points])
    record(report, "offloadd_flash", [fanout.flash(server, s, r) for s, r in args.flash])
    record(report, "idle_cpu_s_per_s", fanout.idle_cpu(server))
    if not args.only:
        measure_creates(report, args, server, mock)


def measure_creates(report: dict, args, server: Daemon, mock: Daemon) -> None:
    record(report, "creates", creates.create_rates(server, args.rates, args.seconds))
    stops = creates.stop_latency(server.url, mock.url, args.stops)
    record(report, "stop", asyncio.run(stops))


def measure_sustained(report: dict, args) -> None:
    """Steady creates on the kept full directory (filled on first use), a fresh daemon."""
    if not args.sustained:
        return
    data = sustained.filled_directory(OUT, args.filled)
    data.mkdir(exist_ok=True)
    sustained.reset(data)
    mock, server = start_servers(data, args.workers)
    since = time.time()
    try:
        added = asyncio.run(sustained.fill(server.url, data, args.filled))
        print(f"sustained: {data} holds {args.filled} answers ({added} written now)", flush=True)
        points = [
            asyncio.run(sustained.steady(server, r, args.steady_seconds)) for r in args.sustained
        ]
        record(report, "sustained", points)
    finally:
        if server.proc and server.proc.poll() is not None:  # it died: say how
            print(f"offloadd exited {server.proc.returncode}:", server.output.decode()[-4000:])
        sustained.trim(data, since)  # the next run starts from the same directory
        server.stop(30)
        mock.stop(30)


def measure_nchan(report: dict, args, server: Daemon, data: Path) -> None:
    """The same fan-out and crowds through nginx + Nchan; a static file from both."""
    if args.no_nchan or not nchan.MODULE.exists():
        return
    nginx = nchan.Nginx(data)
    try:
        record(report, "nchan", [nchan.delivery(nginx, s, p) for s, p in args.points])
        record(report, "nchan_flash", [nchan.flash(nginx, s, r) for s, r in args.flash])
        if not args.only:
            record(report, "static", nchan.static(nginx, server.url, data))
    finally:
        nginx.stop()


def measure_crowd(report: dict, args, mock: Daemon, data: Path) -> None:
    """Long-poll crowds through the shipped nginx cache; nginx + Nchan's at the same points."""
    record(report, "crowd", crowd.run(mock.url, data / "crowd", args.crowd))
    if args.no_nchan or not nchan.MODULE.exists():
        return
    nginx = nchan.Nginx(data)
    try:
        record(report, "nchan_crowd", [nchan.flash(nginx, s, r) for s, r in args.crowd])
    finally:
        nginx.stop()


def measure_streams(report: dict, args, server: Daemon) -> None:
    """Application streams, offloadd against the reference server."""
    record(report, "streams", streams.run(server, args.quick))


def run(args: argparse.Namespace) -> dict:
    """One run's figures: servers started, every scenario asked for, servers stopped."""
    report = new_report(args)
    backlogs = raise_backlogs()
    OUT.mkdir(exist_ok=True)
    data = Path(tempfile.mkdtemp(prefix="data-", dir=OUT))
    try:
        mock, server = start_servers(data, args.workers)
        try:
            if args.only in (None, "delivery", "creates"):
                if args.only == "creates":
                    measure_creates(report, args, server, mock)
                else:
                    measure_offloadd(report, args, server, mock)
                    measure_nchan(report, args, server, data)
            if args.only in (None, "crowd"):
                measure_crowd(report, args, mock, data)
            if args.only in (None, "streams"):
                measure_streams(report, args, server)
        finally:
            server.stop(30)
            mock.stop(30)
        if args.only in (None, "creates"):
            measure_sustained(report, args)
    finally:
        shutil.rmtree(data, ignore_errors=True)
        restore_backlogs(backlogs)
    return report


def main() -> None:
    args = parse_args()
    raise_fd_limit()
    report = run(args)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    print(markdown([report], "python bench/run.py"))


if __name__ == "__main__":
    main()
