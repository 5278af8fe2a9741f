"""`Idempotency-Key`: a create retried with the same key (per API key, within 24 h) gets the
first answer again instead of a second model call — a PHP back end that retries after a
timeout must not pay twice.

Records are files beside the conversations, so every daemon on the directory sees them:

    DATA/.offloadd/idempotency/<sha256(caller, key)>    {"state", "body_sha256", "answer", …}

A private request's bearer token is never stored: it is derived from the server's secret
and the idempotency key (HMAC), so the replay can hand out the same token again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import orjson

from offloadd.errors import ApiError, BadRequest

TTL = 24 * 3600.0
WAIT_FOR_FIRST = 5.0  # seconds a retry waits for the first request's answer
PENDING_TTL = 60.0  # a key held this long by a create that never finished (its daemon died)
RECHECK = 0.05  # seconds between looks at a record being made


class Conflict(ApiError):
    status = 409
    code = "idempotency_conflict"


class Unprocessable(ApiError):
    status = 422
    code = "idempotency_key_reused"


class Idempotency:
    def __init__(self, data: Path, secret: Callable[[], bytes]):
        self.root = data / ".offloadd" / "idempotency"
        self._secret = secret

    def _path(self, caller: str, key: str) -> Path:
        return self.root / hashlib.sha256(f"{caller}\0{key}".encode()).hexdigest()

    def token(self, caller: str, key: str) -> str:
        """The bearer token a private request made under this key gets, every time."""
        digest = hmac.new(self._secret(), f"token\0{caller}\0{key}".encode(), hashlib.sha256)
        return digest.hexdigest()

    async def begin(self, caller: str, key: str, body: bytes, endpoint: str) -> dict | None:
        """The first answer when this key was used before (None: go ahead; this request
        now holds the key until `finish` or `abandon`). A key belongs to one endpoint."""
        if not (0 < len(key) <= 255 and key.isascii() and key.isprintable()):
            raise BadRequest(
                "`Idempotency-Key` must be 1 to 255 printable ASCII characters",
                code="invalid_idempotency_key",
            )
        path, body_hash = self._path(caller, key), hashlib.sha256(body).hexdigest()
        loop = asyncio.get_running_loop()
        give_up = loop.time() + WAIT_FOR_FIRST
        while True:
            record = await asyncio.to_thread(self._reserve, path, body_hash, endpoint)
            if record is None:
                return None
            if record.get("endpoint") != endpoint:
                used = record.get("endpoint")
                raise Unprocessable(f"this `Idempotency-Key` was used on another endpoint ({used})")
            if record["body_sha256"] != body_hash:
                raise Unprocessable("this `Idempotency-Key` was used with a different request body")
            if record["state"] == "done":
                return record["answer"]
            if loop.time() >= give_up:
                raise Conflict("a request with this `Idempotency-Key` is still being created")
            await asyncio.sleep(RECHECK)

    def _reserve(self, path: Path, body_hash: str, endpoint: str) -> dict | None:
        """Make the record (None), or read the one that exists (expired ones are replaced).
        The record is written whole under a name of its own, then linked into place: it
        appears complete or not at all, and only one of many concurrent creates links it."""
        self.root.mkdir(parents=True, exist_ok=True)
        pending = {"state": "pending", "body_sha256": body_hash, "endpoint": endpoint}
        for _ in range(3):
            tmp = _write_temp(path, orjson.dumps({**pending, "at": time.time()}))
            try:
                os.link(tmp, path)
                return None
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
            record, inode = _read_with_inode(path)
            if record is not None and not _expired(record):
                return record
            if record is None and inode is not None:
                return {**pending, "state": "pending"}  # unreadable for a moment: wait
            if inode is not None:
                _bury(path, inode)  # expired: take the key anew
        return _read(path)

    async def finish(self, caller: str, key: str, body: bytes, answer: dict, endpoint: str) -> None:
        """Keep the answer (without any bearer token) for the retries to come."""
        stored = _without_tokens(answer)
        record = {
            "state": "done",
            "endpoint": endpoint,
            "body_sha256": hashlib.sha256(body).hexdigest(),
            "at": time.time(),
            "answer": stored,
        }
        await asyncio.to_thread(_replace, self._path(caller, key), orjson.dumps(record))

    async def abandon(self, caller: str, key: str) -> None:
        """The create failed: a retry with this key may try again."""
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(self._path(caller, key).unlink)


def with_token(answer: dict, token: str) -> dict:
    """A stored answer with the (derived) bearer token put back where the original has it."""
    answer = orjson.loads(orjson.dumps(answer))
    if answer["authorization"].get("access") == "private":
        answer["authorization"]["bearer_token"] = token
        answer["authorization"]["stream_url_arg"] = f"token={token}"
        answer["endpoints"]["bearer_token"] = token
    return answer


def _without_tokens(answer: dict) -> dict:
    answer = orjson.loads(orjson.dumps(answer))
    answer["authorization"].pop("bearer_token", None)
    answer["authorization"].pop("stream_url_arg", None)
    answer["endpoints"].pop("bearer_token", None)
    return answer


def _expired(record: dict) -> bool:
    age = time.time() - record.get("at", 0)
    return age >= (PENDING_TTL if record.get("state") == "pending" else TTL)


def _read_with_inode(path: Path) -> tuple[dict | None, int | None]:
    """The record and the file it was read from (None, None: there is none)."""
    try:
        with open(path, "rb") as f:
            inode, data = os.fstat(f.fileno()).st_ino, f.read()
    except FileNotFoundError:
        return None, None
    try:
        record = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None, inode
    return (record if isinstance(record, dict) else None), inode


def _bury(path: Path, inode: int) -> None:
    """Remove the expired record read from `inode`, and only it: another create may have
    replaced it since with a fresh one, which is put back."""
    grave = path.with_name(f".{path.name}.{uuid.uuid4().hex}.expired")
    try:
        os.rename(path, grave)
    except FileNotFoundError:
        return
    if grave.stat().st_ino != inode:
        with contextlib.suppress(FileExistsError):
            os.link(grave, path)
    grave.unlink()


def _read(path: Path) -> dict | None:
    try:
        record = orjson.loads(path.read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def _write_temp(path: Path, data: bytes) -> Path:
    """`data` in a file beside `path`, under a name no other write uses."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_bytes(data)
    return tmp


def _replace(path: Path, data: bytes) -> None:
    os.replace(_write_temp(path, data), path)
