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

from offloadd.assemble import Completion
from offloadd.config import Config
from offloadd.layout import Location
from offloadd.metrics import Metrics
from offloadd.registry import Registry
from offloadd.status import TERMINAL, public_view, set_status
from offloadd.store import StorageError, Store, append
from offloadd.transcript import chunk_record, ending, events_after_end, is_forced_usage, recover
from offloadd.upstream import Call, Upstream, UpstreamError
from offloadd.webhooks import Webhooks

log = logging.getLogger("offloadd.runner")


@dataclass
class Run:
    """One running request: its document (newer than the file, by up to a second) and stream."""

    loc: Location
    doc: dict
    fd: int
    usage_added: bool
    timeout: float
    completion: Completion = field(default_factory=Completion)
    event_id: int = 0
    flushed_at: float = 0.0
    cancel_reason: str = "stop"
    task: asyncio.Task | None = None
    webhook_url: str | None = None
    path: Path | None = None  # of the `.txt`, for the readers' hub


class Runner:
    def __init__(
        self,
        store: Store,
        upstream: Upstream,
        config: Config,
        on_append: Callable[[Path], None] = lambda path: None,
        webhooks: Webhooks | None = None,
        registry: Registry | None = None,
        metrics: Metrics | None = None,
    ):
        self.store, self.upstream, self.config = store, upstream, config
        self.on_append, self.webhooks, self.registry = on_append, webhooks, registry
        self.metrics = metrics or Metrics()
        self.metrics.running = lambda: len(self.runs)
        self.runs: dict[str, Run] = {}
        self.deliveries: set[asyncio.Task] = set()
        self.closing = False

    def start(
        self,
        loc: Location,
        doc: dict,
        call: Call,
        usage_added: bool,
        timeout: float,
        webhook_url: str | None = None,
    ) -> None:
        """Run a request whose files exist; its create answer need not wait for the upstream."""
        run = Run(loc, doc, self.store.open_stream(loc), usage_added, timeout)
        run.webhook_url = webhook_url
        run.path = self.store.txt_path(loc)
        if self.registry:
            self.registry.claim(loc)
        self.runs[loc.uuid] = run
        run.task = asyncio.create_task(self._run(run, call), name=f"offloadd-run-{loc.uuid}")

    def document(self, loc: Location) -> dict | None:
        """The freshest document: from memory while this process runs it, else from disk.
        Its `response.body` may lag the stream by up to a flush; `with_answer` brings it up."""
        run = self._running(loc)
        return run.doc if run else self.store.read_status(loc)

    def with_answer(self, loc: Location, doc: dict) -> dict:
        """The document with the answer so far, built here rather than on every chunk."""
        run = self._running(loc)
        if run and run.doc is doc and run.event_id:
            doc["response"]["body"] = run.completion.body()
        return doc

    def _running(self, loc: Location) -> Run | None:
        run = self.runs.get(loc.uuid)
        return run if run is not None and run.loc == loc else None

    async def stop(self, loc: Location) -> dict | None:
        """Cancel the owning task and wait for it to write its final state; when another
        daemon owns it, ask that one and wait a few seconds for the answer."""
        run = self._running(loc)
        if run is not None and run.task is not None:
            run.cancel_reason = "stop"
            run.task.cancel()
            await asyncio.wait({run.task}, timeout=5)
            return run.doc
        doc = self.store.read_status(loc)
        if doc is None or doc["status"] in TERMINAL or self.registry is None:
            return doc
        self.registry.request_stop(loc)
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.config.remote_stop_wait
        while loop.time() < give_up:
            await asyncio.sleep(self.config.poll_interval)
            doc = self.store.read_status(loc) or doc
            if doc["status"] in TERMINAL:
                break
        return doc

    async def maintain(self) -> None:
        """The daemon's housekeeping: heartbeat, stops asked through other daemons, and
        ending the requests of daemons that died."""
        registry = self.registry
        if registry is None:
            return
        last_beat = last_sweep = 0.0
        while True:
            now = time.monotonic()
            if now - last_beat >= self.config.heartbeat_seconds:
                await asyncio.to_thread(registry.beat)
                last_beat = now
            if self.runs:
                for uuid in registry.stop_requests() & self.runs.keys():
                    self.runs[uuid].cancel_reason = "stop"
                    self.runs[uuid].task.cancel()
            if now - last_sweep >= self.config.orphan_sweep_seconds:
                await asyncio.to_thread(self.sweep)
                last_sweep = now
            await asyncio.sleep(self.config.stop_poll_seconds)

    def sweep(self) -> None:
        """End every request whose owner is dead (each is taken by one daemon only)."""
        for loc in self.registry.orphans():
            try:
                self.end_orphan(loc)
            except (OSError, StorageError) as e:
                log.error("request %s: could not end it after its daemon died: %s", loc.rel, e)
        self.registry.forget_dead_owners()

    async def close(self) -> None:
        """Let running requests finish for the grace time, then end the rest as interrupted."""
        self.closing = True
        tasks = [run.task for run in self.runs.values() if run.task]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.config.grace_seconds)
            for run in list(self.runs.values()):
                if run.task in pending:
                    run.cancel_reason = "shutdown"
                    run.task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        for task in self.deliveries:  # pending retries are given up on shutdown
            task.cancel()
        if self.deliveries:
            await asyncio.wait(self.deliveries, timeout=5)

    async def _run(self, run: Run, call: Call) -> None:
        doc = run.doc
        doc["request"]["processed_at"] = round(time.time(), 3)
        try:
            async with asyncio.timeout(run.timeout):
                reply = await self.upstream.open(call)
                doc["response"].update(status_code=reply.response.status, headers=reply.headers)
                async for raw, chunk in self.upstream.chunks(reply, call):
                    self._chunk(run, raw, chunk)
            self._finish(run, "done")
        except UpstreamError as e:
            self._finish(run, "error", e.as_dict())
        except TimeoutError:
            message = f"the upstream call took longer than its timeout of {run.timeout:g} s"
            self._finish(run, "error", _error("upstream_timeout", message))
        except StorageError as e:
            log.error("request %s ends: %s", run.loc.rel, e)
            self._finish(run, "error", _error("storage_error", str(e)))
        except asyncio.CancelledError:
            if run.cancel_reason == "stop":
                self._finish(run, "stopped")
            else:
                message = "the server shut down before the request completed"
                self._finish(run, "error", _error("interrupted", message))
            raise
        except Exception:
            log.exception("request %s failed unexpectedly", run.loc.rel)
            self._finish(run, "error", _error("internal_error", "offloadd failed; see its log"))
        finally:
            os.close(run.fd)
            self.runs.pop(run.loc.uuid, None)
            if self.registry:
                self.registry.release(run.loc)
            if run.webhook_url and self.webhooks:
                self._deliver(run)

    def _deliver(self, run: Run) -> None:
        """Post the final document to the request's webhook, in a task of its own."""

        def record(outcome: dict) -> None:
            run.doc["webhook"] = outcome
            try:
                self.store.write_status(run.loc, run.doc)
            except StorageError as e:
                log.error("request %s: webhook outcome not saved: %s", run.loc.rel, e)

        task = asyncio.create_task(
            self.webhooks.deliver(run.webhook_url, public_view(run.doc), record),
            name=f"offloadd-webhook-{run.loc.uuid}",
        )
        self.deliveries.add(task)
        task.add_done_callback(self.deliveries.discard)

    def _chunk(self, run: Run, raw: bytes, chunk: dict) -> None:
        """Write one upstream chunk to the stream, verbatim, and fold it into the document
        (a usage chunk offloadd asked for on the caller's behalf goes to the document only)."""
        run.completion.add(chunk)
        if not is_forced_usage(chunk, run.usage_added):
            run.event_id += 1
            append(run.fd, chunk_record(run.event_id, raw, self.config.retry_ms))
            self.on_append(run.path)
        doc = run.doc
        doc["events"] = run.event_id
        now = time.monotonic()
        if doc["status"] == "waiting":
            set_status(doc, "streaming")
            self.metrics.first_token(time.time() - doc["request"]["processed_at"])
        elif now - run.flushed_at < self.config.status_flush_seconds:
            return
        run.flushed_at = now
        doc["response"]["body"] = run.completion.body()
        self.store.write_status(run.loc, doc)

    def _finish(self, run: Run, status: str, error: dict | None = None) -> None:
        """Final document first, then `event: status` and `[DONE]`: a reader after `[DONE]`
        always finds the final document."""
        if run.doc["status"] in TERMINAL:
            return
        self.metrics.finished[run.doc["request"]["endpoint"], status] += 1
        if error and error["code"].startswith("upstream_"):
            self.metrics.upstream_errors[error["code"]] += 1
        tail = self._finalize(run.doc, run.completion, run.event_id, status, error)
        self._write_end(run.loc, run.doc, tail, run.fd)

    def _write_end(self, loc: Location, doc: dict, tail: bytes, fd: int) -> None:
        try:
            self.store.write_status(loc, doc, durable=True)
        except StorageError as e:
            log.error("request %s: final status not saved: %s", loc.rel, e)
        try:
            append(fd, tail)
        except StorageError as e:
            log.error("request %s: stream end not saved: %s", loc.rel, e)
        self.on_append(self.store.txt_path(loc))

    def _finalize(
        self, doc: dict, completion: Completion, last_id: int, status: str, error: dict | None
    ) -> bytes:
        """Bring the document to its final state; return the bytes that end the stream."""
        now = time.time()
        set_status(doc, status)
        doc["error"] = error
        doc["response"]["body"] = completion.body() if completion.head or last_id else None
        request = doc["request"]
        request["finished_at"] = round(now, 3)
        request["request_time"] = round(now - (request["processed_at"] or now), 3)
        request["total_time"] = round(now - request["request_at"], 3)
        doc["events"] = events_after_end(last_id, status)
        return ending(last_id, status, error, self.config.retry_ms)

    # --- requests whose daemon died -------------------------------------------------------

    def end_orphan(self, loc: Location) -> None:
        """End a request whose owner died: its answer is rebuilt from the stream file (which
        is ahead of the status file by up to a second), then it ends `interrupted` — or
        `stopped`, if someone asked for that — with status and `[DONE]` so readers are
        released."""
        doc = self.store.read_status(loc)
        if doc is None:
            return
        path = self.store.txt_path(loc)
        fd = self.store.open_stream(loc)
        try:
            found = recover(path)
            if found.ended:
                return  # it ended; only its marker was left behind
            stop_asked = self.registry is not None and loc.uuid in self.registry.stop_requests()
            if doc["status"] in TERMINAL:  # died between the two final writes
                tail = ending(found.last_id, doc["status"], doc.get("error"), self.config.retry_ms)
            elif stop_asked:
                tail = self._finalize(doc, found.completion, found.last_id, "stopped", None)
            else:
                message = "the daemon running this request stopped before it completed"
                error = _error("interrupted", message)
                tail = self._finalize(doc, found.completion, found.last_id, "error", error)
            self._write_end(loc, doc, tail, fd)
            log.warning("request %s ended as %s (its daemon died)", loc.rel, doc["status"])
        finally:
            os.close(fd)
            if self.registry:
                self.registry.release(loc)


def _error(code: str, message: str) -> dict:
    return {"code": code, "message": message, "upstream_status": None}
