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

import orjson

from offloadd.assemble import Completion
from offloadd.config import Config
from offloadd.sse import DONE, encode_event
from offloadd.status import TERMINAL, public_view, set_status
from offloadd.store import Location, StorageError, Store, append
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


class Runner:
    def __init__(
        self,
        store: Store,
        upstream: Upstream,
        config: Config,
        on_append: Callable[[Path], None] = lambda path: None,
        webhooks: Webhooks | None = None,
    ):
        self.store, self.upstream, self.config = store, upstream, config
        self.on_append, self.webhooks = on_append, webhooks
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
        self.runs[loc.uuid] = run
        run.task = asyncio.create_task(self._run(run, call), name=f"offloadd-run-{loc.uuid}")

    def status(self, loc: Location) -> dict | None:
        """The freshest document: from memory while this process runs it, else from disk."""
        run = self.runs.get(loc.uuid)
        if run is not None and run.loc == loc:
            return run.doc
        return self.store.read_status(loc)

    async def stop(self, loc: Location) -> dict | None:
        """Cancel the owning task and wait for it to write its final state."""
        run = self.runs.get(loc.uuid)
        if run is None or run.loc != loc or run.task is None:
            return self.store.read_status(loc)
        run.cancel_reason = "stop"
        run.task.cancel()
        await asyncio.wait({run.task}, timeout=5)
        return run.doc

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
        """Write one upstream chunk to the stream, verbatim, and fold it into the document."""
        run.event_id += 1
        usage_only = chunk.get("choices") == [] and chunk.get("usage") is not None
        name = "usage" if usage_only and run.usage_added else None
        append(run.fd, encode_event(run.event_id, raw, name))
        self.on_append(self.store.txt_path(run.loc))
        run.completion.add(chunk)
        doc = run.doc
        doc["events"] = run.event_id
        doc["response"]["body"] = run.completion.body()
        now = time.monotonic()
        if doc["status"] == "waiting":
            set_status(doc, "streaming")
        elif now - run.flushed_at < self.config.status_flush_seconds:
            return
        run.flushed_at = now
        self.store.write_status(run.loc, doc)

    def _finish(self, run: Run, status: str, error: dict | None = None) -> None:
        """Final document first, then `event: status` and `[DONE]`: a reader after `[DONE]`
        always finds the final document."""
        doc = run.doc
        if doc["status"] in TERMINAL:
            return
        now = time.time()
        set_status(doc, status)
        doc["error"] = error
        doc["response"]["body"] = run.completion.body() if run.event_id else None
        request = doc["request"]
        request["finished_at"] = round(now, 3)
        request["request_time"] = round(now - (request["processed_at"] or now), 3)
        request["total_time"] = round(now - request["request_at"], 3)
        final = {"status": status, "finish_reason": run.completion.finish_reason}
        if error:
            final["error"] = error
        doc["events"] = run.event_id + 2
        tail = encode_event(run.event_id + 1, orjson.dumps(final), "status")
        tail += encode_event(run.event_id + 2, DONE)
        try:
            self.store.write_status(run.loc, doc, durable=True)
        except StorageError as e:
            log.error("request %s: final status not saved: %s", run.loc.rel, e)
        try:
            append(run.fd, tail)
        except StorageError as e:
            log.error("request %s: stream end not saved: %s", run.loc.rel, e)
        self.on_append(self.store.txt_path(run.loc))


def _error(code: str, message: str) -> dict:
    return {"code": code, "message": message, "upstream_status": None}
