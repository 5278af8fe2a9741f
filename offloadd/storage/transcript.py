"""The transcript format: the one owner of what a `.txt` holds, how it is written, ended,
scanned, resumed and recovered.

A transcript is the SSE stream itself, byte for byte, so nginx serving the finished
file gives a reader the same stream as the live server. It is built for every common
reader, not only browsers (see docs/stream-format.md):

- every record has data (the openai SDK and httpx-sse yield a data-less record, and
  `json.loads("")` fails), so `retry:` rides on the first event instead of standing alone;
- each upstream chunk is one unnamed event, verbatim, ids 1, 2, … without gaps; the
  usage chunk offloadd asked for on the caller's behalf is not written (its usage goes
  to the status document only), since the SDK yields it and `choices[0]` fails on it;
- the end: a request that ended `done` ends with `data: [DONE]` alone, as OpenAI's own
  stream does; one that ended `error` or `stopped` first has one unnamed event
  `{"status": …, "error": {"code", "message", …}}`, which the SDK raises as `APIError`
  and the original's demo client skips (it has no `choices`);
- a Messages stream (Anthropic's) keeps the upstream's event names (`event: message_start`,
  …), and its failed ending is one named `event: error` in Anthropic's shape
  (`{"type": "error", "error": {"type", "message", "details": {"error_code"}}}`), which
  Anthropic's SDKs raise (they skip unnamed events), then `[DONE]`, which they skip.

Transcripts of the first release (a lone `retry:` record first, `event: usage`,
`event: status` before `[DONE]`) are still served, resumed and recovered: readers only
need ids and the `[DONE]` end, which both formats share.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiofiles
import orjson

from offloadd.protocol.sse import DONE, Event, SSEParser, encode_event
from offloadd.protocol.wire import Assembly, Dialect

END = b"data: [DONE]\n\n"  # every finished transcript ends with these bytes
READ = 64 * 1024  # bytes read from disk at a time when scanning
STOPPED_MESSAGE = "the request was stopped before the model completed it"


def chunk_record(event_id: int, raw: bytes, retry_ms: int, name: str | None = None) -> bytes:
    """One upstream chunk as its event (named for the Responses API's typed events); the
    first also tells browsers when to reconnect."""
    return encode_event(event_id, raw, name, retry=retry_ms if event_id == 1 else None)


def is_forced_usage(chunk: dict, usage_added: bool) -> bool:
    """Whether this is the usage-only chunk offloadd asked for and the caller did not."""
    return usage_added and not chunk.get("choices") and chunk.get("usage") is not None


def ending(
    last_id: int, status: str, error: dict | None, retry_ms: int, dialect: Dialect | None = None
) -> bytes:
    """The records that end a stream whose last event was `last_id` (why it failed in the
    `dialect`'s words: Anthropic's named `error` for a Messages stream)."""
    records = []
    if status != "done":
        why = error or {"code": "stopped", "message": STOPPED_MESSAGE, "upstream_status": None}
        last_id += 1
        name, said = (
            dialect.ending(status, why) if dialect else (None, {"status": status, "error": why})
        )
        body = orjson.dumps(said)
        retry = retry_ms if last_id == 1 else None
        records.append(encode_event(last_id, body, name, retry=retry))
    last_id += 1
    records.append(encode_event(last_id, DONE, retry=retry_ms if last_id == 1 else None))
    return b"".join(records)


def events_after_end(last_id: int, status: str) -> int:
    """The id of `[DONE]` once `ending` has been written after event `last_id`."""
    return last_id + (1 if status == "done" else 2)


def finished(path: Path) -> bool:
    """Whether a stream file holds its whole stream."""
    with open(path, "rb") as f:
        f.seek(max(0, os.fstat(f.fileno()).st_size - len(END)))
        return f.read().endswith(END)


@dataclass
class Recovered:
    """What a transcript adds up to, read back from disk."""

    completion: Assembly
    ended: bool = False
    last_id: int = 0


def recover(path: Path, assembly: Assembly) -> Recovered:
    """Read a transcript whose writer is gone: a torn last record is cut off (so the
    file ends at a record boundary again), the chunks are folded into `assembly`."""
    raw = path.read_bytes()
    whole = raw.rfind(b"\n\n") + 2
    if whole < len(raw):
        os.truncate(path, whole)
    found = Recovered(completion=assembly)
    for event in SSEParser().feed(raw[:whole]):
        found.last_id = _id(event) or found.last_id
        if event.data == DONE:
            found.ended = True
        elif event.event != "status" and event.data.startswith(b"{"):
            with contextlib.suppress(orjson.JSONDecodeError):
                chunk = orjson.loads(event.data)
                if isinstance(chunk, dict) and "error" not in chunk:
                    found.completion.add(chunk)
    return found


def _id(event: Event) -> int | None:
    if event.id and event.id.isascii() and event.id.isdigit():
        return int(event.id)
    return None


@dataclass
class Position:
    """Where a reader resumes: the byte `offset` just after its last event."""

    offset: int
    ended: bool  # the stream ended at or before that event: nothing more will come
    highest: int  # the highest id the file holds now


async def resume_offset(path: Path, last_id: int) -> Position:
    """Scan records in fixed-size reads (a long transcript is never read whole) for the
    first event after `last_id`."""
    base, carry, found, highest = 0, b"", None, 0
    async with aiofiles.open(path, "rb") as f:
        while found is None:
            block = await f.read(READ)
            if not block:
                break
            carry += block
            start = 0
            for begin, record in _records(carry):
                event_id = record_id(record)
                highest = max(highest, event_id or 0)
                if event_id is not None and event_id > last_id:
                    found = base + begin
                    break
                start = begin + len(record) + 2
            base, carry = base + start, carry[start:]
        size = await f.seek(0, os.SEEK_END)
        if found is None:
            found = size if not carry else base
        await f.seek(max(0, size - len(END)))
        ended = (await f.read()).endswith(END)
    return Position(found, ended and found >= size, highest)


def _records(buf: bytes) -> Iterator[tuple[int, bytes]]:
    start = 0
    while (end := buf.find(b"\n\n", start)) != -1:
        yield start, buf[start:end]
        start = end + 2


def record_id(record: bytes) -> int | None:
    """The id of one record: offloadd writes it on the record's first line."""
    if record.startswith(b"id: "):
        line = record[4:].split(b"\n", 1)[0]
        if line.isascii() and line.isdigit():
            return int(line)
    return None


async def abandoned_end(
    path: Path, doc: dict, retry_ms: int, dialect: Dialect | None = None
) -> bytes:
    """The end of a stream whose status document is final but whose `.txt` never got its
    end (its disk was full, say): readers still learn that it is over, and why."""
    last = (await resume_offset(path, 2**63)).highest
    return ending(last, doc["status"], doc.get("error"), retry_ms, dialect)
