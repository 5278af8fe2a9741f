"""The files of a conversation: reading and writing them where `layout` puts them.

Knows nothing of HTTP. The `.json` is made in place before anyone knows its name, then
only ever replaced whole (temporary file, then rename), the `.txt` only ever appended
to, so readers in any process see either the old or the new document and a prefix of
the stream.
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
    """Reads and writes conversations under one data directory. Paths are plain strings
    inside (a `Path` built per file was a tenth of the writer thread's own time under load);
    `json_path`/`txt_path` hand out `Path`s to those outside."""

    def __init__(self, root: Path):
        self.root = root
        self._root = str(root)
        self._folder: str | None = None  # the folder `create` made last (one per second)

    def _base(self, loc: Location) -> str:
        return f"{self._root}/{loc.scope}/{loc.stamp}/{loc.uuid}"

    def json_path(self, loc: Location) -> Path:
        return Path(self._base(loc) + ".json")

    def txt_path(self, loc: Location) -> Path:
        return Path(self._base(loc) + ".txt")

    def create(self, loc: Location, doc: Mapping | bytes) -> int:
        """Make both files, or neither: a failed create leaves nothing behind. Returns an
        append-only descriptor on the `.txt`, for the one task that writes it.

        The `.json` is made in place (`O_EXCL`), not renamed from a temporary file: no one
        knows its name before the create answers, so no reader can see it half-written; a
        crash while it is written leaves one that does not parse, which `read_status`
        takes for a missing document (the crash takeover ends nothing of it)."""
        base = self._base(loc)
        try:
            fd = self._new_stream(base + ".txt")
        except OSError as e:
            raise StorageError(f"cannot create the conversation files: {e.strerror or e}") from e
        try:
            _write_new(base + ".json", doc if isinstance(doc, bytes) else orjson.dumps(doc))
        except OSError as e:
            os.close(fd)
            self.remove(loc)
            raise StorageError(f"cannot create the conversation files: {e.strerror or e}") from e
        return fd

    def _new_stream(self, path: str) -> int:
        """The `.txt`, made and opened for appending in one call; its folder is made only
        when it is not the one made last (creates come many a second)."""
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL
        folder = path.rpartition("/")[0]
        if folder != self._folder:
            os.makedirs(folder, exist_ok=True)
            self._folder = folder
        try:
            return os.open(path, flags, 0o644)
        except FileNotFoundError:  # its folder went meanwhile (retention, say)
            os.makedirs(folder, exist_ok=True)
            return os.open(path, flags, 0o644)

    def write_status(self, loc: Location, doc: Mapping | bytes, durable: bool = False) -> None:
        """Replace the `.json` atomically; `durable` also syncs it (for final states)."""
        base = self._base(loc)
        path, tmp = base + ".json", _tmp_of(base, loc)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                _write_all(fd, doc if isinstance(doc, bytes) else orjson.dumps(doc))
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise StorageError(f"cannot write {loc.uuid}.json: {e.strerror or e}") from e

    def write_final(self, docs: list[tuple[Location, bytes]]) -> list[StorageError | None]:
        """Replace several `.json` atomically and durably, in one batch: every temporary
        file written, then each synced (`fdatasync`), then each renamed; so one batch's
        syncs share the filesystem's journal commits. Per document: None, or its error."""
        errors: list[StorageError | None] = [None] * len(docs)
        made: list[tuple[int, int, str, str]] = []  # index, fd, tmp, path
        for i, (loc, data) in enumerate(docs):
            base = self._base(loc)
            path, tmp = base + ".json", _tmp_of(base, loc)
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            except OSError as e:
                errors[i] = _cannot_write(loc, e)
                continue
            made.append((i, fd, tmp, path))
            try:
                _write_all(fd, data)
            except OSError as e:
                errors[i] = _cannot_write(loc, e)
        for i, fd, tmp, path in made:
            try:
                if errors[i] is None:
                    os.fdatasync(fd)
            except OSError as e:
                errors[i] = _cannot_write(docs[i][0], e)
            finally:
                os.close(fd)
            try:
                if errors[i] is None:
                    os.replace(tmp, path)
            except OSError as e:
                errors[i] = _cannot_write(docs[i][0], e)
            if errors[i] is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        return errors

    def read_status(self, loc: Location) -> dict | None:
        """The document, or None when there is none. One that does not parse is one whose
        first write a crash cut short (`create`): no one was told of it, so it is none."""
        try:
            with open(self._base(loc) + ".json", "rb") as f:
                return orjson.loads(f.read())
        except FileNotFoundError:
            return None
        except orjson.JSONDecodeError:
            return None

    def open_stream(self, loc: Location) -> int:
        """An append-only descriptor on the `.txt`, for the one task that writes it."""
        try:
            return os.open(self._base(loc) + ".txt", os.O_WRONLY | os.O_APPEND)
        except OSError as e:
            raise StorageError(f"cannot open the stream file: {e.strerror or e}") from e

    def remove(self, loc: Location) -> None:
        """Remove both files, as far as the disk lets us (this runs when a write failed)."""
        base = self._base(loc)
        for path in (base + ".txt", base + ".json"):
            with contextlib.suppress(OSError):
                os.unlink(path)


def _tmp_of(base: str, loc: Location) -> str:
    """The temporary file a `.json` is replaced from: hidden, and this process's own."""
    return f"{base[: -len(loc.uuid)]}.{loc.uuid}.{os.getpid()}.tmp"


def _cannot_write(loc: Location, e: OSError) -> StorageError:
    return StorageError(f"cannot write {loc.uuid}.json: {e.strerror or e}")


def _write_new(path: str, data: bytes) -> None:
    """A file that did not exist, with `data` (`O_EXCL`: never one that did)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        _write_all(fd, data)
    finally:
        os.close(fd)


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
