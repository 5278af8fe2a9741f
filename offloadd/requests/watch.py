"""Waiting for application streams to change: one poll loop per process for all of them.

Writers in this process poke a stream's waiters at once; a change another daemon made
is seen by the loop, which looks at each watched stream's size and metadata every poll
interval — one look per stream however many readers wait on it (the readers' hub does
the same for answers' files)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from offloadd.storage.streams import Stream


@dataclass
class _Watched:
    stream: Stream
    readers: int = 0
    seen: tuple = ()
    waiters: list[asyncio.Future] = field(default_factory=list)

    def wake(self) -> None:
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


@dataclass
class _Waiter:
    watched: _Watched

    def arm(self) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self.watched.waiters.append(future)
        return future


class Watch:
    def __init__(self, interval: float):
        self.interval = interval
        self.watched: dict[str, _Watched] = {}
        self._someone = asyncio.Event()  # set while any stream is watched: the loop ticks

    @contextlib.contextmanager
    def watching(self, stream: Stream) -> Iterator[_Waiter]:
        watched = self.watched.get(stream.path)
        if watched is None:
            watched = self.watched[stream.path] = _Watched(stream)
            self._someone.set()
        watched.readers += 1
        try:
            yield _Waiter(watched)
        finally:
            watched.readers -= 1
            if watched.readers == 0 and self.watched.get(stream.path) is watched:
                del self.watched[stream.path]
                if not self.watched:
                    self._someone.clear()

    @property
    def waiters(self) -> int:
        """Reads waiting for a stream to change (for /metrics)."""
        return sum(watched.readers for watched in self.watched.values())

    def poke(self, path: str) -> None:
        """A writer of this process changed the stream: its waiters look again now."""
        if (watched := self.watched.get(path)) is not None:
            watched.wake()

    async def run(self) -> None:
        """Look at every watched stream each interval; wake the waiters of those changed."""
        while True:
            await self._someone.wait()  # no tick while nothing is watched
            await asyncio.sleep(self.interval)
            watched = list(self.watched.values())
            if not watched:
                continue
            probes = await asyncio.to_thread(_probe_all, watched)
            for item, probe in zip(watched, probes, strict=True):
                if probe != item.seen:
                    item.seen = probe
                    item.wake()


def _probe_all(watched: list[_Watched]) -> list[tuple]:
    return [w.stream.probe() for w in watched]
