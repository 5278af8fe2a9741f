"""Prometheus metrics, written by hand: a few counters, two gauges, one histogram.

The text format is a dozen lines of code; a client library would add a
dependency and a global registry, which an app factory should not have.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

STALL = 0.005  # seconds
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self) -> None:
        self.created: Counter[tuple[str, str]] = Counter()  # (endpoint, outcome)
        self.finished: Counter[tuple[str, str]] = Counter()  # (endpoint, status)
        self.upstream_errors: Counter[str] = Counter()
        self.readers = 0
        self.bytes_delivered = 0
        self.events_delivered = 0
        self.ttft_counts = [0] * (len(TTFT_BUCKETS) + 1)
        self.ttft_sum = 0.0
        self.running: Callable[[], int] = lambda: 0
        self.stream_waiters: Callable[[], int] = lambda: 0
        self.loop_lag_max = 0.0  # the event loop's longest blocking stretch seen
        self.loop_stalls = 0  # stretches over STALL seconds
        self.loop_lag_sum = 0.0  # with `loop_lag_count`: the mean lag over any interval
        self.loop_lag_count = 0

    async def watch_loop(self, period: float = 0.05) -> None:
        """Measure how late the event loop wakes a sleeper: anything that blocks it (file
        I/O, a long computation) shows here, in production as in the benchmarks. A sample
        each 50 ms: every 10 ms cost an idle daemon ~1 % of a core; a stall shorter than
        the period is seen with probability length / period (the mean lag stays fair)."""
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(period)
            lag = loop.time() - before - period
            self.loop_lag_max = max(self.loop_lag_max, lag)
            self.loop_lag_sum += lag
            self.loop_lag_count += 1
            self.loop_stalls += lag > STALL

    def first_token(self, seconds: float) -> None:
        self.ttft_sum += seconds
        for i, bound in enumerate(TTFT_BUCKETS):
            if seconds <= bound:
                self.ttft_counts[i] += 1
                return
        self.ttft_counts[-1] += 1

    def render(self) -> str:
        lines: list[str] = []

        def family(name: str, kind: str, text: str) -> None:
            lines.extend((f"# HELP {name} {text}", f"# TYPE {name} {kind}"))

        family(
            "offloadd_requests_created_total",
            "counter",
            "Create requests by endpoint and outcome (accepted or an error code).",
        )
        for (endpoint, outcome), n in sorted(self.created.items()):
            lines.append(
                f'offloadd_requests_created_total{{endpoint="{endpoint}",outcome="{outcome}"}} {n}'
            )
        family(
            "offloadd_requests_finished_total",
            "counter",
            "Requests run by this daemon, by endpoint and final status.",
        )
        for (endpoint, status), n in sorted(self.finished.items()):
            lines.append(
                f'offloadd_requests_finished_total{{endpoint="{endpoint}",status="{status}"}} {n}'
            )
        family("offloadd_running_requests", "gauge", "Requests whose upstream call runs here.")
        lines.append(f"offloadd_running_requests {self.running()}")
        family("offloadd_stream_waiters", "gauge", "Reads of application streams waiting.")
        lines.append(f"offloadd_stream_waiters {self.stream_waiters()}")
        family("offloadd_connected_readers", "gauge", "Open event-stream connections.")
        lines.append(f"offloadd_connected_readers {self.readers}")
        family("offloadd_delivered_bytes_total", "counter", "Event-stream bytes sent to readers.")
        lines.append(f"offloadd_delivered_bytes_total {self.bytes_delivered}")
        family("offloadd_delivered_events_total", "counter", "Events sent to readers.")
        lines.append(f"offloadd_delivered_events_total {self.events_delivered}")
        family("offloadd_upstream_errors_total", "counter", "Upstream failures by kind.")
        for code, n in sorted(self.upstream_errors.items()):
            lines.append(f'offloadd_upstream_errors_total{{code="{code}"}} {n}')
        family(
            "offloadd_upstream_ttft_seconds",
            "histogram",
            "Time from the upstream call's start to its first chunk.",
        )
        cumulative = 0
        for bound, n in zip((*TTFT_BUCKETS, "+Inf"), self.ttft_counts, strict=True):
            cumulative += n
            lines.append(f'offloadd_upstream_ttft_seconds_bucket{{le="{bound}"}} {cumulative}')
        lines.append(f"offloadd_upstream_ttft_seconds_sum {self.ttft_sum:.6f}")
        lines.append(f"offloadd_upstream_ttft_seconds_count {cumulative}")
        family("offloadd_loop_lag_max_seconds", "gauge", "The event loop's longest stall.")
        lines.append(f"offloadd_loop_lag_max_seconds {self.loop_lag_max:.6f}")
        family("offloadd_loop_lag_seconds", "summary", "How late the loop woke a 50 ms sleep.")
        lines.append(f"offloadd_loop_lag_seconds_sum {self.loop_lag_sum:.6f}")
        lines.append(f"offloadd_loop_lag_seconds_count {self.loop_lag_count}")
        family(
            "offloadd_loop_stalls_total",
            "counter",
            "Loop stalls over 5 ms (sampled).",
        )
        lines.append(f"offloadd_loop_stalls_total {self.loop_stalls}")
        return "\n".join(lines) + "\n"
