"""Two threads that do the file work of running requests, each fed by a queue and
answered on the event loop: one makes the files of new requests and flushes statuses,
the other commits endings.

A worker thread per write (`asyncio.to_thread`) made every request's files wait on one
another's syncs. Here the endings that became due together are committed as a group:
every final document written, synced and renamed in one batch (`Store.write_final`),
then each stream's end appended, then their claims released in one append to the run
journal — so a stream's `[DONE]` still follows its document onto the disk, and one
batch's syncs share the filesystem's journal commits. Each thread takes what is queued
when it is free and never waits for more: a lone ending is written at once, and under
load the batch is what came during the last one. Creates have a thread of their own so
that none waits behind a batch's syncs (a sync can take milliseconds; a create's answer
waits for its files); a batch's creates are claimed together, in one append, before any
of their files is made. A request's ending is queued only after its create is answered,
and after its last flush is done, so the two threads never race on one request's files.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from offloadd.domain.status import StatusDocument
from offloadd.requests.endings import Endings
from offloadd.storage.layout import Location
from offloadd.storage.registry import Registry

log = logging.getLogger("offloadd.writer")
MAX_BATCH = 256  # endings per group commit: bounds what one batch can make others wait
Results = list[tuple[asyncio.Future, Any, BaseException | None]]  # a batch's, to settle


@dataclass(slots=True)
class Final:
    """One request's ending: its final document, its stream's end, what follows each."""

    loc: Location
    doc: StatusDocument
    end_bytes: bytes
    fd: int
    saved: Callable[[], None]  # the document is durable: serve it (before the end exists)
    future: asyncio.Future = field(init=False)


@dataclass(slots=True)
class Job:
    fn: Callable[..., Any]
    args: tuple
    claim: Location | None = None  # claimed in the run journal before `fn` runs
    future: asyncio.Future = field(init=False)


class FileWriter:
    """The two threads that own the writes of running requests (see the module's doc)."""

    def __init__(self, endings: Endings, registry: Registry):
        self.endings, self.registry = endings, registry
        self._files = _Lane("offloadd-files", self._jobs)
        self._commits = _Lane("offloadd-commits", self._commit)

    def call(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future:
        """`fn(*args)` in the files' thread, in the order asked; its result, or error."""
        return self._files.put(Job(fn, args))

    def create(self, loc: Location, fn: Callable[..., Any], *args: Any) -> asyncio.Future:
        """`call`, once `loc` is claimed in the run journal (with the batch's other creates);
        if `fn` fails, the claim is released: nothing it did not make stays claimed."""
        return self._files.put(Job(fn, args, loc))

    def final(
        self,
        loc: Location,
        doc: StatusDocument,
        end_bytes: bytes,
        fd: int,
        saved: Callable[[], None],
    ) -> asyncio.Future:
        """The final document (durable) and then the stream's end, committed with the other
        endings that are due, then the claim released; done once both are written or kept
        by `Endings` for retry. Its result: whether the claim is released."""
        return self._commits.put(Final(loc, doc, end_bytes, fd, saved))

    async def close(self) -> None:
        """Finish what is queued, then stop the threads."""
        await self._files.close()
        await self._commits.close()

    def _jobs(self, jobs: list[Job]) -> Results:
        """Run the batch's jobs in order, the creates' claims made first in one append."""
        claims = [job.claim for job in jobs if job.claim is not None]
        _, refused = _run(self.registry.claim_many, claims) if claims else (None, None)
        results: Results = []
        for job in jobs:
            if job.claim is not None and refused is not None:
                results.append((job.future, None, refused))
                continue
            value, error = _run(job.fn, *job.args)
            if error is not None and job.claim is not None:
                _run(self.registry.release, job.claim)
            results.append((job.future, value, error))
        return results

    def _commit(self, finals: list[Final]) -> Results:
        """The batch's endings, then their claims released (the result: whether they are)."""
        released, error = _run(self._write_and_release, finals)
        return [(f.future, released, error) for f in finals]

    def _write_and_release(self, finals: list[Final]) -> bool:
        self.endings.write_many([(f.loc, f.doc, f.end_bytes, f.fd, f.saved) for f in finals])
        try:
            self.registry.release_many([f.loc for f in finals])
        except Exception:
            log.exception("the claims of %d ended requests could not be released", len(finals))
            return False
        return True


class _Lane:
    """One thread and its queue: it takes everything queued (up to MAX_BATCH), hands the
    batch to `work` and settles the batch's futures on the loop with one wake-up."""

    def __init__(self, name: str, work: Callable[[list], Results]):
        self.name, self.work = name, work
        self._queue: queue.SimpleQueue[Job | Final | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def put(self, item: Job | Final) -> asyncio.Future:
        if self._thread is None:
            self._loop = asyncio.get_running_loop()
            self._thread = threading.Thread(target=self._work, name=self.name)
            self._thread.daemon = True  # a crash must not hang on it; `close` joins it
            self._thread.start()
        assert self._loop is not None
        item.future = self._loop.create_future()
        self._queue.put(item)
        return item.future

    async def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            await asyncio.to_thread(self._thread.join)
            self._thread = None

    def _work(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if items := [item for item in batch if item is not None]:
                self._answer(self.work(items))
            if None in batch:
                return

    def _answer(self, results: Results) -> None:
        """Settle futures on the loop, one wake-up for a batch."""
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(_settle, results)
        except RuntimeError:  # the loop has closed: no one waits any more
            pass


def _run(fn: Callable[..., Any], *args: Any) -> tuple[Any, BaseException | None]:
    try:
        return fn(*args), None
    except Exception as e:
        return None, e


def _settle(results: list[tuple[asyncio.Future, Any, BaseException | None]]) -> None:
    for future, value, error in results:
        if future.done():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)
