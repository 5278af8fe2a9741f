"""The files of application streams (Durable Streams at `/v1/stream/<path>`): the one owner
of where they are and how they are written.

A stream is three files in `DATA/streams/`, named for its path percent-encoded whole
(so no path, in any encoding, names a file outside that folder; a name too long for
the filesystem is replaced by its SHA-256):

- `<name>.data`  its own bytes, only ever appended to (a fork's bytes start at its fork
  offset: what comes before is its source's);
- `<name>.meta`  a small JSON document — content type, TTL or expiry, closure, the last
  `Stream-Seq`, producers' state, fork origin and live forks — replaced whole
  (temporary file, fsync, rename); the stream exists when this file does;
- `<name>.lock`  taken with `flock` by whoever changes the stream, in any process on
  the directory (flock works on local disks and on NFS v4 / sshfs-with-locks alike).

The last access of a stream with a sliding TTL is the data file's mtime (`touch`:
no fsync, no rewrite). Everything here blocks: callers run it in a worker thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import orjson

from offloadd.storage.store import StorageError

MAX_NAME = 200  # bytes of an encoded file name (filesystems allow 255, with the suffixes)


def file_name(path: str) -> str:
    """The file stem of a stream path: percent-encoded whole, or `%%<sha256>` (which no
    encoding produces) when that is too long."""
    name = quote(path, safe="")
    if len(name) > MAX_NAME:
        return "%%" + hashlib.sha256(path.encode()).hexdigest()
    return name


@dataclass
class Stream:
    """One stream's files, opened under its lock (or read without one, by readers)."""

    root: Path
    path: str
    meta: dict | None = None

    @property
    def name(self) -> str:
        return file_name(self.path)

    def file(self, suffix: str) -> Path:
        return self.root / f"{self.name}{suffix}"

    def load(self) -> dict | None:
        """The metadata document, or None when the stream does not exist."""
        try:
            self.meta = orjson.loads(self.file(".meta").read_bytes())
        except FileNotFoundError:
            self.meta = None
        except (OSError, orjson.JSONDecodeError) as e:
            raise StorageError(f"cannot read stream metadata: {e}") from e
        return self.meta

    def size(self) -> int:
        """Bytes of its own data (0 when the file is missing)."""
        try:
            return self.file(".data").stat().st_size
        except FileNotFoundError:
            return 0

    def last_access(self) -> float:
        """When it was last read or written (sliding TTLs): the data file's mtime."""
        try:
            return self.file(".data").stat().st_mtime
        except FileNotFoundError:
            return time.time()

    def touch(self) -> None:
        with contextlib.suppress(OSError):
            os.utime(self.file(".data"))

    def write_meta(self, meta: dict, sync_dir: bool = False) -> None:
        """Replace the metadata atomically and durably."""
        target = self.file(".meta")
        tmp = target.with_name(f".{self.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(orjson.dumps(meta))
                f.flush()
                os.fdatasync(f.fileno())
            os.replace(tmp, target)
            if sync_dir:
                _sync_dir(self.root)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise StorageError(f"cannot write stream metadata: {e.strerror or e}") from e
        self.meta = meta

    def create(self, meta: dict, initial: bytes) -> None:
        """Both files or neither: the data first, then the metadata that makes it exist."""
        try:
            with open(self.file(".data"), "wb") as f:
                f.write(initial)
                f.flush()
                os.fdatasync(f.fileno())
            self.write_meta(meta, sync_dir=True)
        except (OSError, StorageError) as e:
            self.remove()
            raise StorageError(f"cannot create the stream: {e}") from e

    def append(self, data: bytes) -> None:
        """Append and sync before the append is acknowledged; a write the disk cut short
        is undone, so the stream never holds part of an append."""
        fd = os.open(self.file(".data"), os.O_WRONLY | os.O_APPEND)
        try:
            start = os.fstat(fd).st_size
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fdatasync(fd)
            except OSError as e:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start)
                raise StorageError(f"cannot append to the stream: {e.strerror or e}") from e
        finally:
            os.close(fd)

    def read(self, pos: int, size: int) -> bytes:
        """Own bytes from file position `pos`."""
        try:
            fd = os.open(self.file(".data"), os.O_RDONLY)
        except FileNotFoundError:
            return b""
        try:
            return os.pread(fd, size, pos)
        finally:
            os.close(fd)

    def remove(self) -> None:
        """The metadata first (the stream is gone), then its data."""
        for suffix in (".meta", ".data"):
            with contextlib.suppress(OSError):
                self.file(suffix).unlink()
        self.meta = None

    def probe(self) -> tuple:
        """What changes when the stream does (size, metadata version), for waiters."""
        try:
            meta = self.file(".meta").stat()
            return (self.size(), meta.st_mtime_ns, meta.st_ino)
        except OSError:  # gone (or unreadable for now): a change its readers look at
            return (None,)


class StreamFiles:
    """The streams folder of one data directory."""

    def __init__(self, data: Path):
        self.root = data / "streams"

    def stream(self, path: str) -> Stream:
        return Stream(self.root, path)

    @contextlib.contextmanager
    def locked(self, path: str) -> Iterator[Stream]:
        """The stream, loaded under its lock (held until the block ends)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.root / f"{file_name(path)}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise StorageError(f"cannot lock the stream: {e.strerror or e}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            stream = self.stream(path)
            stream.load()
            yield stream
        finally:
            os.close(fd)  # releases the lock

    def all(self) -> Iterator[Stream]:
        """Every stream with metadata (for housekeeping)."""
        if not self.root.is_dir():
            return
        for meta in self.root.glob("*.meta"):
            with contextlib.suppress(StorageError, OSError):
                doc = orjson.loads(meta.read_bytes())
                if isinstance(doc, dict) and isinstance(doc.get("path"), str):
                    yield Stream(self.root, doc["path"], doc)


def _sync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
