"""Server-Sent Events wire format: encoding events and parsing a byte stream of them.

Shared by the writer (what goes into `.txt`), the upstream reader (the model's
stream) and the clients (tests, `offloadd follow`), so all agree on one format.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

DONE = b"[DONE]"
KEEPALIVE = b": keep-alive\n\n"
_LINE = re.compile(rb"\r\n|\r|\n")


def encode_event(
    event_id: int, data: bytes, event: str | None = None, retry: int | None = None
) -> bytes:
    """One event; data with line breaks becomes several `data:` lines, as SSE requires.
    The id comes first, where the transcript's scans look for it.

    A line break in a field's value would end the field and begin another (a forged
    `data:`, say): the id and retry are integers, written with `%d`, and an event name
    with a line break is refused with ValueError here, where the bytes are made."""
    head = b"id: %d\n" % event_id
    if event:
        if "\n" in event or "\r" in event:
            raise ValueError(f"an SSE event name may not hold a line break: {event!r}")
        head += b"event: %s\n" % event.encode()
    if retry is not None:
        head += b"retry: %d\n" % retry
    if b"\n" not in data and b"\r" not in data:  # every JSON chunk: no split needed
        return b"%sdata: %s\n\n" % (head, data)
    parts = [head]
    for line in _LINE.split(data):
        parts.append(b"data: %s\n" % line)
    parts.append(b"\n")
    return b"".join(parts)


@dataclass
class Event:
    data: bytes
    event: str | None = None
    id: str | None = None
    retry: int | None = None


class SSEParser:
    """Incremental parser (WHATWG HTML §9.2): feed any byte slices, get whole events."""

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[bytes] = []
        self._event: str | None = None
        self._id: str | None = None
        self._retry: int | None = None
        self.last_id: str | None = None

    def feed(self, chunk: bytes) -> Iterator[Event]:
        self._buf += chunk
        if b"\r" not in self._buf:  # the usual stream: one split, no search per line
            lines = self._buf.split(b"\n")
            self._buf, done = lines.pop(), 0
            try:
                for line in lines:
                    done += 1
                    if (event := self._line(line)) is not None:
                        yield event
            finally:  # a consumer that stopped early leaves the lines it did not take
                if done < len(lines):
                    self._buf = b"\n".join([*lines[done:], self._buf])
            return
        while True:
            m = _LINE.search(self._buf)
            # A lone "\r" at the end may be the first half of "\r\n": wait for more.
            if m is None or (m.group() == b"\r" and m.end() == len(self._buf)):
                return
            line, self._buf = self._buf[: m.start()], self._buf[m.end() :]
            event = self._line(line)
            if event is not None:
                yield event

    def _line(self, line: bytes) -> Event | None:
        if not line:
            return self._dispatch()
        if line.startswith(b":"):
            return None
        name, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        elif name == b"id" and b"\0" not in value:
            self._id = value.decode("utf-8", "replace")
        elif name == b"retry" and value.isdigit():
            self._retry = int(value)
        return None

    def _dispatch(self) -> Event | None:
        if self._id is not None:
            self.last_id = self._id
        if not self._data:
            retry, self._retry, self._event, self._id = self._retry, None, None, None
            return Event(b"", retry=retry) if retry is not None else None
        event = Event(b"\n".join(self._data), self._event, self._id, self._retry)
        self._data, self._event, self._id, self._retry = [], None, None, None
        return event


def parse_all(data: bytes) -> list[Event]:
    """Every complete event in `data` (retry-only records included)."""
    return list(SSEParser().feed(data))
