"""Model answers into an app's session stream (issue 25.4): a create naming
`session_stream` gets its answer appended there as JSON messages — its start, its text
as it arrives, its end — between the app's own messages.

The follower is a reader of the answer like any other (the hub's tail of its `.txt`),
so the runner knows nothing of it: it appends what each read brings as one append (one
fsync for all the deltas that arrived together), and the end once the transcript's is
there. Messages (`type`):

- `answer.start`  `conversation_id`, `endpoints` (the answer's URLs; never its token)
- `answer.delta`  `conversation_id`, `text`
- `answer.end`    `conversation_id`, `status`, `text` (all of it), `usage`, `error`
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from urllib.parse import unquote, urlsplit

import orjson

from offloadd.domain.access import token_hash
from offloadd.errors import ApiError, BadRequest, NotFound
from offloadd.protocol.durable import JSON, kind_of
from offloadd.protocol.sse import DONE, SSEParser
from offloadd.requests.appends import Append, append
from offloadd.requests.readers import Hub
from offloadd.requests.runner import Runner
from offloadd.requests.sources import AnswerSource
from offloadd.requests.streams import Streams
from offloadd.storage.layout import STREAMS_PREFIX, Location
from offloadd.storage.store import StorageError

log = logging.getLogger("offloadd.sessions")
CLOSE_WAIT = 5.0  # seconds followers may take to write their ends on shutdown


def session_path(value: str) -> str:
    """A stream path from `session_stream`: the path itself, `/v1/stream/<path>` or a URL."""
    path = unquote(urlsplit(value).path) if "://" in value or value.startswith("/") else value
    if path.startswith("/"):
        if not path.startswith(STREAMS_PREFIX):
            raise BadRequest("`session_stream` names no stream here", code="invalid_session")
        path = path[len(STREAMS_PREFIX) :]
    if not path:
        raise BadRequest("`session_stream` names no stream here", code="invalid_session")
    return path


def delta_text(event_name: str | None, data: bytes) -> str:
    """The text an event of either API's stream adds (chat chunks or Responses events)."""
    if not data.startswith(b"{"):
        return ""
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError:
        return ""
    if event_name == "response.output_text.delta":
        return chunk.get("delta") or "" if isinstance(chunk.get("delta"), str) else ""
    choices = chunk.get("choices")
    if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
        return ""
    content = (choices[0].get("delta") or {}).get("content")
    return content if isinstance(content, str) else ""


class Sessions:
    def __init__(self, streams: Streams, hub: Hub, runner: Runner):
        self.streams, self.hub, self.runner = streams, hub, runner
        self.followers: set[asyncio.Task] = set()

    async def check(self, value: str, caller: str | None) -> str:
        """Before the create is counted: the session stream exists, is the caller's (with
        auth on), is open and is JSON."""
        path = session_path(value)
        try:
            source, chunk = await self.streams.open(path, touch=False)
            if caller is not None and source.owner not in (None, token_hash(caller)):
                raise NotFound("not the caller's stream")
        except ApiError:
            raise NotFound(
                f"no stream {path!r} for `session_stream`", code="session_not_found"
            ) from None
        if kind_of(source.content_type) != JSON or chunk.closed:
            raise BadRequest(
                "`session_stream` must be an open stream of type application/json",
                code="invalid_session",
            )
        return path

    def follow(self, path: str, loc: Location, answer: dict) -> None:
        """Append the answer to the session stream, in a task of its own."""
        task = asyncio.create_task(
            self._follow(path, loc, answer), name=f"offloadd-session-{loc.uuid}"
        )
        self.followers.add(task)
        task.add_done_callback(self.followers.discard)

    async def _follow(self, path: str, loc: Location, answer: dict) -> None:
        cid = answer.get("conversation_id")
        try:
            start = {"type": "answer.start", "conversation_id": cid}
            await self._append(path, [{**start, "endpoints": answer.get("endpoints", {})}])
            text = await self._deltas(path, loc, cid)
            doc: dict = dict(await self.runner.document(loc) or {})  # a StatusDocument
            body = (doc.get("response") or {}).get("body") or {}
            end = {
                "type": "answer.end",
                "conversation_id": cid,
                "status": doc.get("status"),
                "text": text,
                "usage": body.get("usage") if isinstance(body, dict) else None,
                "error": doc.get("error"),
            }
            await self._append(path, [end])
        except (ApiError, StorageError) as e:  # the stream was closed or deleted meanwhile
            log.warning("session stream %r of %s: %s", path, loc.rel, e)
        except Exception:
            log.exception("session stream %r of %s failed", path, loc.rel)

    async def _deltas(self, path: str, loc: Location, cid: object) -> str:
        """Follow the transcript to its end; each read's text deltas as one append."""
        source = AnswerSource(self.hub, self.runner.store.txt_path(loc), loc.uuid, False)
        parser, pos, text = SSEParser(), 0, ""
        async with source.watch() as watch:
            while True:
                changed = watch.arm()
                chunk = await source.read(pos)
                pos = chunk.next
                deltas = []
                for event in parser.feed(chunk.data):
                    if event.data == DONE:
                        continue
                    if piece := delta_text(event.event, event.data):
                        deltas.append(
                            {"type": "answer.delta", "conversation_id": cid, "text": piece}
                        )
                        text += piece
                if deltas:
                    await self._append(path, deltas)
                if chunk.finished:
                    return text
                if chunk.at_tail:
                    await changed

    async def _append(self, path: str, messages: list) -> None:
        body = orjson.dumps(messages)
        await append(self.streams, Append(path, body, "application/json"))

    async def close(self) -> None:
        """On shutdown, after the requests ended: let followers write their ends."""
        if self.followers:
            _, pending = await asyncio.wait(self.followers, timeout=CLOSE_WAIT)
            for task in pending:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*pending, return_exceptions=True)
