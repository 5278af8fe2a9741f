"""Reading application streams: the bytes of a range (a fork's inherited part from its
source, through any depth of forks), one read as the read path wants it, and the stream
as a source for it (`requests/sources.py`). No lock: appends only add bytes, closure is
read before the size, and JSON reads stop at the last whole message."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from offloadd.protocol.durable import JSON, NOW, BadOffset, kind_of, whole_lines
from offloadd.requests.sources import READ_LIMIT, Chunk, Waiter
from offloadd.requests.watch import Watch
from offloadd.storage.streams import Stream, StreamFiles

MAX_DEPTH = 64  # fork chains deeper than this are refused


def tail_of(stream: Stream) -> int:
    assert stream.meta is not None
    return stream.meta["base"] + stream.size()


def read_range(files: StreamFiles, path: str, start: int, end: int, depth: int = 0) -> bytes:
    """Bytes [start, end) of a stream, its fork's inherited part read from its source."""
    stream = files.stream(path)
    meta = stream.load()
    if meta is None or start >= end:
        return b""
    base, out = meta["base"], b""
    if start < base and meta.get("fork") and depth < MAX_DEPTH:
        out = read_range(files, meta["fork"]["source"], start, min(end, base), depth + 1)
    if end > base:
        own = max(start, base)
        out += stream.read(own - base, end - own)
    return out


def read_chunk(files: StreamFiles, path: str, start: int, limit: int) -> Chunk:
    """One read: closure is read first, so a closed stream's size is final."""
    stream = files.stream(path)
    meta = stream.load()
    if meta is None:  # deleted under a reader: it ends
        return Chunk(max(start, 0), b"", max(start, 0), max(start, 0), True)
    closed, tail = meta["closed"], tail_of(stream)
    start = tail if start == NOW else start
    if start > tail:
        raise BadOffset("the offset is past the end of the stream")
    data = read_range(files, path, start, min(tail, start + limit))
    if kind_of(meta["content_type"]) == JSON:
        data = whole_lines(data)
    return Chunk(start, data, start + len(data), tail, closed)


@dataclass
class AppSource:
    """An application stream as the read path sees it (`requests/sources.py`)."""

    files: StreamFiles
    watcher: Watch
    path: str
    content_type: str
    etag_key: str
    private: bool = False
    head_headers: dict = field(default_factory=dict)
    owner: str | None = None  # the hash of the API key that made it (auth on)

    @property
    def kind(self) -> str:
        return kind_of(self.content_type)

    async def read(self, start: int, limit: int = READ_LIMIT) -> Chunk:
        return await asyncio.to_thread(read_chunk, self.files, self.path, start, limit)

    @contextlib.asynccontextmanager
    async def watch(self) -> AsyncIterator[Waiter]:
        with self.watcher.watching(self.files.stream(self.path)) as waiter:
            yield waiter
