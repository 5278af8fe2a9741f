"""Retention: old finished conversations go, running and recent ones stay."""

from __future__ import annotations

import uuid

import orjson
from click.testing import CliRunner

from helpers import eventually, files_under
from offloadd import cli


def _plant(data_dir, stamp: str, status: str) -> str:
    """A conversation as a daemon would have left it, created at `stamp`."""
    rel = f"pub/{stamp}/{uuid.uuid4()}"
    (data_dir / rel).parent.mkdir(parents=True, exist_ok=True)
    (data_dir / f"{rel}.json").write_bytes(orjson.dumps({"status": status}))
    (data_dir / f"{rel}.txt").write_bytes(b"retry: 3000\n\n")
    return rel


def _gc(data_dir, *args: str) -> str:
    result = CliRunner().invoke(cli.main, ["gc", "--data", str(data_dir), *args])
    assert result.exit_code == 0, result.output
    return result.output


class TestGc:
    def test_dry_run_lists_and_keeps(self, data_dir):
        old = _plant(data_dir, "2020/01/02/03/04/05", "done")
        output = _gc(data_dir, "--older-than", "30d", "--dry-run")
        assert old in output and "would remove 1" in output
        assert (data_dir / f"{old}.json").exists()

    def test_removes_old_finished_keeps_running_and_recent(self, data_dir):
        old_done = _plant(data_dir, "2020/01/02/03/04/05", "done")
        old_error = _plant(data_dir, "2020/01/02/03/04/06", "error")
        old_running = _plant(data_dir, "2020/01/02/03/04/07", "streaming")
        recent = _plant(data_dir, "2099/01/01/00/00/00", "done")
        output = _gc(data_dir, "--older-than", "30d")
        assert "removed 2" in output
        left = {str(p.relative_to(data_dir).with_suffix("")) for p in files_under(data_dir)}
        assert left == {old_running, recent}
        assert not (data_dir / "pub/2020/01/02/03/04/05").exists()
        assert not (data_dir / "pub/2020/01/02/03/04/06").exists()
        assert (data_dir / "pub/2020/01/02/03/04/07").exists()
        assert old_done not in left and old_error not in left

    def test_empty_date_folders_go_up_to_the_scope(self, data_dir):
        _plant(data_dir, "2019/05/06/07/08/09", "stopped")
        _gc(data_dir, "--older-than", "1d")
        assert not (data_dir / "pub/2019").exists()
        assert (data_dir / "pub").exists()

    def test_bad_duration_is_refused(self, data_dir):
        result = CliRunner().invoke(
            cli.main, ["gc", "--data", str(data_dir), "--older-than", "soon"]
        )
        assert result.exit_code != 0 and "duration" in result.output


class TestServeRetention:
    async def test_serve_applies_retention_at_start(self, make_api, data_dir):
        old = _plant(data_dir, "2020/01/02/03/04/05", "done")
        api = await make_api(retention_seconds=86400.0)
        urls = (await api.create(model="mock?tokens=1"))["endpoints"]
        await api.wait_status(urls["status_url"], "done")
        await eventually(lambda: not (data_dir / f"{old}.json").exists(), timeout=5)
        assert len(files_under(data_dir)) == 2  # only the new conversation
