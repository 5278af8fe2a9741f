"""Appending to an application stream and closing it (Durable Streams §5.2–§5.3): the order
of checks the protocol's suite pins, `Stream-Seq`, idempotent producers (epochs and
sequence numbers, fencing, duplicates), closure — all under the stream's lock, the data
synced before the append is acknowledged, then its state."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from offloadd.errors import ApiError, BadRequest, Conflict, Forbidden, Unavailable
from offloadd.protocol.durable import (
    CLOSED,
    EXPECTED_SEQ,
    NEXT_OFFSET,
    PRODUCER_EPOCH,
    RECEIVED_SEQ,
    format_offset,
    media_type,
)
from offloadd.requests.streams import Streams, check_owner, require_live, stored_body
from offloadd.storage.store import StorageError
from offloadd.storage.streams import Stream


@dataclass(frozen=True)
class Producer:
    id: str
    epoch: int
    seq: int


@dataclass(frozen=True)
class Append:
    """A POST: data (maybe none, to close only), its headers' meaning."""

    path: str
    body: bytes
    content_type: str | None  # None: no Content-Type header
    close: bool = False
    seq: str | None = None
    producer: Producer | None = None
    owner: str | None = None  # the hash of the caller's API key (auth on)


@dataclass
class Appended:
    tail: int
    closed: bool  # the stream is closed now (by this request or before it)
    new_data: bool  # data was appended (a producer's is a 200; a duplicate a 204)
    producer: tuple[int, int] | None  # (epoch, seq) to answer with


async def append(streams: Streams, request: Append) -> Appended:
    """Append (and/or close); checks that need no stream come first. Appends to one stream
    that arrive while another is being written go to disk together: one lock, one write,
    one fsync for all of them (group commit), each still checked and answered alone."""
    if not request.body and not request.close:
        raise BadRequest("an append needs a body (or `Stream-Closed: true`)", code="empty_body")
    if request.body and request.content_type is None:
        raise BadRequest("an append needs a `Content-Type`", code="missing_content_type")
    done = asyncio.get_running_loop().create_future()
    streams.pending.setdefault(request.path, []).append((request, done))
    if request.path not in streams.writers:
        task = asyncio.create_task(_write(streams, request.path), name="offloadd-append")
        streams.writers[request.path] = task
    result = await asyncio.shield(done)  # a caller that leaves does not undo its append
    if isinstance(result, BaseException):
        raise result
    return result


async def _write(streams: Streams, path: str) -> None:
    """Write the appends waiting for one stream, batch after batch, until none wait."""
    try:
        while batch := streams.pending.pop(path, None):
            try:
                results = await asyncio.to_thread(_batch, streams, path, [r for r, _ in batch])
            except Exception as e:  # a bug or a disk error: every append of the batch fails
                results = [e] * len(batch)
            except asyncio.CancelledError:  # shutdown: the callers get an answer, not a hang
                streams.pending.setdefault(path, [])[:0] = batch
                raise
            for (_, done), result in zip(batch, results, strict=True):
                if not done.done():
                    done.set_result(result)
            streams.watcher.poke(path)
    finally:
        del streams.writers[path]
        for _, done in streams.pending.pop(path, []):  # cancelled (shutdown): none written
            done.set_result(Unavailable("the server is shutting down"))


@dataclass
class _Batch:
    stream: Stream
    size: int  # own bytes on disk and to be written
    data: bytearray = field(default_factory=bytearray)
    changed: bool = False  # the metadata changed

    @property
    def tail(self) -> int:
        assert self.stream.meta is not None
        return self.stream.meta["base"] + self.size


def _batch(streams: Streams, path: str, requests: list[Append]) -> list[Appended | Exception]:
    """(In a worker thread.) Check and apply each append in order under the lock, then
    write their data, sync it, and then their metadata; nothing is acknowledged unsynced."""
    with streams.files.locked(path) as stream:
        batch = _Batch(stream, stream.size())
        results: list[Appended | Exception] = []
        for request in requests:
            try:
                results.append(_apply(streams, batch, request))
            except ApiError as e:
                results.append(e)
        if not any(isinstance(r, Appended) for r in results):
            return results
        try:
            if batch.data:
                stream.append(bytes(batch.data))
            if batch.changed and stream.meta is not None:
                stream.write_meta(stream.meta)
        except StorageError as e:
            return [e if isinstance(r, Appended) else r for r in results]
        return results


def _apply(streams: Streams, batch: _Batch, request: Append) -> Appended:
    """One append's checks, in the order the protocol's suite pins, against the stream as
    the appends before it in the batch left it."""
    stream = batch.stream
    meta = require_live(streams.files, stream)
    check_owner(meta, request.owner)
    stream.touch()  # any append, even one refused below, is an access (sliding TTL)
    if meta["closed"]:
        return _to_closed(batch, request)
    if request.body and media_type(request.content_type or "") != media_type(meta["content_type"]):
        raise Conflict("the body's content type is not the stream's")
    producer = request.producer
    if producer is not None and (dup := _duplicate(meta, producer)) is not None:
        return Appended(batch.tail, False, False, dup)
    if request.seq is not None and meta["seq"] is not None:
        if request.seq.encode() <= meta["seq"].encode():
            raise Conflict("`Stream-Seq` must increase", code="seq_conflict")
    data = b""
    if request.body:
        data = stored_body(request.body, meta["content_type"], allow_empty=False)
        batch.data += data
        batch.size += len(data)
    _commit(batch, request)
    answer = (producer.epoch, producer.seq) if producer else None
    return Appended(batch.tail, request.close, bool(data), answer)


def _to_closed(batch: _Batch, request: Append) -> Appended:
    """A closed stream takes nothing more; the request that closed it, repeated, is a
    duplicate (204), as a bare close is."""
    meta = batch.stream.meta
    assert meta is not None
    producer, tail = request.producer, batch.tail
    closing = meta.get("closed_by")
    if producer is not None and closing == [producer.id, producer.epoch, producer.seq]:
        return Appended(tail, True, False, (producer.epoch, producer.seq))
    if producer is None and not request.body and request.close:
        return Appended(tail, True, False, None)
    raise Conflict(
        "the stream is closed",
        code="stream_closed",
        headers={CLOSED: "true", NEXT_OFFSET: format_offset(tail)},
    )


def _duplicate(meta: dict, producer: Producer) -> tuple[int, int] | None:
    """(epoch, highest seq) when this is a producer's retry; raises when it is refused;
    None when it is new."""
    state = meta["producers"].get(producer.id)
    if state is None:
        if producer.seq != 0:
            raise _gap(0, producer.seq)
        return None
    epoch, last = state
    if producer.epoch < epoch:
        raise Forbidden(
            "a newer epoch of this producer exists",
            code="stale_epoch",
            headers={PRODUCER_EPOCH: str(epoch)},
        )
    if producer.epoch > epoch:
        if producer.seq != 0:
            raise BadRequest("a new epoch starts at sequence 0", code="bad_producer_seq")
        return None
    if producer.seq <= last:
        return (epoch, last)
    if producer.seq > last + 1:
        raise _gap(last + 1, producer.seq)
    return None


def _gap(expected: int, received: int) -> Conflict:
    return Conflict(
        f"producer sequence gap: expected {expected}, received {received}",
        code="producer_seq_gap",
        headers={EXPECTED_SEQ: str(expected), RECEIVED_SEQ: str(received)},
    )


def _commit(batch: _Batch, request: Append) -> None:
    """What the append changed besides the data (written after the data, if anything)."""
    meta = batch.stream.meta
    assert meta is not None
    changes: dict = {}
    producer = request.producer
    if producer is not None:
        changes["producers"] = {**meta["producers"], producer.id: [producer.epoch, producer.seq]}
    if request.seq is not None:
        changes["seq"] = request.seq
    if request.close:
        changes["closed"] = True
        if producer is not None:
            changes["closed_by"] = [producer.id, producer.epoch, producer.seq]
    if changes:
        batch.stream.meta = {**meta, **changes}
        batch.changed = True
