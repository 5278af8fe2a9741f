"""The data directory's layout and the URL ⇄ path pattern: the one owner of both.

A conversation is `DATA/{pub,priv}/YYYY/MM/DD/HH/MM/SS/<uuid>.{json,txt}`, and its URLs
are `/<kind>/r/` followed by the same path, so a finished public file can be served
statically from the same tree (SPEC §2). `kind` is 1 for stream requests, 2 for async (`Kind`).
"""

from __future__ import annotations

import enum
import functools
import re
import time
import uuid as uuidlib
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

SCOPES = ("pub", "priv")


class Kind(enum.IntEnum):
    """A request's kind: the first segment of its URLs (`/1/r/…`, `/2/r/…`)."""

    STREAM = 1  # POST /v1/stream-chatgpt: status, stream and stop URLs
    ASYNC = 2  # POST /v1/async-chatgpt: status and stop URLs, for callers that only poll


KINDS = tuple(Kind)
UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
STAMP = re.compile(r"\d{4}/\d{2}/\d{2}/\d{2}/\d{2}/\d{2}")
READ_PREFIXES = tuple(f"/{kind}/r/" for kind in KINDS)
STREAMS_PREFIX = "/v1/stream/"  # application streams (Durable Streams): storage/streams.py
# aiohttp's route pattern for a conversation's URLs (add `.json`, `.txt` or `/stop`)
ROUTE = (
    r"/{kind:[12]}/r/{scope:pub|priv}/{stamp:\d{4}/\d{2}/\d{2}/\d{2}/\d{2}/\d{2}}"
    r"/{uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}}"
)
# the same, as OpenAPI writes a path
OPENAPI_PATH = "/{kind}/r/{scope}/{year}/{month}/{day}/{hour}/{minute}/{second}/{uuid}"
_URL_PATH = re.compile(
    r"/(?P<kind>[12])/r/(?P<scope>pub|priv)/(?P<stamp>\d{4}/\d{2}/\d{2}/\d{2}/\d{2}/\d{2})"
    r"/(?P<uuid>[^/]+)(?P<suffix>\.json|\.txt|/stop)"
)


@dataclass(frozen=True)
class Location:
    """Where one conversation lives, as `scope/stamp/uuid`; also the tail of its URLs."""

    scope: str
    stamp: str
    uuid: str

    @classmethod
    def new(cls, scope: str, when: datetime) -> Location:
        return cls.at(scope, when.timestamp())

    @classmethod
    def at(cls, scope: str, epoch: float) -> Location:
        """A new request's location at `epoch` seconds (its stamp cached per second:
        every create makes one)."""
        return cls(scope, _stamp(int(epoch)), str(uuidlib.uuid4()))

    @classmethod
    def parse(cls, scope: str, stamp: str, uuid: str) -> Location | None:
        """A location from URL parts, or None when any part is not exactly well-formed."""
        if scope in SCOPES and STAMP.fullmatch(stamp) and UUID4.fullmatch(uuid):
            return cls(scope, stamp, uuid)
        return None

    @classmethod
    def from_rel(cls, rel: str) -> Location | None:
        """A location from its `scope/stamp/uuid` form (as kept in bookkeeping files)."""
        scope, _, rest = rel.partition("/")
        stamp, _, uuid = rest.rpartition("/")
        return cls.parse(scope, stamp, uuid)

    @property
    def rel(self) -> str:
        return f"{self.scope}/{self.stamp}/{self.uuid}"


@functools.lru_cache(maxsize=4)
def _stamp(second: int) -> str:
    """`YYYY/MM/DD/HH/MM/SS` (UTC) of a second; creates come many a second."""
    return time.strftime("%Y/%m/%d/%H/%M/%S", time.gmtime(second))


def url_prefix(base_url: str, kind: Kind, loc: Location) -> str:
    """A conversation's URLs without their suffix (`.json`, `.txt`, `/stop`)."""
    return f"{base_url.rstrip('/')}/{kind}/r/{loc.rel}"


def parse_url(url: str) -> tuple[Kind, Location, str] | None:
    """(kind, location, suffix) of one of offloadd's conversation URLs, or None."""
    m = _URL_PATH.fullmatch(urlsplit(url).path)
    loc = m and Location.parse(m["scope"], m["stamp"], m["uuid"])
    return (Kind(int(m["kind"])), loc, m["suffix"]) if m and loc else None
