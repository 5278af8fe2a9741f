"""The one place that owns running requests: their tasks, their files while running, their stop.

Routes ask the runner; they never hold tasks. Each request's upstream call runs
in a task created here; stopping a request cancels that task, which closes the
upstream connection (so the model stops generating and billing stops).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import orjson

from offloadd.config import Config
from offloadd.domain.dialects import RESPONSES
from offloadd.domain.responses import response_id, with_response_id
from offloadd.domain.status import (
    TERMINAL,
    RequestTimes,
    StatusDocument,
    UpstreamAnswer,
    answered,
    processing,
    progressed,
    stored,
    with_body,
)
from offloadd.domain.webhooks import Webhooks
from offloadd.keys.base import Charge, KeyStore
from offloadd.metrics import Metrics
from offloadd.protocol.wire import Assembly, Dialect
from offloadd.requests.aftermath import Aftermath
from offloadd.requests.endings import Endings, error_of
from offloadd.requests.writer import FileWriter
from offloadd.storage.layout import Location
from offloadd.storage.registry import Registry
from offloadd.storage.store import StorageError, Store, append
from offloadd.storage.transcript import chunk_record, is_forced_usage
from offloadd.upstream.call import Call, Upstream, UpstreamError

log = logging.getLogger("offloadd.runner")


@dataclass(slots=True)
class Run:
    """One running request: its document (newer than the file, by up to a second) and stream."""

    loc: Location
    doc: StatusDocument
    fd: int
    usage_added: bool
    timeout: float
    dialect: Dialect
    completion: Assembly = field(init=False)
    event_id: int = 0
    flushed_at: float = 0.0
    cancel_reason: str = "stop"
    task: asyncio.Task | None = None
    webhook_url: str | None = None
    path: Path = Path()  # of the `.txt`, for the readers' hub
    flushing: asyncio.Future | None = None  # the status write in a worker thread, if any
    charge: Charge | None = None  # what the create counted, for the tokens used
    ending: bool = False
    cancelled: bool = False  # its task was cancelled once (a stop, a disconnect, shutdown)
    released: bool = False  # its claim is released
    own_id: str | None = None  # a Responses API answer: offloadd's id, in every event

    def __post_init__(self) -> None:
        self.completion = self.dialect.assembly()


def _for_ending(doc: StatusDocument) -> StatusDocument:
    """A copy of the document that its ending may change (`status.concluded`: top-level
    keys, `request` and `response`) without touching the one still served."""
    final = cast(StatusDocument, dict(doc))
    final["request"] = cast(RequestTimes, dict(doc["request"]))
    final["response"] = cast(UpstreamAnswer, dict(doc["response"]))
    return final


class Runner:
    """Owns the tasks of running requests: starts them, stops them, ends them on shutdown."""

    def __init__(
        self,
        store: Store,
        upstream: Upstream,
        config: Config,
        endings: Endings,
        webhooks: Webhooks,
        registry: Registry,
        metrics: Metrics,
        keys: KeyStore | None = None,  # with auth on: token budgets are counted here
    ):
        self.store, self.upstream, self.config, self.endings = store, upstream, config, endings
        self.webhooks, self.registry, self.metrics = webhooks, registry, metrics
        self.aftermath = Aftermath(store, webhooks, keys)
        self.writer = FileWriter(endings, registry)  # every file write of a running request
        self.on_append: Callable[[Path], None] = lambda path: None
        self.runs: dict[str, Run] = {}
        self.closing = False

    @property
    def running(self) -> int:
        return len(self.runs)

    @property
    def owner(self) -> str:
        """This daemon's name among the daemons on the directory."""
        return self.registry.owner

    def running_ids(self) -> set[str]:
        return set(self.runs)

    async def start(
        self,
        loc: Location,
        doc: StatusDocument,
        call: Call,
        usage_added: bool,
        timeout: float,
        webhook_url: str | None = None,
        charge: Charge | None = None,
    ) -> None:
        """Make the request's files (both or neither), claim it and run it, in one hop to
        the writer's files thread; its create answer need not wait for the upstream."""
        making = self.writer.create(loc, self._create, loc, doc)
        try:
            fd = await asyncio.shield(making)
        except asyncio.CancelledError:  # the caller left: nothing it did not get stays behind
            await asyncio.wait({making})
            if not making.cancelled() and making.exception() is None:
                await self.writer.call(self._undo, loc, making.result())
            raise
        run = Run(loc, doc, fd, usage_added, timeout, call.dialect)
        run.webhook_url, run.charge = webhook_url, charge
        run.path = self.store.txt_path(loc)
        run.own_id = response_id(loc) if call.dialect is RESPONSES else None
        self.runs[loc.uuid] = run
        run.task = asyncio.create_task(self._run(run, call), name=f"offloadd-run-{loc.uuid}")

    async def _write_end(self, run: Run, final: StatusDocument, end_bytes: bytes) -> None:
        """The final document and the stream's end, then the claim goes: one hop to the
        writer's thread, committed with the other endings due (`requests/writer.py`)."""

        def serve_final() -> None:  # before the end reaches the file: no reader of `[DONE]`
            run.doc = final  # can find the document still running (one atomic assignment)

        run.released = await self.writer.final(run.loc, final, end_bytes, run.fd, serve_final)

    def _undo(self, loc: Location, fd: int) -> None:
        os.close(fd)
        self._forget(loc)

    def _forget(self, loc: Location) -> None:
        self.registry.release(loc)
        self.store.remove(loc)

    def _create(self, loc: Location, doc: StatusDocument) -> int:
        """(In the writer's thread, once `loc` is claimed.) Both files and the stream's
        append descriptor; what fails leaves nothing behind (and the writer releases it)."""
        return self.store.create(loc, orjson.dumps(doc))

    async def document(self, loc: Location) -> StatusDocument | None:
        """The freshest document: from memory while this process runs it, else from disk.
        Its `response.body` may lag the stream by up to a flush; `with_answer` brings it up."""
        run = self._running(loc)
        if run:
            return run.doc
        return self.endings.document(loc) or await asyncio.to_thread(stored, self.store, loc)

    def with_answer(self, loc: Location, doc: StatusDocument) -> StatusDocument:
        """The document with the answer so far, built here rather than on every chunk."""
        run = self._running(loc)
        if run and run.doc is doc and run.event_id:
            with_body(doc, run.completion.body())
        return doc

    def _running(self, loc: Location) -> Run | None:
        run = self.runs.get(loc.uuid)
        return run if run is not None and run.loc == loc else None

    async def stop(self, loc: Location) -> StatusDocument | None:
        """Cancel the owning task and wait for it to write its final state; when another
        daemon owns it, ask that one and wait a few seconds for the answer."""
        run = self._running(loc)
        if run is not None and run.task is not None:
            self.cancel(loc.uuid)
            await asyncio.wait({run.task}, timeout=5)
            return run.doc
        doc = await self.document(loc)
        if doc is None or doc["status"] in TERMINAL:
            return doc
        await asyncio.to_thread(self.registry.request_stop, loc)
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.config.remote_stop_wait
        while loop.time() < give_up:
            await asyncio.sleep(self.config.poll_interval)
            doc = await self.document(loc) or doc
            if doc["status"] in TERMINAL:
                break
        return doc

    async def until_done(self, loc: Location) -> StatusDocument | None:
        """The document once the request has ended (its task, when it runs here; the file
        otherwise)."""
        run = self._running(loc)
        if run is not None and run.task is not None:
            await asyncio.wait({run.task})
        while (doc := await self.document(loc)) is not None and doc["status"] not in TERMINAL:
            await asyncio.sleep(self.config.poll_interval)
        return doc

    def is_running(self, loc: Location) -> bool:
        return self._running(loc) is not None

    def cancel(self, uuid: str, reason: str = "stop") -> None:
        """Cancel a running request's task (which closes its upstream connection)."""
        run = self.runs.get(uuid)
        if run is None or run.task is None or run.cancelled or run.ending:
            return  # one cancellation per request: a second one would land in its ending
        run.cancelled = True
        run.cancel_reason = reason
        run.task.cancel()

    async def close(self) -> None:
        """Let running requests finish for the grace time, then end the rest as interrupted."""
        self.closing = True
        tasks = [run.task for run in self.runs.values() if run.task]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.config.grace_seconds)
            for uuid, run in list(self.runs.items()):
                if run.task in pending:
                    self.cancel(uuid, "shutdown")
            if pending:
                await asyncio.wait(pending, timeout=5)
        await self.writer.close()
        await self.aftermath.close()

    async def _run(self, run: Run, call: Call) -> None:
        """Call the upstream, then end the request exactly once. The ending runs in a task
        of its own that no stop can cancel: it closes the stream's descriptor only after
        every write to it is done, so no byte can reach a descriptor number reused since."""
        try:
            status, error = await self._call(run, call)
        except asyncio.CancelledError:
            if run.cancel_reason == "stop":
                status, error = "stopped", None
            else:
                message = "the server shut down before the request completed"
                status, error = "error", error_of("interrupted", message)
        ending = asyncio.ensure_future(self._end(run, status, error))
        while not ending.done():
            try:
                await asyncio.shield(ending)
            except asyncio.CancelledError:
                continue  # the ending goes on; whoever cancelled waits for this task
        ending.result()

    async def _call(self, run: Run, call: Call) -> tuple[str, dict | None]:
        """The upstream call, chunk by chunk; the status and error it ends with."""
        processing(run.doc, time.time())
        try:
            async with asyncio.timeout(run.timeout):
                reply = await self.upstream.open(call)
                answered(run.doc, reply.response.status, reply.headers)
                async for raw, chunk in self.upstream.chunks(reply, call):
                    self._chunk(run, raw, chunk)
            return "done", None
        except UpstreamError as e:
            return "error", e.as_dict()
        except TimeoutError:
            message = f"the upstream call took longer than its timeout of {run.timeout:g} s"
            return "error", error_of("upstream_timeout", message)
        except StorageError as e:
            log.error("request %s ends: %s", run.loc.rel, e)
            return "error", error_of("storage_error", str(e))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("request %s failed unexpectedly", run.loc.rel)
            return "error", error_of("internal_error", "offloadd failed; see its log")

    async def _end(self, run: Run, status: str, error: dict | None) -> None:
        """The final document and the stream's end, then the descriptor and the marker go,
        the webhook and the token count start."""
        try:
            await self._finish(run, status, error)
        except Exception:
            log.exception("request %s: its ending failed", run.loc.rel)
        finally:
            os.close(run.fd)
            self.runs.pop(run.loc.uuid, None)
            if not run.released:
                self.registry.release(run.loc)
            self.aftermath.after(run.loc, run.doc, run.webhook_url, run.charge)

    def _chunk(self, run: Run, raw: bytes, chunk: dict) -> None:
        """Write one upstream chunk to the stream, verbatim, and fold it into the document
        (a usage chunk offloadd asked for on the caller's behalf goes to the document only;
        a Responses API event carries offloadd's response id, not the upstream's)."""
        if run.own_id is not None:
            raw, chunk = with_response_id(raw, chunk, run.own_id)
        run.completion.add(chunk)
        if not is_forced_usage(chunk, run.usage_added):
            run.event_id += 1
            name = run.dialect.event_name(chunk)
            append(run.fd, chunk_record(run.event_id, raw, self.config.retry_ms, name))
            self.on_append(run.path)
        doc = run.doc
        now = time.monotonic()
        if progressed(doc, run.event_id):
            self.metrics.first_token(time.time() - (doc["request"]["processed_at"] or time.time()))
            # `streaming` reaches the disk a poll interval later, unless the request has
            # ended by then (most short ones): one status write fewer for them
            run.flushed_at = now
            loop = asyncio.get_running_loop()
            loop.call_later(self.config.poll_interval, self._first_flush, run)
        elif now - run.flushed_at >= self.config.status_flush_seconds:
            run.flushed_at = now
            self._flush(run)

    def _first_flush(self, run: Run) -> None:
        if not run.ending and run.flushing is None:
            self._flush(run)

    def _flush(self, run: Run) -> None:
        """Bring the file up to the document, in a worker thread (the stream goes on
        meanwhile); one flush at a time, and a failed one ends the request."""
        if run.flushing is not None:
            if not run.flushing.done():
                return
            if error := run.flushing.exception():
                raise error
        with_body(run.doc, run.completion.body())
        data = orjson.dumps(run.doc)  # here, while no one changes the document
        run.flushing = self.writer.call(self.store.write_status, run.loc, data)

    async def _finish(self, run: Run, status: str, error: dict | None = None) -> None:
        """End the request: final document first, then the stream's end (in a worker
        thread: its fsync must not stall the readers of this process)."""
        if run.doc["status"] in TERMINAL:
            return
        run.ending = True  # no flush starts from here on
        if run.flushing is not None:  # a late flush must not overwrite the final document
            await asyncio.wait({run.flushing})
            if not run.flushing.cancelled() and run.flushing.exception():
                log.error("request %s: a status flush failed", run.loc.rel)
        # The final document is made on a copy and served only once it is on disk, so a
        # reader told `done` here finds the same on disk (or behind nginx).
        final = _for_ending(run.doc)
        end_bytes = self.endings.finalize(final, run.completion, run.event_id, status, error)
        status, error = final["status"], final["error"]
        self.metrics.finished[final["request"]["endpoint"], status] += 1
        if error and error["code"].startswith("upstream_"):
            self.metrics.upstream_errors[error["code"]] += 1
        try:
            await self._write_end(run, final, end_bytes)
        finally:
            run.doc = final
        self.on_append(run.path)
