"""Which daemon runs which request, kept on disk beside the conversations.

Several daemons may share one data directory (even across hosts, on NFS): so
ownership is files, not memory. Each daemon touches its own owner file as a
heartbeat and appends what it runs to its own journal, through a descriptor it keeps
open (one small write per claim or release, no file made per request); a stop asked of
a daemon that does not own the request leaves a stop marker the owner polls. Plain
files, appends and renames work on every shared filesystem, where locks and inotify
do not.

    DATA/.offloadd/owners/<owner>          heartbeat (mtime) + {"host", "pid"}
    DATA/.offloadd/run/<owner>.journal     lines "+ <rel>" (claimed), "- <uuid>" (released)
    DATA/.offloadd/run/<uuid>              the same for one request, as earlier releases
                                           wrote it: {"rel": …, "owner": …} (still taken over)
    DATA/.offloadd/stop/<uuid>             a stop request for a running request

A journal is rewritten with only its live claims once it has grown (a temporary file
renamed over it). The orphans of a dead daemon are found in its journal, which one
daemon alone takes by renaming it; the taker claims them in its own journal before
ending them, so a taker that dies too is taken over in turn.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import threading
import time
from pathlib import Path

import orjson

from offloadd.storage.layout import Location
from offloadd.storage.store import StorageError

JOURNAL = ".journal"
COMPACT_AFTER = 4096  # lines since the last rewrite, when also 4 × the live claims


class Registry:
    def __init__(self, data: Path, stale_after: float):
        self.root = data / ".offloadd"
        self.host = socket.gethostname()
        self.owner = f"{self.host}.{os.getpid()}.{secrets.token_hex(3)}"
        self.stale_after = stale_after
        for name in ("owners", "run", "stop"):
            (self.root / name).mkdir(parents=True, exist_ok=True)
        self._journal = self.root / "run" / f"{self.owner}{JOURNAL}"
        self._stops = f"{self.root}/stop/"  # a str: `release` runs once a request, in the writer
        self._live: dict[str, str] = {}  # uuid → rel, what the journal says this daemon runs
        self._lines = 0  # in the journal since it was last rewritten
        self._fd: int | None = None
        self._lock = threading.Lock()  # claims and releases come from worker threads

    def _owner_file(self, owner: str) -> Path:
        return self.root / "owners" / owner

    def beat(self) -> None:
        """Say this daemon is alive (the first beat also says who it is); a journal some
        other daemon took while this one was thought dead is started again."""
        path = self._owner_file(self.owner)
        try:
            os.utime(path)
        except FileNotFoundError:
            path.write_bytes(orjson.dumps({"host": self.host, "pid": os.getpid()}))
        with self._lock:
            if self._fd is not None and not self._journal.exists():
                self._rewrite()

    def leave(self) -> None:
        self._owner_file(self.owner).unlink(missing_ok=True)
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            if not self._live:
                self._journal.unlink(missing_ok=True)

    # --- this daemon's journal ----------------------------------------------------------

    def claim(self, loc: Location) -> None:
        """Record that this daemon runs `loc` (before its files are made)."""
        self.claim_many([loc])

    def claim_many(self, locs: list[Location]) -> None:
        """`claim` for several requests in one append (the writer's batch of creates)."""
        with self._lock:
            try:
                self._append("".join(f"+ {loc.rel}\n" for loc in locs).encode(), len(locs))
            except OSError as e:
                raise StorageError(f"cannot write the run journal: {e.strerror or e}") from e
            for loc in locs:
                self._live[loc.uuid] = loc.rel

    def release(self, loc: Location) -> None:
        """`loc` is no longer run here. A release the disk refuses is harmless: the request
        has ended, or its files are gone, by then; a takeover finds that out and passes."""
        self.release_many([loc])

    def release_many(self, locs: list[Location]) -> None:
        """`release` for several requests in one append (the writer's batch of endings)."""
        with self._lock:
            gone = [loc.uuid for loc in locs if self._live.pop(loc.uuid, None) is not None]
            if gone:
                with contextlib.suppress(OSError):
                    self._append("".join(f"- {uuid}\n" for uuid in gone).encode(), len(gone))
                    if self._lines > COMPACT_AFTER and self._lines > 4 * len(self._live):
                        self._rewrite()
        for loc in locs:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._stops + loc.uuid)

    def _append(self, lines: bytes, count: int) -> None:
        if self._fd is None:
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
            self._fd = os.open(self._journal, flags, 0o644)
        if os.write(self._fd, lines) != len(lines):
            raise OSError(0, "a short write to the run journal")
        self._lines += count

    def _rewrite(self) -> None:
        """(Under the lock.) The journal with only its live claims, renamed into place."""
        tmp = self._journal.with_name(f".{self.owner}.compact")
        body = b"".join(f"+ {rel}\n".encode() for rel in self._live.values())
        tmp.write_bytes(body)
        os.replace(tmp, self._journal)
        if self._fd is not None:
            os.close(self._fd)
        self._fd = os.open(self._journal, os.O_WRONLY | os.O_APPEND)
        self._lines = len(self._live)

    # --- stops across daemons -----------------------------------------------------------

    def request_stop(self, loc: Location) -> None:
        (self.root / "stop" / loc.uuid).write_bytes(b"")

    def stop_requests(self) -> set[str]:
        """The uuids someone asked to stop (one directory listing, however many run)."""
        return set(os.listdir(self.root / "stop"))

    # --- the dead and their requests ----------------------------------------------------

    def alive(self, owner: str, now: float | None = None) -> bool:
        if owner == self.owner:
            return True
        path = self._owner_file(owner)
        try:
            stat = path.stat()
            info = orjson.loads(path.read_bytes())
        except (FileNotFoundError, orjson.JSONDecodeError):
            return False
        if info.get("host") == self.host and not _pid_alive(info.get("pid", 0)):
            return False  # same machine: a dead pid is dead now, no need to wait
        return (now or time.time()) - stat.st_mtime < self.stale_after

    def orphans(self) -> list[Location]:
        """Running requests whose owner is dead, each taken by this daemon alone (a rename
        succeeds for exactly one daemon) and claimed in its own journal."""
        taken: list[Location] = []
        for name in os.listdir(self.root / "run"):
            if name.startswith("."):
                continue
            took = self._take_journal(name) if name.endswith(JOURNAL) else self._take_marker(name)
            if took is None:
                continue
            mine, locs = took
            for loc in locs:  # ours before theirs goes: a taker that dies now is taken over
                with contextlib.suppress(StorageError):
                    self.claim(loc)
            mine.unlink()
            taken += locs
        return taken

    def _take(self, name: str) -> Path | None:
        """The file renamed to a name of this daemon's, or None if another took it first."""
        mine = self.root / "run" / f".{name}.{self.owner}"
        try:
            os.rename(self.root / "run" / name, mine)
        except FileNotFoundError:
            return None
        return mine

    def _take_journal(self, name: str) -> tuple[Path, list[Location]] | None:
        if self.alive(name.removesuffix(JOURNAL)) or (mine := self._take(name)) is None:
            return None
        live = read_journal(mine.read_bytes())
        return mine, [loc for rel in live.values() if (loc := Location.from_rel(rel))]

    def _take_marker(self, name: str) -> tuple[Path, list[Location]] | None:
        try:
            info = orjson.loads((self.root / "run" / name).read_bytes())
        except (FileNotFoundError, orjson.JSONDecodeError):
            return None
        if self.alive(info.get("owner", "")) or (mine := self._take(name)) is None:
            return None
        loc = Location.from_rel(str(info.get("rel", "")))
        return mine, [loc] if loc else []

    def forget_dead_owners(self) -> None:
        for owner in os.listdir(self.root / "owners"):
            if not self.alive(owner):
                self._owner_file(owner).unlink(missing_ok=True)
                (self.root / "run" / f".{owner}.compact").unlink(missing_ok=True)


def read_journal(data: bytes) -> dict[str, str]:
    """uuid → rel of the claims a journal has not released (a torn last line is skipped)."""
    live: dict[str, str] = {}
    for line in data.split(b"\n"):
        text = line.decode(errors="replace")
        if text.startswith("+ "):
            rel = text[2:]
            live[rel.rsplit("/", 1)[-1]] = rel
        elif text.startswith("- "):
            live.pop(text[2:], None)
    return live


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
