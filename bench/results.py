"""Every figure of bench/RESULTS.md from one command: `python bench/results.py`.

Runs `bench/run.py` three times (each a fresh server, mock and nginx), keeps the raw
figures in bench/out/run-N.json, and writes RESULTS.md (min / median / max of the
three runs for every figure) and chart.png. `--from-json` renders earlier runs again.
`--only crowd` or `--only streams` runs only that scenario (`run.py --only …`, raw figures
in bench/out/<scenario>-run-N.json) and replaces only its section of RESULTS.md (the crowd's
chart: chart-crowd.png); the sections of the other commands are kept as they are.
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
from render_ds import CROWD, STREAMS, crowd_section, streams_section  # noqa: E402

HOSTS = "## Several hosts"
OUT = HERE / "out"
SECTIONS = {"crowd": (CROWD, crowd_section), "streams": (STREAMS, streams_section)}


def section(text: str, heading: str) -> str:
    """The section of `text` that starts with `heading`, up to the next `## `, or ''."""
    if heading not in text:
        return ""
    start = text.index(heading)
    end = text.find("\n## ", start)
    return text[start : end + 1 if end >= 0 else len(text)]


def crowd_chart(runs: list[dict], path: Path) -> None:
    """p99 and CPU per event of the crowds: offloadd behind the cache, and Nchan."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))

    def median_line(system: str, value) -> tuple[list[int], list[float]]:
        points = sorted(enumerate(runs[0].get(system, [])), key=lambda p: p[1]["readers"])
        mids = [statistics.median(value(run[system][i]) for run in runs) for i, _ in points]
        return [p["readers"] for _, p in points], mids

    def per_event(key: str):
        return lambda p: (p["server_cpu_s"] + p.get(key, 0)) / p["events"] * 1e6

    lines = (
        (left, "crowd", lambda p: p["p99_ms"], "o-", "offloadd behind the nginx cache"),
        (left, "nchan_crowd", lambda p: p["p99_ms"], "s--", "nginx + Nchan"),
        (right, "crowd", per_event(""), "o-", "offloadd"),
        (right, "crowd", per_event("nginx_cpu_s"), "o:", "offloadd + the cache's nginx"),
        (right, "nchan_crowd", per_event(""), "s--", "nginx + Nchan"),
    )
    for axis, system, value, style, name in lines:
        axis.plot(*median_line(system, value), style, label=name)
    _style(left, right, "readers (one per answer, then the crowds)")
    fig.suptitle("Long-poll crowds through the cache vs Nchan, medians")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def only(scenario: str, runs: list[dict], old: str, command: str = "") -> str:
    """RESULTS.md with one scenario's section replaced (or added at the end)."""
    heading, render = SECTIONS[scenario]
    command = command or f"python bench/results.py --only {scenario}"
    new = "\n".join(render(runs, command))
    if scenario == "crowd":
        crowd_chart(runs, HERE / "chart-crowd.png")
    kept = section(old, heading)
    return old.replace(kept, new + "\n") if kept else old.rstrip("\n") + "\n\n" + new + "\n"


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
    _style(left, right, "readers (10×1, 10×10, 40×25, 100×100)")
    fig.suptitle("offloadd vs nginx + Nchan, median of 3 runs (bars: min–max)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _style(left, right, xlabel: str) -> None:
    """Both charts' axes: p99 and CPU per event against readers, log-log, with legends."""
    for axis, label in ((left, "p99 latency, ms"), (right, "server CPU per delivered event, µs")):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel(xlabel)
        axis.set_ylabel(label)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--from-json", action="store_true", help="render bench/out/run-*.json")
    parser.add_argument("--only", choices=list(SECTIONS), help="one scenario, its section")
    parser.add_argument("--quick", action="store_true", help="run.py --quick: a smoke run")
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    prefix = f"{args.only}-run" if args.only else "run"
    paths = [OUT / f"{prefix}-{n + 1}.json" for n in range(args.runs)]
    if not args.from_json:
        extra = (["--only", args.only] if args.only else []) + (["--quick"] if args.quick else [])
        for path in paths:
            command = [sys.executable, str(HERE / "run.py"), *extra, "--json", str(path)]
            subprocess.run(command, check=True)
    runs = [json.loads(p.read_text()) for p in paths]
    results = HERE / "RESULTS.md"
    old = results.read_text() if results.exists() else ""
    if args.only:
        results.write_text(only(args.only, runs, old))
        print(f"wrote {results}")
        return
    # the sections other commands write are kept (bench/hosts.py's, the Durable Streams ones)
    kept = "".join(section(old, h) for h in (HOSTS, CROWD, STREAMS))
    results.write_text(markdown(runs, "python bench/results.py") + "\n" + kept)
    for scenario in SECTIONS:
        if any(scenario in run for run in runs):
            text = only(scenario, runs, results.read_text(), "python bench/results.py")
            results.write_text(text)
    chart(runs, HERE / "chart.png")
    print(f"wrote {HERE / 'RESULTS.md'} and {HERE / 'chart.png'}")


if __name__ == "__main__":
    main()
