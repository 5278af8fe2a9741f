"""Which daemon runs which request, kept on disk beside the conversations.

Several daemons may share one data directory (even across hosts, on NFS): so
ownership is files, not memory. Each daemon touches its own owner file as a
heartbeat; each running request has a marker naming its owner; a stop asked of
a daemon that does not own the request leaves a stop marker the owner polls.
Plain files and renames work on every shared filesystem, where locks and
inotify do not.

    DATA/.offloadd/owners/<owner>       heartbeat (mtime) + {"host", "pid"}
    DATA/.offloadd/run/<uuid>           {"rel": "pub/…/<uuid>", "owner": "<owner>"}
    DATA/.offloadd/stop/<uuid>          a stop request for a running request
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from pathlib import Path

import orjson

from offloadd.storage.layout import Location
from offloadd.storage.store import StorageError


class Registry:
    def __init__(self, data: Path, stale_after: float):
        self.root = data / ".offloadd"
        self.host = socket.gethostname()
        self.owner = f"{self.host}.{os.getpid()}.{secrets.token_hex(3)}"
        self.stale_after = stale_after
        for name in ("owners", "run", "stop"):
            (self.root / name).mkdir(parents=True, exist_ok=True)

    def _owner_file(self, owner: str) -> Path:
        return self.root / "owners" / owner

    def beat(self) -> None:
        """Say this daemon is alive (the first beat also says who it is)."""
        path = self._owner_file(self.owner)
        try:
            os.utime(path)
        except FileNotFoundError:
            path.write_bytes(orjson.dumps({"host": self.host, "pid": os.getpid()}))

    def leave(self) -> None:
        self._owner_file(self.owner).unlink(missing_ok=True)

    def claim(self, loc: Location) -> None:
        marker = orjson.dumps({"rel": loc.rel, "owner": self.owner})
        try:
            (self.root / "run" / loc.uuid).write_bytes(marker)
        except OSError as e:
            raise StorageError(f"cannot write the run marker: {e.strerror or e}") from e

    def release(self, loc: Location) -> None:
        (self.root / "run" / loc.uuid).unlink(missing_ok=True)
        (self.root / "stop" / loc.uuid).unlink(missing_ok=True)

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
        succeeds for exactly one daemon)."""
        taken = []
        for name in os.listdir(self.root / "run"):
            marker = self.root / "run" / name
            try:
                info = orjson.loads(marker.read_bytes())
            except (FileNotFoundError, orjson.JSONDecodeError):
                continue
            if self.alive(info.get("owner", "")):
                continue
            loc = Location.from_rel(str(info.get("rel", "")))
            mine = marker.with_name(f".{name}.{self.owner}")
            try:
                os.rename(marker, mine)
            except FileNotFoundError:
                continue  # another daemon took it
            mine.unlink()
            if loc:
                taken.append(loc)
        return taken

    def forget_dead_owners(self) -> None:
        for owner in os.listdir(self.root / "owners"):
            if not self.alive(owner):
                self._owner_file(owner).unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
