"""RESULTS.md's Durable Streams sections, for `render.py`'s runs: a crowd through the nginx
cache against Nchan (issue 24, item 4) and application streams against the reference
server (issue 25, item 7), each figure as min / median / max over the runs."""

from __future__ import annotations

import statistics
import time

from render import column, fmt, median_of, spread

CROWD = "## A crowd through the cache"
CROWD_NOTES = (
    """Where the gaps are:

- **p99 at 1,000.** A reader alone on an answer gets each token a few ms after it is
  sent. In a crowd, one request per URL reaches offloadd and the others wait on nginx's
  cache lock, which looks for the first one's answer every 500 ms (hard-coded in nginx):
  the collapsed readers get each piece up to half a second late, whatever offloadd does
  (docs/deployment-cache.md, Limits). Nchan pushes each message down open EventSource
  connections, with no such wait while its one worker keeps up.
- **p99 at 10,000.** The two cores are saturated: the load generator's own CPU (above)
  is most of a point's wall time, and Nchan's one worker spends ~7.5 µs on each of
  2,000,000 deliveries. The cache answers the crowd with far fewer, larger answers
  (requests to nginx above), so its readers fall behind less.
- **CPU.** One request per offset reaches offloadd in every crowd (max 1 per offset in
  every run), and a crowd's chains take fewer, longer steps than a lone reader's (see
  "reached offloadd"), so a crowd costs offloadd less than one reader per answer; its
  cost moves to nginx, which answers every reader's every request from its cache.
""".splitlines()
    + [""]
)
STREAMS = "## Application streams against the reference server"
STREAMS_NOTES = (
    """Where the gaps are (a py-spy profile of offloadd at 100 streams):

- **Appends.** offloadd answers an append once it is on disk (`fdatasync`, about 130 µs
  here for one small write, measured by a write + fdatasync loop on this disk), so it
  survives `kill -9` and power loss; the reference server keeps streams in its process's
  memory. Appends to one stream that arrive together share one lock, one write and one
  sync (group commit), but one writer per stream leaves nothing to group: each append is
  a worker-thread hop, the stream's lock file opened and flock'ed, its metadata read, the
  data written and synced, and — with producer headers — the metadata replaced and synced
  too. That is the server CPU per append above, several times the reference server's.
- **Append → reader.** The same path stands between an append and its readers: they are
  woken once it is synced, then read the new bytes from the file.
- **Catch-up.** offloadd sends 1 MiB per request from the page cache; the reference
  server copies every message since the offset into one buffer, the whole stream in one
  answer.
""".splitlines()
    + [""]
)


def _load(runs: list[dict]) -> str:
    """The machine's load average (1 min) as each run began (others share its two cores),
    and the commit measured."""
    loads = [f"{run['loadavg_before'][0]:.2f}" for run in runs if "loadavg_before" in run]
    commits = sorted({run.get("commit", "unknown") for run in runs})
    text = f"load average (1 min) as each run began: {', '.join(loads)}; " if loads else ""
    return text + f"commit {', '.join(commits)}."


def _crowd_rows(runs: list[dict], system: str, offloadd: bool) -> list[str]:
    rows = []
    for i, p in enumerate(runs[0].get(system, [])):
        col = lambda key, i=i: column(runs, system, i, key)  # noqa: E731
        complete = "yes" if all(col("complete")) else "NO"
        row = (
            f"| {p['streams']}, {p['per_stream']:,} | {complete} | {spread(col('p99_ms'))} "
            f"| {spread(col('p50_ms'))} | {spread(col('first_byte_p99_ms'))} "
            f"| {spread(col('cpu_us_per_event'))} |"
        )
        if offloadd:
            row += (
                f" {spread(col('server_cpu_s'))} | {spread(col('requests_made'))} "
                f"| {spread(col('requests_reached_offloadd'))} "
                f"| {fmt(statistics.median(col('per_offset_mean')))} / "
                f"{fmt(max(col('per_offset_max')))} "
                f"| {spread(col('nginx_cpu_s'))} |"
            )
        rows.append(row)
    return rows


def _crowd_goals(runs: list[dict]) -> list[str]:
    """Issue 24.4's goals against the medians: p99 against Nchan's at each crowd, and the
    CPU of a crowd against one reader per answer on as many answers."""

    def point(system: str, streams: int, readers: int) -> int | None:
        found = [i for i, p in enumerate(runs[0].get(system, [])) if p["streams"] == streams]
        return next((i for i in found if runs[0][system][i]["readers"] == readers), None)

    lines = ["| goal | measured (medians) | |", "|---|---|---|"]
    for p in runs[0].get("nchan_crowd", []):
        s, r = p["streams"], p["readers"]
        o, n = point("crowd", s, r), point("nchan_crowd", s, r)
        if o is None or n is None:
            continue
        ours, theirs = (
            median_of(runs, "crowd", o, "p99_ms"),
            median_of(runs, "nchan_crowd", n, "p99_ms"),
        )
        verdict = "met" if ours <= theirs else f"**not met**: {fmt(ours - theirs)} ms worse"
        lines.append(
            f"| {r:,} readers onto {s}: p99 no worse than Nchan's | {fmt(ours)} vs "
            f"{fmt(theirs)} ms ({ours / theirs:.2f} ×) | {verdict} |"
        )
    for p in runs[0].get("crowd", []):
        one = point("crowd", p["streams"], p["streams"])
        if p["readers"] == p["streams"] or one is None:
            continue
        i = runs[0]["crowd"].index(p)
        crowd, base = (median_of(runs, "crowd", j, "server_cpu_s") for j in (i, one))
        ratio = crowd / base
        lines.append(
            f"| offloadd's CPU, {p['readers']:,} readers onto {p['streams']} answers, a small "
            f"multiple (≤ 3 ×) of one reader per answer | {fmt(crowd)} vs {fmt(base)} s "
            f"({ratio:.2f} ×) | {'met' if ratio <= 3 else '**not met**'} |"
        )
    return lines + [""]


def crowd_section(runs: list[dict], command: str) -> list[str]:
    """Issue 24.4: long-poll crowds through the shipped nginx cache, and Nchan's."""
    if not runs[0].get("crowd"):
        return []
    head = "| answers, readers | every event, in order | p99 ms | p50 ms | first byte p99 ms "
    lines = [
        f"{CROWD} (issue 24, item 4; {time.strftime('%Y-%m-%d')}, `{command}`)",
        "",
        "Durable Streams readers through nginx with the shipped config "
        "(`deploy/nginx/offloadd.conf`, one worker, backlog 65,535, no access log) in front "
        "of offloadd (one worker, its access log on): answers of 200 tokens at 20 ms "
        "(`stamp=1`), 1 s in every reader arrives at once and long-polls from `offset=-1`, "
        "following `Stream-Next-Offset` and `Stream-Cursor` to `Stream-Closed`. Latency: "
        "receipt − the token's send stamp, for tokens sent after the reader arrived. "
        "One reader per answer is the baseline. Nchan: the same answers published to "
        "EventSource subscribers arriving at once (`nchan_subscriber_first_message oldest`). "
        f"{len(runs)} run(s), min / median / max; {_load(runs)}",
        "",
        *_crowd_goals(runs),
        "**offloadd behind the nginx cache**",
        "",
        head + "| µs offloadd CPU / event | offloadd CPU s | requests to nginx "
        "| reached offloadd | per offset: mean (median run) / max (any run) | nginx CPU s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *_crowd_rows(runs, "crowd", True),
        "",
        "The load generator's own CPU (s), per point: "
        + "; ".join(
            f"{p['streams']}, {p['readers']:,}: {spread(column(runs, 'crowd', i, 'loadgen_cpu_s'))}"
            for i, p in enumerate(runs[0]["crowd"])
        )
        + ".",
        "",
    ]
    if runs[0].get("nchan_crowd"):
        lines += [
            "**nginx + Nchan (same run)**",
            "",
            head + "| µs nginx CPU / event |",
            "|---|---|---|---|---|---|",
            *_crowd_rows(runs, "nchan_crowd", False),
            "",
        ]
    return lines + ["![p99 and CPU per event of the crowds](chart-crowd.png)", ""] + CROWD_NOTES


def streams_section(runs: list[dict], command: str) -> list[str]:
    """Issue 25.7: offloadd's application streams against the reference server."""
    reports, runs = runs, [run["streams"] for run in runs if run.get("streams")]
    if not runs:
        return []

    def values(server: str, pick) -> list[float]:
        return [pick(run[server]) for run in runs]

    rows = [
        (
            f"appends/s, {a['streams']} stream{'s' if a['streams'] > 1 else ''}, "
            f"{a['writers']} writers" + (", idempotent producers" if a["producer"] else ""),
            lambda s, i=i: s["appends"][i]["appends_per_s"],
            True,
        )
        for i, a in enumerate(runs[0]["offloadd"]["appends"])
    ]
    rows += [
        ("append → live reader p50 ms", lambda s: s["live"]["p50_ms"], False),
        ("append → live reader p99 ms", lambda s: s["live"]["p99_ms"], False),
        (
            f"catch-up read of a {runs[0]['offloadd']['catch_up']['mib']} MiB stream, MiB/s",
            lambda s: s["catch_up"]["mib_per_s"],
            True,
        ),
    ]
    lines = [
        f"{STREAMS} (issue 25, item 7; {time.strftime('%Y-%m-%d')}, `{command}`)",
        "",
        "`@durable-streams/server` 0.3.7 (in memory, `tests/js/reference-server.mjs`) and "
        "offloadd (one worker; every append fdatasync'ed before its answer) in the same "
        "run, by the same load generator (`bench/scenarios/streams.py`). "
        f"{len(runs)} run(s), min / median / max; {_load(reports)} The goal: offloadd "
        "ahead on every figure.",
        "",
        "| figure | offloadd | reference 0.3.7 | offloadd ÷ reference (medians) | goal |",
        "|---|---|---|---|---|",
    ]
    for name, pick, higher_is_better in rows:
        ours, theirs = values("offloadd", pick), values("reference", pick)
        ratio = statistics.median(ours) / statistics.median(theirs)
        ahead = ratio > 1 if higher_is_better else ratio < 1
        lines.append(
            f"| {name} | {spread(ours)} | {spread(theirs)} | {ratio:.2f} × "
            f"| {'met' if ahead else '**not met**'} |"
        )
    cpu = []
    for i, a in enumerate(runs[0]["offloadd"]["appends"]):
        ours, theirs = (
            spread(values(server, lambda s, i=i: s["appends"][i]["server_cpu_us_per_append"]))
            for server in ("offloadd", "reference")
        )
        shape = f"{a['streams']}×{a['writers']}{' producers' if a['producer'] else ''}"
        cpu.append(f"{shape}: {ours} vs {theirs}")
    complete = all(
        s["live"]["complete"]
        and s["catch_up"]["complete"]
        and not any(a["errors"] for a in s["appends"])
        for run in runs
        for s in run.values()
    )
    lines += [
        "",
        f"Server CPU µs per append, offloadd vs reference: {'; '.join(cpu)}. Every append "
        f"answered 2xx, every message reached every live reader in order, every catch-up "
        f"byte read: {'yes' if complete else '**NO**'}.",
        "",
    ]
    return lines + STREAMS_NOTES
