"""A daemon's run journal (storage/registry.py): what a daemon that died was running is
found in its journal, however long it ran and however often the journal was rewritten,
and is taken over by exactly one other daemon."""

from __future__ import annotations

import datetime

from offloadd.storage.layout import Location
from offloadd.storage.registry import COMPACT_AFTER, Registry


def _locations(n: int) -> list[Location]:
    now = datetime.datetime.now().astimezone()
    return [Location.new("pub", now) for _ in range(n)]


def test_a_dead_daemons_live_claims_are_taken_by_one_daemon_once(tmp_path):
    dead = Registry(tmp_path, stale_after=60)
    dead.beat()
    locs = _locations(COMPACT_AFTER + 100)
    for loc in locs:
        dead.claim(loc)
    still_running = set(locs[::997])
    for loc in locs:
        if loc not in still_running:
            dead.release(loc)
    journal = tmp_path / ".offloadd" / "run" / f"{dead.owner}.journal"
    assert len(journal.read_bytes().splitlines()) < COMPACT_AFTER  # rewritten on the way
    first, second = Registry(tmp_path, stale_after=60), Registry(tmp_path, stale_after=60)
    first.beat()
    second.beat()
    assert first.orphans() == [] and second.orphans() == []  # its owner is alive
    dead.leave()  # as if killed: its heartbeat gone, its journal left with live claims
    assert journal.exists()
    assert set(first.orphans()) == still_running
    assert second.orphans() == [] and first.orphans() == []


def test_a_taker_that_dies_too_is_taken_over_in_turn(tmp_path):
    dead = Registry(tmp_path, stale_after=60)
    [loc] = _locations(1)
    dead.claim(loc)
    taker = Registry(tmp_path, stale_after=60)
    taker.beat()
    assert taker.orphans() == [loc]
    taker.leave()  # died before it ended the request
    assert Registry(tmp_path, stale_after=60).orphans() == [loc]
