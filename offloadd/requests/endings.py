"""Ending a request: the one path every ending takes (done, error, stop, shutdown, the
orphan of a daemon that died), and one that cannot fail.

The final document is written (and synced) before the stream's end, so a reader that
reads the status right after `[DONE]` sees it final. What the disk refuses (it is
full, say) is kept here and written again by the housekeeping loop until it succeeds;
meanwhile the document is served from memory.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from offloadd.domain.dialects import dialect_of
from offloadd.domain.status import StatusDocument, concluded
from offloadd.protocol.wire import Assembly
from offloadd.storage.layout import Location
from offloadd.storage.store import StorageError, Store, append
from offloadd.storage.transcript import ending, events_after_end

log = logging.getLogger("offloadd.endings")


def error_of(code: str, message: str) -> dict:
    return {"code": code, "message": message, "upstream_status": None}


@dataclass(slots=True)
class Unsaved:
    """A final state the disk refused; retried until it is written."""

    loc: Location
    doc: StatusDocument
    end_bytes: bytes
    status_saved: bool = False
    end_saved: bool = False


class Endings:
    def __init__(self, store: Store, retry_ms: int):
        self.store, self.retry_ms = store, retry_ms
        self._unsaved: dict[str, Unsaved] = {}
        self._lock = threading.Lock()  # orphans are ended in a worker thread

    def finalize(
        self,
        doc: StatusDocument,
        completion: Assembly,
        last_id: int,
        status: str,
        error: dict | None,
    ) -> bytes:
        """Bring the document to its final state; the bytes that end its stream. An answer
        that cannot be assembled ends the request `error` rather than leaving it running."""
        try:
            body = None if completion.empty() and not last_id else completion.body()
        except Exception:
            log.exception("the answer of %s could not be assembled", doc.get("conversation_id"))
            body, status = None, "error"
            error = error_of("internal_error", "offloadd could not assemble the answer")
        concluded(doc, status, error, body, events_after_end(last_id, status), time.time())
        return ending(last_id, status, error, self.retry_ms, dialect_of(doc))

    def write(
        self,
        loc: Location,
        doc: StatusDocument,
        end_bytes: bytes,
        fd: int | None = None,
        saved: Callable[[], None] = lambda: None,
    ) -> None:
        """The final document, then the stream's end; what fails is kept for `retry`.
        `saved` runs between the two: whoever sees the end must find the document final."""
        self.write_many([(loc, doc, end_bytes, fd, saved)])

    def write_many(
        self, finals: list[tuple[Location, StatusDocument, bytes, int | None, Callable[[], None]]]
    ) -> None:
        """`write` for several requests at once: their final documents made durable in one
        batch, then each stream's end after its own document; what fails is kept for
        `retry`, as with `write`."""
        docs = [(loc, orjson.dumps(doc)) for loc, doc, _, _, _ in finals]
        errors = self.store.write_final(docs)
        for (loc, doc, end_bytes, fd, saved), error in zip(finals, errors, strict=True):
            pending = Unsaved(loc, doc, end_bytes)
            if error is None:
                pending.status_saved = True
                saved()
            else:
                log.error("request %s: final status not saved (will retry): %s", loc.rel, error)
            ended = self._save_end(pending, fd)
            if not (ended and pending.status_saved):
                with self._lock:
                    self._unsaved[loc.uuid] = pending

    def document(self, loc: Location) -> StatusDocument | None:
        """The final document of a request whose document the disk refused, if any."""
        pending = self._unsaved.get(loc.uuid)
        return pending.doc if pending and pending.loc == loc else None

    def retry(self) -> list[Location]:
        """Write what the disk refused before; the locations now fully written."""
        with self._lock:
            pending = list(self._unsaved.values())
        done = [p for p in pending if self._save(p)]
        with self._lock:
            for p in done:
                self._unsaved.pop(p.loc.uuid, None)
        return [p.loc for p in done]

    def __bool__(self) -> bool:
        return bool(self._unsaved)

    def _save(self, pending: Unsaved) -> bool:
        loc = pending.loc
        if not pending.status_saved:
            try:
                self.store.write_status(loc, pending.doc, durable=True)
                pending.status_saved = True
            except StorageError as e:
                log.error("request %s: final status not saved (will retry): %s", loc.rel, e)
        return self._save_end(pending) and pending.status_saved

    def _save_end(self, pending: Unsaved, fd: int | None = None) -> bool:
        if not pending.end_saved:
            try:
                self._append(pending.loc, pending.end_bytes, fd)
                pending.end_saved = True
            except StorageError as e:
                log.error("request %s: stream end not saved (will retry): %s", pending.loc.rel, e)
        return pending.end_saved

    def _append(self, loc: Location, end_bytes: bytes, fd: int | None) -> None:
        if fd is not None:
            return append(fd, end_bytes)
        fd = self.store.open_stream(loc)
        try:
            append(fd, end_bytes)
        finally:
            os.close(fd)
