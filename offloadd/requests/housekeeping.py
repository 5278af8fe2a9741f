"""Housekeeping between daemons on one data directory: this daemon's heartbeat, stops
asked through other daemons, ending the requests of daemons that died, and writing the
final states the disk refused before.

File work runs in a worker thread; everything that touches the event loop's objects
(tasks, the readers' hub) happens back on the loop, with what the thread returned.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from offloadd.config import Config
from offloadd.domain.dialects import dialect_of
from offloadd.domain.status import TERMINAL, stored
from offloadd.requests.endings import Endings, error_of
from offloadd.requests.streams import collect as collect_streams
from offloadd.storage.layout import Location
from offloadd.storage.registry import Registry
from offloadd.storage.retention import collect
from offloadd.storage.store import StorageError, Store
from offloadd.storage.streams import StreamFiles
from offloadd.storage.transcript import ending, recover

log = logging.getLogger("offloadd.cluster")


class Housekeeping:
    def __init__(
        self,
        registry: Registry,
        store: Store,
        endings: Endings,
        config: Config,
        running: Callable[[], set[str]],
        stop: Callable[[str], None],
        poke: Callable[[Path], None],
    ):
        self.registry, self.store, self.endings, self.config = registry, store, endings, config
        self.running, self.stop, self.poke = running, stop, poke

    async def run(self) -> None:
        last_beat = last_sweep = 0.0
        while True:
            now = time.monotonic()
            if now - last_beat >= self.config.heartbeat_seconds:
                await asyncio.to_thread(self.registry.beat)
                last_beat = now
            if running := self.running():
                for uuid in await asyncio.to_thread(self.registry.stop_requests) & running:
                    self.stop(uuid)
            if now - last_sweep >= self.config.orphan_sweep_seconds:
                ended = await asyncio.to_thread(self._sweep)
                for loc in ended:
                    self.poke(self.store.txt_path(loc))
                last_sweep = now
            # stop markers matter only for requests running here; idle, the loop wakes
            # only for what is due (a stop for a request started meanwhile waits ≤ 1 beat)
            idle = self.config.heartbeat_seconds if not self.running() else 0
            await asyncio.sleep(max(self.config.stop_poll_seconds, idle))

    def _sweep(self) -> list[Location]:
        """(In a worker thread.) What the disk refused before, then every request whose
        owner is dead (each is taken by one daemon only); the locations it ended."""
        ended = self.endings.retry() if self.endings else []
        try:
            orphans = self.registry.orphans()
        except OSError as e:  # a shared filesystem's hiccup: try again at the next sweep
            log.error("cannot look for orphaned requests: %s", e)
            return ended
        for loc in orphans:
            try:
                if self.end_orphan(loc):
                    ended.append(loc)
            except (OSError, StorageError) as e:
                log.error("request %s: could not end it after its daemon died: %s", loc.rel, e)
        try:
            self.registry.forget_dead_owners()
        except OSError as e:
            log.error("cannot forget dead daemons: %s", e)
        return ended

    def end_orphan(self, loc: Location) -> bool:
        """End a request whose owner died: its answer is rebuilt from the stream file (which
        is ahead of the status file by up to a second), then it ends `interrupted` — or
        `stopped`, if someone asked for that — so readers are released."""
        doc = stored(self.store, loc)
        if doc is None:  # its create was cut short (no document, or one half-made): it never
            self.store.remove(loc)  # answered, so no one knows of it, and nothing of it stays
            self.registry.release(loc)
            return False
        fd = self.store.open_stream(loc)
        try:
            dialect = dialect_of(doc)
            found = recover(self.store.txt_path(loc), dialect.assembly())
            if found.ended:
                return False  # it ended; only its marker was left behind
            endings = self.endings
            if doc["status"] in TERMINAL:  # died between the two final writes
                error = doc.get("error")
                end_bytes = ending(found.last_id, doc["status"], error, endings.retry_ms, dialect)
            elif loc.uuid in self.registry.stop_requests():
                end_bytes = endings.finalize(doc, found.completion, found.last_id, "stopped", None)
            else:
                message = "the daemon running this request stopped before it completed"
                error = error_of("interrupted", message)
                end_bytes = endings.finalize(doc, found.completion, found.last_id, "error", error)
            endings.write(loc, doc, end_bytes, fd)
            log.warning("request %s ended as %s (its daemon died)", loc.rel, doc["status"])
            return True
        finally:
            os.close(fd)
            self.registry.release(loc)


STREAMS_GC_SECONDS = 60.0


async def retention_loop(data: Path, seconds: float) -> None:
    """Apply `--retention` at start and then every hour (or sooner for short retentions)."""
    while True:
        removed = await asyncio.to_thread(collect, data, seconds)
        if removed:
            log.info("retention: removed %d conversation(s)", len(removed))
        await asyncio.sleep(min(3600.0, max(1.0, seconds / 10)))


async def streams_gc_loop(files: StreamFiles, retention: float | None) -> None:
    """Expired application streams are removed, not only refused (and, with `--retention`,
    streams idle for longer): every minute, in a worker thread."""
    while True:
        try:
            removed = await asyncio.to_thread(collect_streams, files, retention)
        except Exception:  # a disk that fails now may not next time: serving goes on
            log.exception("streams: housekeeping failed")
        else:
            if removed:
                log.info("streams: removed %d expired or idle stream(s)", len(removed))
        await asyncio.sleep(STREAMS_GC_SECONDS)
