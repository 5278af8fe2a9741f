"""Application streams (Durable Streams, `/v1/stream/<path>`): their life — create (plain or
a fork), TTL and expiry, delete (soft while forks read through it), reads — on the files
`storage/streams.py` keeps. Appends, closure and producers are `requests/appends.py`.

Every change runs in a worker thread under the stream's lock, so daemons sharing the
directory serialise on it; a fork takes its source's lock after its own (always child
before parent, so two changes never wait on each other in a cycle).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from offloadd.errors import BadRequest, Conflict, Gone, NotFound
from offloadd.protocol.durable import EXPIRES_AT as EXPIRES_AT_HEADER
from offloadd.protocol.durable import (
    JSON,
    NOW,
    TTL,
    BadJson,
    BadOffset,
    count_messages,
    first_messages,
    json_messages,
    kind_of,
    media_type,
    whole_lines,
)
from offloadd.requests.sources import READ_LIMIT, Chunk, Waiter
from offloadd.requests.watch import Watch
from offloadd.storage.streams import Stream, StreamFiles

DEFAULT_TYPE = "application/octet-stream"
MAX_DEPTH = 64  # fork chains deeper than this are refused


@dataclass(frozen=True)
class Create:
    """A PUT: a new stream (or a fork), or the same one again."""

    path: str
    content_type: str | None  # None: not given (a fork takes its source's)
    body: bytes = b""
    ttl: int | None = None
    expires_at: str | None = None  # as given (compared as given on a repeat)
    expires_ms: float | None = None
    closed: bool = False
    fork_from: str | None = None
    fork_offset: int | None = None  # None: the source's tail
    sub_offset: int = 0


@dataclass
class Created:
    created: bool
    tail: int
    closed: bool
    content_type: str


def stored_body(body: bytes, content_type: str, allow_empty: bool) -> bytes:
    """A body as the stream stores it: JSON streams one message per line."""
    if kind_of(content_type) != JSON or (allow_empty and not body):
        return body
    try:
        return json_messages(body, allow_empty)
    except BadJson as e:
        raise BadRequest(str(e), code="invalid_json") from None


def tail_of(stream: Stream) -> int:
    assert stream.meta is not None
    return stream.meta["base"] + stream.size()


def expired(stream: Stream, now: float | None = None) -> bool:
    meta = stream.meta
    assert meta is not None
    now = time.time() if now is None else now
    if meta.get("expires_ms") is not None and now * 1000 >= meta["expires_ms"]:
        return True
    return meta.get("ttl") is not None and now >= stream.last_access() + meta["ttl"]


def referenced(files: StreamFiles, stream: Stream, depth: int = 0) -> bool:
    """Whether a live fork still reads through this stream."""
    assert stream.meta is not None
    for name in stream.meta.get("forks", []):
        fork = files.stream(name)
        meta = fork.load()
        if meta is None or (meta.get("fork") or {}).get("source") != stream.path:
            continue
        if not (meta.get("deleted") or expired(fork)):
            return True
        if depth < MAX_DEPTH and referenced(files, fork, depth + 1):
            return True
    return False


def state(files: StreamFiles, stream: Stream) -> str:
    """`missing`, `gone` (soft-deleted, or expired while forks read it) or `live`."""
    meta = stream.meta
    if meta is None:
        return "missing"
    if meta.get("deleted"):
        return "gone"
    if expired(stream):
        return "gone" if referenced(files, stream) else "missing"
    return "live"


def require_live(files: StreamFiles, stream: Stream) -> dict:
    found = state(files, stream)
    if found == "missing":
        raise NotFound("no such stream")
    if found == "gone":
        raise Gone("the stream was deleted")
    assert stream.meta is not None
    return stream.meta


def release(files: StreamFiles, source: str, fork: str, depth: int = 0) -> None:
    """A fork no longer reads through `source`; a source deleted (or expired) meanwhile
    that nothing reads any more is removed, and so on up the chain."""
    with files.locked(source) as stream:
        if stream.meta is None:
            return
        meta = dict(stream.meta, forks=[f for f in stream.meta["forks"] if f != fork])
        stream.write_meta(meta)
        if (meta.get("deleted") or expired(stream)) and not referenced(files, stream):
            remove(files, stream, depth + 1)


def remove(files: StreamFiles, stream: Stream, depth: int = 0) -> None:
    """Remove a stream's files, and its reference on its source (under its lock)."""
    assert stream.meta is not None
    origin = stream.meta.get("fork")
    stream.remove()
    if origin and depth < MAX_DEPTH:
        release(files, origin["source"], stream.path, depth)


# --- reads ----------------------------------------------------------------------------


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

    @property
    def kind(self) -> str:
        return kind_of(self.content_type)

    async def read(self, start: int, limit: int = READ_LIMIT) -> Chunk:
        return await asyncio.to_thread(read_chunk, self.files, self.path, start, limit)

    @contextlib.asynccontextmanager
    async def watch(self) -> AsyncIterator[Waiter]:
        with self.watcher.watching(self.files.stream(self.path)) as waiter:
            yield waiter


class Streams:
    """The streams of one data directory, for the HTTP side."""

    def __init__(self, files: StreamFiles, watcher: Watch):
        self.files, self.watcher = files, watcher

    async def open(self, path: str, touch: bool) -> tuple[AppSource, Chunk]:
        """A live stream to read (a GET touches a sliding TTL; a HEAD does not)."""
        source, chunk = await asyncio.to_thread(self._open, path, touch)
        return source, chunk

    def _open(self, path: str, touch: bool) -> tuple[AppSource, Chunk]:
        stream = self.files.stream(path)
        stream.load()
        meta = require_live(self.files, stream)
        if touch:
            stream.touch()
        head = {}
        if meta.get("ttl") is not None:
            head[TTL] = str(meta["ttl"])
        if meta.get("expires_at") is not None:
            head[EXPIRES_AT_HEADER] = meta["expires_at"]
        source = AppSource(
            self.files,
            self.watcher,
            path,
            meta["content_type"],
            f"{meta['generation']}",
            head_headers=head,
        )
        return source, read_chunk(self.files, path, NOW, 0)

    async def create(self, create: Create) -> Created:
        done = await asyncio.to_thread(self._create, create)
        self.watcher.poke(create.path)
        return done

    def _create(self, new: Create) -> Created:
        with self.files.locked(new.path) as stream:
            if stream.meta is not None:
                found = state(self.files, stream)
                if found == "gone":
                    raise Conflict("a deleted stream that forks still read is at this path")
                if found == "live":
                    return self._again(stream, new)
                remove(self.files, stream)  # expired: the path is free again
            return self._new(stream, new)

    def _again(self, stream: Stream, new: Create) -> Created:
        """The same PUT again is a 200; a different configuration a 409."""
        meta = stream.meta
        assert meta is not None
        fork = meta.get("fork") or {}
        wanted_type = new.content_type or (meta["content_type"] if new.fork_from else DEFAULT_TYPE)
        same = (
            media_type(wanted_type) == media_type(meta["content_type"])
            and new.closed == meta["closed"]
            and (new.fork_from or None) == (fork.get("source") or None)
            and (new.fork_offset is None or new.fork_offset == fork.get("offset"))
            and new.sub_offset == fork.get("sub", 0)
            and (new.fork_from or (new.ttl, new.expires_at) == (meta["ttl"], meta["expires_at"]))
        )
        if not same:
            raise Conflict("a stream with another configuration exists at this path")
        return Created(False, tail_of(stream), meta["closed"], meta["content_type"])

    def _new(self, stream: Stream, new: Create) -> Created:
        meta: dict = {
            "path": new.path,
            "generation": uuid.uuid4().hex,
            "content_type": new.content_type or DEFAULT_TYPE,
            "ttl": new.ttl,
            "expires_at": new.expires_at,
            "expires_ms": new.expires_ms,
            "closed": new.closed,
            "closed_by": None,
            "seq": None,
            "producers": {},
            "fork": None,
            "base": 0,
            "forks": [],
            "deleted": False,
            "created": time.time(),
        }
        if new.fork_from is None:
            initial = stored_body(new.body, meta["content_type"], allow_empty=True)
            stream.create(meta, initial)
            return Created(True, len(initial), new.closed, meta["content_type"])
        return self._fork(stream, new, meta)

    def _fork(self, stream: Stream, new: Create, meta: dict) -> Created:
        assert new.fork_from is not None
        if new.fork_from == new.path:  # it does not exist yet (and its lock is ours)
            raise NotFound("the stream to fork does not exist")
        with self.files.locked(new.fork_from) as source:
            found = state(self.files, source)
            if found == "missing":
                raise NotFound("the stream to fork does not exist")
            if found == "gone":
                raise Conflict("the stream to fork was deleted")
            src = source.meta
            assert src is not None
            if new.content_type and media_type(new.content_type) != media_type(src["content_type"]):
                raise Conflict("a fork has its source's content type")
            meta["content_type"] = src["content_type"]
            json = kind_of(src["content_type"]) == JSON
            tail = tail_of(source)
            anchor = tail if new.fork_offset is None else new.fork_offset
            if anchor > tail:
                raise BadRequest("the fork offset is past the source's end", code="bad_offset")
            if json and anchor and not read_range(self.files, source.path, anchor - 1, anchor):
                raise BadRequest("the fork offset is not a message boundary", code="bad_offset")
            prefix = self._sub_prefix(source.path, anchor, tail, new.sub_offset, json)
            body = stored_body(new.body, src["content_type"], allow_empty=True)
            if new.ttl is None and new.expires_at is None:
                meta.update(ttl=src["ttl"], expires_at=src["expires_at"])
                meta["expires_ms"] = src["expires_ms"]
            meta["fork"] = {"source": source.path, "offset": anchor, "sub": new.sub_offset}
            meta["base"] = anchor
            source.write_meta(dict(src, forks=[*src["forks"], new.path]))
        try:
            stream.create(meta, prefix + body)
        except Exception:
            release(self.files, new.fork_from, new.path)
            raise
        return Created(True, anchor + len(prefix) + len(body), new.closed, meta["content_type"])

    def _sub_prefix(self, source: str, anchor: int, tail: int, sub: int, json: bool) -> bytes:
        """The first `sub` bytes (messages, for JSON) after the anchor, made the fork's own."""
        if not sub:
            return b""
        after = read_range(self.files, source, anchor, tail)
        if (count_messages(after) if json else len(after)) < sub:
            raise BadRequest("the fork sub-offset is past the source's data", code="bad_offset")
        return first_messages(after, sub) if json else after[:sub]

    async def delete(self, path: str) -> None:
        await asyncio.to_thread(self._delete, path)
        self.watcher.poke(path)

    def _delete(self, path: str) -> None:
        with self.files.locked(path) as stream:
            require_live(self.files, stream)
            assert stream.meta is not None
            if referenced(self.files, stream):
                stream.write_meta(dict(stream.meta, deleted=True))
            else:
                remove(self.files, stream)
