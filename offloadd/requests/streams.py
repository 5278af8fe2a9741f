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
import hmac
import time
import uuid
from dataclasses import dataclass
from typing import Any

from offloadd.domain.access import new_token, token_hash
from offloadd.errors import BadRequest, Conflict, Forbidden, Gone, NotFound
from offloadd.protocol.durable import EXPIRES_AT as EXPIRES_AT_HEADER
from offloadd.protocol.durable import (
    JSON,
    NOW,
    TTL,
    BadJson,
    count_messages,
    first_messages,
    json_messages,
    kind_of,
    media_type,
)
from offloadd.requests.sources import Chunk
from offloadd.requests.stream_reads import MAX_DEPTH, AppSource, read_chunk, read_range, tail_of
from offloadd.requests.watch import Watch
from offloadd.storage.store import StorageError
from offloadd.storage.streams import Stream, StreamFiles

DEFAULT_TYPE = "application/octet-stream"


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
    owner: str | None = None  # the hash of the API key that makes it (auth on)
    private: bool = False  # read with a token handed out now (or the owner's key)


@dataclass
class Created:
    created: bool
    tail: int
    closed: bool
    content_type: str
    token: str | None = None  # a private stream's read token, shown once


def check_owner(meta: dict, owner: str | None) -> None:
    """With auth on, only the key that made a stream changes it."""
    if owner is not None and meta.get("owner") not in (None, owner):
        raise Forbidden("this stream belongs to another API key", code="not_owner")


def may_read(meta: dict, secrets: list[str]) -> bool:
    """A public stream, or a private one with its read token or its owner's key."""
    expected = meta.get("token_sha256")
    if not expected:
        return True
    for secret in secrets:
        digest = token_hash(secret)
        if hmac.compare_digest(digest, expected) or digest == meta.get("owner"):
            return True
    return False


def stored_body(body: bytes, content_type: str, allow_empty: bool) -> bytes:
    """A body as the stream stores it: JSON streams one message per line."""
    if kind_of(content_type) != JSON or (allow_empty and not body):
        return body
    try:
        return json_messages(body, allow_empty)
    except BadJson as e:
        raise BadRequest(str(e), code="invalid_json") from None


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


class Streams:
    """The streams of one data directory, for the HTTP side."""

    def __init__(self, files: StreamFiles, watcher: Watch):
        self.files, self.watcher = files, watcher
        # appends waiting for their stream's writer, and the writers (requests/appends.py)
        self.pending: dict[str, list[tuple[Any, asyncio.Future]]] = {}
        self.writers: dict[str, asyncio.Task] = {}

    async def open(
        self, path: str, touch: bool, secrets: list[str] | None = None
    ) -> tuple[AppSource, Chunk]:
        """A live stream to read (a GET touches a sliding TTL; a HEAD does not); a private
        one only with its token (`secrets` None: the server itself reads)."""
        return await asyncio.to_thread(self._open, path, touch, secrets)

    def _open(self, path: str, touch: bool, secrets: list[str] | None) -> tuple[AppSource, Chunk]:
        stream = self.files.stream(path)
        stream.load()
        meta = require_live(self.files, stream)
        if secrets is not None and not may_read(meta, secrets):
            raise NotFound("no such stream")
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
            meta["generation"] + (_scope(secrets or []) if meta.get("token_sha256") else ""),
            private=bool(meta.get("token_sha256")),
            head_headers=head,
            owner=meta.get("owner"),
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
        check_owner(meta, new.owner)
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
            "owner": new.owner,
        }
        token = new_token() if new.private else None
        if token:
            meta["token_sha256"] = token_hash(token)
        if new.fork_from is None:
            initial = stored_body(new.body, meta["content_type"], allow_empty=True)
            stream.create(meta, initial)
            return Created(True, len(initial), new.closed, meta["content_type"], token)
        created = self._fork(stream, new, meta)
        created.token = token
        return created

    def _fork(self, stream: Stream, new: Create, meta: dict) -> Created:
        assert new.fork_from is not None
        if new.fork_from == new.path:  # it does not exist yet (and its lock is ours)
            raise NotFound("the stream to fork does not exist")
        with self.files.locked(new.fork_from) as source:
            found = state(self.files, source)
            src_meta = source.meta or {}
            if src_meta.get("token_sha256") and src_meta.get("owner") != new.owner:
                found = "missing"  # a private stream of another key: not to be seen
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

    async def delete(self, path: str, owner: str | None = None) -> None:
        await asyncio.to_thread(self._delete, path, owner)
        self.watcher.poke(path)

    def _delete(self, path: str, owner: str | None) -> None:
        with self.files.locked(path) as stream:
            check_owner(require_live(self.files, stream), owner)
            assert stream.meta is not None
            if referenced(self.files, stream):
                stream.write_meta(dict(stream.meta, deleted=True))
            else:
                remove(self.files, stream)


def _scope(secrets: list[str]) -> str:
    """What a private stream's ETag is keyed by: the credentials it was read with."""
    return "." + token_hash("\n".join(secrets))[:16]


def collect(
    files: StreamFiles, older_than: float | None, dry_run: bool = False, now: float | None = None
) -> list[str]:
    """Housekeeping (and `offloadd gc`, `--retention`): remove expired streams, soft-deleted
    ones nothing reads any more, and — with a cutoff — streams neither read nor written
    for that long (soft-deleted instead while a live fork reads through them). The paths
    removed (or, with `dry_run`, that would be)."""
    now = time.time() if now is None else now
    removed = []
    for found in files.all():
        with contextlib.suppress(StorageError), files.locked(found.path) as stream:
            meta = stream.meta
            if meta is None:
                continue
            stale = older_than is not None and now - stream.last_access() >= older_than
            if not (meta.get("deleted") or expired(stream, now) or stale):
                continue
            if referenced(files, stream):
                if stale and not meta.get("deleted") and not dry_run:
                    stream.write_meta(dict(meta, deleted=True))
                continue
            removed.append(stream.path)
            if not dry_run:
                remove(files, stream)
    return removed
