"""What the Durable Streams read path reads from: a *source* — bytes addressed by position,
a content type, closed or not, and a way to wait for it to change. Model answers are
one kind (`AnswerSource`, a `.txt` followed through the readers' hub); application
streams the other (`requests/streams.py`). The HTTP side (`http/durable.py`) knows
only this shape."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from offloadd.protocol.durable import NOW, TEXT, BadOffset
from offloadd.requests.readers import Hub, Tail
from offloadd.storage.transcript import END

READ_LIMIT = 1024 * 1024  # bytes one read answers with at most; the rest on the next


@dataclass(frozen=True)
class Chunk:
    """One read: the stored bytes of [start, next), the tail then, and closure."""

    start: int
    data: bytes
    next: int
    tail: int
    closed: bool  # the stream is closed (and so `tail` is its final length)

    @property
    def at_tail(self) -> bool:
        return self.next >= self.tail

    @property
    def finished(self) -> bool:
        """The reader has everything there will ever be."""
        return self.closed and self.at_tail


class Waiter(Protocol):
    def arm(self) -> asyncio.Future:
        """A future resolved when the source may have changed (arm before reading)."""
        ...


class Source(Protocol):
    @property
    def content_type(self) -> str: ...

    @property
    def kind(self) -> str:
        """protocol.durable's TEXT, JSON or BINARY."""
        ...

    @property
    def etag_key(self) -> str: ...

    @property
    def private(self) -> bool: ...

    @property
    def head_headers(self) -> dict: ...

    async def read(self, start: int, limit: int = READ_LIMIT) -> Chunk:
        """From byte `start` (or `NOW`: the tail); BadOffset past the tail."""
        ...

    def watch(self) -> contextlib.AbstractAsyncContextManager[Waiter]: ...


@dataclass
class AnswerSource:
    """A model answer's transcript, byte for byte, served as text: closed once its end
    (`data: [DONE]`) is in the file, or the hub knows an end its writer could not write."""

    hub: Hub
    path: Path
    etag_key: str
    private: bool
    content_type: str = "text/plain; charset=utf-8"
    kind: str = TEXT
    head_headers: dict = field(default_factory=dict)

    async def read(self, start: int, limit: int = READ_LIMIT) -> Chunk:
        tail = self.hub.tails.get(self.path)
        if tail is not None and (start == NOW or tail.start <= start <= tail.size):
            return _from_tail(tail, start, limit)  # a crowd reads memory, not the disk
        return await asyncio.to_thread(_from_file, self.path, start, limit)

    @contextlib.asynccontextmanager
    async def watch(self) -> AsyncIterator[Waiter]:
        async with self.hub.tail(self.path) as tail:
            yield _TailWaiter(tail)


@dataclass
class _TailWaiter:
    tail: Tail

    def arm(self) -> asyncio.Future:
        if self.tail.done:  # it will not change again
            return asyncio.get_running_loop().create_future()
        return self.tail.changed()


def _from_tail(tail: Tail, start: int, limit: int) -> Chunk:
    size = tail.size
    start = size if start == NOW else start
    if start > size:
        raise BadOffset("the offset is past the end of the stream")
    pieces, got = [], 0
    for piece, _ in tail.pieces(start) or []:
        pieces.append(piece[: limit - got])
        got += len(pieces[-1])
        if got >= limit:
            break
    data = b"".join(pieces)
    return Chunk(start, data, start + len(data), size, tail.done)


def _from_file(path: Path, start: int, limit: int) -> Chunk:
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        start = size if start == NOW else start
        if start > size:
            raise BadOffset("the offset is past the end of the stream")
        data = os.pread(fd, min(limit, size - start), start)
        end = os.pread(fd, len(END), max(0, size - len(END)))
    finally:
        os.close(fd)
    return Chunk(start, data, start + len(data), size, end == END)
