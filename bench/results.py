"""Every figure of bench/RESULTS.md from one command: `python bench/results.py`.

Runs `bench/run.py` three times (each a fresh server, mock and nginx), keeps the raw
figures in bench/out/run-N.json, and writes RESULTS.md (min / median / max of the
three runs for every figure) and chart.png. `--from-json` renders earlier runs again.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from render import column, markdown  # noqa: E402

HOSTS = "## Several hosts"
OUT = HERE / "out"


def chart(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for system, style in (("offloadd", "o-"), ("nchan", "s--")):
        points = runs[0].get(system, [])
        readers = [p["readers"] for p in points]
        for axis, key in ((left, "p99_ms"), (right, "cpu_us_per_event")):
            columns = [column(runs, system, i, key) for i in range(len(points))]
            mids = [statistics.median(c) for c in columns]
            errors = [
                [m - min(c) for m, c in zip(mids, columns, strict=True)],
                [max(c) - m for m, c in zip(mids, columns, strict=True)],
            ]
            axis.errorbar(readers, mids, yerr=errors, fmt=style, capsize=3, label=system)
    for axis, label in ((left, "p99 latency, ms"), (right, "server CPU per delivered event, µs")):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("readers (10×1, 10×10, 40×25, 100×100)")
        axis.set_ylabel(label)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    fig.suptitle("offloadd vs nginx + Nchan, median of 3 runs (bars: min–max)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--from-json", action="store_true", help="render bench/out/run-*.json")
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    paths = [OUT / f"run-{n + 1}.json" for n in range(args.runs)]
    if not args.from_json:
        for path in paths:
            subprocess.run([sys.executable, str(HERE / "run.py"), "--json", str(path)], check=True)
    runs = [json.loads(p.read_text()) for p in paths]
    results = HERE / "RESULTS.md"
    old = results.read_text() if results.exists() else ""
    hosts = old[old.index(HOSTS) :] if HOSTS in old else ""  # bench/hosts.py writes that one
    results.write_text(markdown(runs, "python bench/results.py") + "\n" + hosts)
    chart(runs, HERE / "chart.png")
    print(f"wrote {HERE / 'RESULTS.md'} and {HERE / 'chart.png'}")


if __name__ == "__main__":
    main()
