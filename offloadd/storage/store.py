"""The files of a conversation: reading and writing them where `layout` puts them.

Knows nothing of HTTP. The `.json` is only ever replaced whole (temporary file,
then rename), the `.txt` only ever appended to, so readers in any process see
either the old or the new document and a prefix of the stream.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path

import orjson

from offloadd.storage.layout import Location

# The statuses a status document ends in (`domain/status.py` makes every transition): kept
# with the files, so that retention, below the domain, knows what it may remove.
TERMINAL = ("done", "error", "stopped")


class StorageError(Exception):
    """A file of a conversation could not be written (full disk, permissions, …)."""


class Store:
    """Reads and writes conversations under one data directory."""

    def __init__(self, root: Path):
        self.root = root
        self._folder: Path | None = None  # the folder `create` made last (one per second)

    def base(self, loc: Location) -> Path:
        return self.root / loc.scope / loc.stamp / loc.uuid

    def json_path(self, loc: Location) -> Path:
        return self.base(loc).with_suffix(".json")

    def txt_path(self, loc: Location) -> Path:
        return self.base(loc).with_suffix(".txt")

    def create(self, loc: Location, doc: Mapping | bytes) -> int:
        """Make both files, or neither: a failed create leaves nothing behind. Returns an
        append-only descriptor on the `.txt`, for the one task that writes it."""
        try:
            fd = self._new_stream(loc)
        except OSError as e:
            raise StorageError(f"cannot create the conversation files: {e.strerror or e}") from e
        try:
            self.write_status(loc, doc)
        except StorageError as e:
            os.close(fd)
            self.remove(loc)
            raise StorageError(f"cannot create the conversation files: {e}") from e
        return fd

    def _new_stream(self, loc: Location) -> int:
        """The `.txt`, made and opened for appending in one call; its folder is made only
        when it is not the one made last (creates come many a second)."""
        path, flags = self.txt_path(loc), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL
        if path.parent != self._folder:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._folder = path.parent
        try:
            return os.open(path, flags, 0o644)
        except FileNotFoundError:  # its folder went meanwhile (retention, say)
            path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(path, flags, 0o644)

    def write_status(self, loc: Location, doc: Mapping | bytes, durable: bool = False) -> None:
        """Replace the `.json` atomically; `durable` also syncs it (for final states)."""
        path = self.json_path(loc)
        tmp = path.with_name(f".{loc.uuid}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(doc if isinstance(doc, bytes) else orjson.dumps(doc))
                if durable:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise StorageError(f"cannot write {path.name}: {e.strerror or e}") from e

    def write_final(self, docs: list[tuple[Location, bytes]]) -> list[StorageError | None]:
        """Replace several `.json` atomically and durably, in one batch: every temporary
        file written, then each synced (`fdatasync`), then each renamed; so one batch's
        syncs share the filesystem's journal commits. Per document: None, or its error."""
        errors: list[StorageError | None] = [None] * len(docs)
        made: list[tuple[int, int, Path, Path]] = []  # index, fd, tmp, path
        for i, (loc, data) in enumerate(docs):
            path = self.json_path(loc)
            tmp = path.with_name(f".{loc.uuid}.{os.getpid()}.tmp")
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            except OSError as e:
                errors[i] = StorageError(f"cannot write {path.name}: {e.strerror or e}")
                continue
            made.append((i, fd, tmp, path))
            try:
                _write_all(fd, data)
            except OSError as e:
                errors[i] = StorageError(f"cannot write {path.name}: {e.strerror or e}")
        for i, fd, tmp, path in made:
            try:
                if errors[i] is None:
                    os.fdatasync(fd)
            except OSError as e:
                errors[i] = StorageError(f"cannot write {path.name}: {e.strerror or e}")
            finally:
                os.close(fd)
            try:
                if errors[i] is None:
                    os.replace(tmp, path)
            except OSError as e:
                errors[i] = StorageError(f"cannot write {path.name}: {e.strerror or e}")
            if errors[i] is not None:
                tmp.unlink(missing_ok=True)
        return errors

    def read_status(self, loc: Location) -> dict | None:
        try:
            return orjson.loads(self.json_path(loc).read_bytes())
        except FileNotFoundError:
            return None

    def open_stream(self, loc: Location) -> int:
        """An append-only descriptor on the `.txt`, for the one task that writes it."""
        try:
            return os.open(self.txt_path(loc), os.O_WRONLY | os.O_APPEND)
        except OSError as e:
            raise StorageError(f"cannot open the stream file: {e.strerror or e}") from e

    def remove(self, loc: Location) -> None:
        """Remove both files, as far as the disk lets us (this runs when a write failed)."""
        for path in (self.txt_path(loc), self.json_path(loc)):
            with contextlib.suppress(OSError):
                path.unlink()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def append(fd: int, data: bytes) -> None:
    """Append whole records to a stream file, or nothing: a write the disk cut short is
    undone, so the file always ends at a record boundary."""
    start = None
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            if start is None and written < len(view):
                start = os.fstat(fd).st_size - written
            view = view[written:]
    except OSError as e:
        if start is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
        raise StorageError(f"cannot append to the stream file: {e.strerror or e}") from e
