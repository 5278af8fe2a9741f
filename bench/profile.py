"""Where a create's CPU goes: `python bench/profile.py [--rate 300] [--seconds 15]`.

Starts the mock upstream and `offloadd serve` (one worker, data under `bench/out/`), sends
open-loop 1-token creates at `--rate` and samples the daemon with py-spy (`pip install
py-spy`; as root, or with ptrace allowed) meanwhile. Prints the functions by share of
samples, on CPU only (`--idle` counts waiting threads too): "self" is where the samples
were, "total" the functions on the stack. The figures in `RESULTS.md`'s profiles come
from here.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "tests")]
from measure import raise_fd_limit  # noqa: E402
from run import OUT, start_servers  # noqa: E402
from scenarios.creates import create_rate  # noqa: E402


def summarise(raw: str, top: int) -> str:
    """py-spy's raw (collapsed) stacks → the top functions by self and by total samples."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = [
            f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0].split("/")[-1] + ")"
            if " (" in f
            else f
            for f in stack.split(";")
        ]
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    lines = [f"{samples} samples", "", "| self % | function |", "|---|---|"]
    lines += [f"| {n * 100 / samples:.1f} | `{f}` |" for f, n in own.most_common(top)]
    lines += ["", "| total % | function |", "|---|---|"]
    lines += [f"| {n * 100 / samples:.1f} | `{f}` |" for f, n in total.most_common(top * 2)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--idle", action="store_true")
    args = parser.parse_args()
    raise_fd_limit()
    OUT.mkdir(exist_ok=True)
    data = Path(tempfile.mkdtemp(prefix="profile-", dir=OUT))
    raw = data / "profile.txt"
    mock, server = start_servers(data / "d", 1)
    try:
        asyncio.run(create_rate(server.url, 50, 1))  # warm: imports, the upstream pool
        spy = ["py-spy", "record", "-p", str(server.pids()[0]), "-r", "200", "-f", "raw"]
        spy += ["-o", str(raw), "-d", str(int(args.seconds) + 1)] + (["-i"] if args.idle else [])
        sampler = threading.Thread(target=subprocess.run, args=(spy,), daemon=True)
        sampler.start()
        print(asyncio.run(create_rate(server.url, args.rate, args.seconds)), flush=True)
        sampler.join()
        print(summarise(raw.read_text(), args.top))
    finally:
        server.stop(30)
        mock.stop(30)
        shutil.copy(raw, OUT / "last-profile.txt") if raw.exists() else None
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
