"""Application streams (issue 25) beyond the protocol's own suite: paths that try to leave
the streams folder, bad input (a 4xx, never a 5xx, never a partial append or a
half-made stream), several daemons on one directory, and a `kill -9`."""

from __future__ import annotations

import asyncio
import signal

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_hostile import small_disk  # noqa: F401  (a fixture)

from offloadd.protocol.durable import format_offset

TEXT = {"Content-Type": "text/plain"}


def files_outside_streams(data) -> list:
    """Files a test made anywhere under its tmp folder but the daemon's bookkeeping and
    the streams folder."""
    kept = (data / "streams", data / ".offloadd")
    return [
        p
        for p in data.parent.rglob("*")
        if p.is_file() and not any(p.is_relative_to(k) for k in kept)
    ]


class TestPaths:
    @pytest.mark.parametrize(
        "path",
        [
            "..%2F..%2Fescape",
            "%2e%2e%2f%2e%2e%2fescape",
            "%252e%252e%252fescape",
            "a%2F..%2F..%2F..%2Fescape",
            "..%5C..%5Cescape",
            "%C0%AE%C0%AE%2Fescape",
            "x" * 600,
            "caf%C3%A9/%F0%9F%98%80",
        ],
        ids=["slashes", "dots", "twice", "nested", "backslashes", "overlong", "long", "utf8"],
    )  # fmt: skip
    async def test_no_path_leaves_the_streams_folder(self, client, data_dir, path):
        resp = await client.put(f"/v1/stream/{path}", data=b"hello", headers=TEXT)
        assert resp.status in (201, 400, 404), await resp.text()
        assert files_outside_streams(data_dir) == []
        if resp.status == 201:
            read = await client.get(f"/v1/stream/{path}?offset=-1")
            assert await read.read() == b"hello"

    async def test_a_nul_byte_is_refused(self, client, data_dir):
        resp = await client.put("/v1/stream/a%00b", headers=TEXT)
        assert resp.status == 400 and (await resp.json())["error"]["code"] == "bad_path"

    async def test_names_that_encode_alike_are_different_streams(self, client):
        await client.put("/v1/stream/a%2Fb", data=b"one", headers=TEXT)
        await client.put("/v1/stream/a%252Fb", data=b"two", headers=TEXT)
        one = await client.get("/v1/stream/a%2Fb?offset=-1")
        two = await client.get("/v1/stream/a%252Fb?offset=-1")
        assert await one.read() == b"one" and await two.read() == b"two"


class TestBadInput:
    async def test_invalid_json_creates_nothing(self, client, data_dir):
        headers = {"Content-Type": "application/json"}
        resp = await client.put("/v1/stream/j", data=b"[1,", headers=headers)
        assert resp.status == 400
        assert (await client.head("/v1/stream/j")).status == 404

    async def test_a_refused_append_appends_nothing(self, client):
        headers = {"Content-Type": "application/json"}
        await client.put("/v1/stream/j", data=b"[1]", headers=headers)
        for body in (b"[2,", b"NaN", b"[]", b'{"a": Infinity}'):
            resp = await client.post("/v1/stream/j", data=body, headers=headers)
            assert resp.status == 400, body
        read = await client.get("/v1/stream/j?offset=-1")
        assert await read.json() == [1]

    @settings(
        max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(
        headers=st.dictionaries(
            st.sampled_from(
                [
                    "Stream-TTL",
                    "Stream-Expires-At",
                    "Stream-Seq",
                    "Stream-Closed",
                    "Producer-Id",
                    "Producer-Epoch",
                    "Producer-Seq",
                    "Stream-Forked-From",
                    "Stream-Fork-Offset",
                    "Stream-Fork-Sub-Offset",
                    "Content-Type",
                ]
            ),
            st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
        ),
        method=st.sampled_from(["PUT", "POST"]),
        body=st.binary(max_size=30),
    )
    async def test_any_header_values_are_never_a_5xx(self, client, headers, method, body):
        resp = await client.request(method, "/v1/stream/fuzz", data=body, headers=headers)
        assert resp.status < 500, await resp.text()
        read = await client.get("/v1/stream/fuzz?offset=-1")
        assert read.status in (200, 404)


async def _post_many(http, url: str, tag: str, n: int) -> None:
    for i in range(n):
        async with http.post(url, data=f"{tag}{i:03d};".encode(), headers=TEXT) as resp:
            assert resp.status == 204, await resp.text()


class TestDaemons:
    async def test_two_daemons_append_to_one_stream_without_losing_any(self, spawn, tmp_path, http):
        data = str(tmp_path / "data")
        a = await spawn("serve", "--data", data, "--no-auth", "--upstream-url", "mock")
        b = await spawn("serve", "--data", data, "--no-auth", "--upstream-url", "mock")
        async with http.put(f"{a.url}/v1/stream/shared", headers=TEXT) as resp:
            assert resp.status == 201
        await asyncio.gather(
            _post_many(http, f"{a.url}/v1/stream/shared", "a", 40),
            _post_many(http, f"{b.url}/v1/stream/shared", "b", 40),
        )
        async with http.get(f"{b.url}/v1/stream/shared?offset=-1") as resp:
            records = (await resp.read()).decode().split(";")[:-1]
        assert sorted(records) == sorted(
            [f"a{i:03d}" for i in range(40)] + [f"b{i:03d}" for i in range(40)]
        )
        assert [r for r in records if r[0] == "a"] == [f"a{i:03d}" for i in range(40)]

    async def test_a_long_poll_on_one_daemon_wakes_on_an_append_through_another(
        self, spawn, tmp_path, http
    ):
        data = str(tmp_path / "data")
        a = await spawn("serve", "--data", data, "--no-auth", "--upstream-url", "mock")
        b = await spawn("serve", "--data", data, "--no-auth", "--upstream-url", "mock")
        async with http.put(f"{a.url}/v1/stream/s", data=b"x", headers=TEXT) as resp:
            tail = resp.headers["Stream-Next-Offset"]
        poll = asyncio.create_task(http.get(f"{b.url}/v1/stream/s?offset={tail}&live=long-poll"))
        await asyncio.sleep(0.3)  # the reader is waiting (its 204 would take 20 s)
        async with http.post(f"{a.url}/v1/stream/s", data=b"yz", headers=TEXT) as resp:
            assert resp.status == 204
        async with await poll as resp:
            assert resp.status == 200 and await resp.read() == b"yz"

    async def test_acknowledged_appends_survive_kill_9(self, spawn, tmp_path, http):
        data = str(tmp_path / "data")
        a = await spawn("serve", "--data", data, "--no-auth", "--upstream-url", "mock")
        headers = {"Content-Type": "application/json"}
        async with http.put(f"{a.url}/v1/stream/kept", headers=headers) as resp:
            assert resp.status == 201
        for i in range(20):
            producer = {"Producer-Id": "p", "Producer-Epoch": "0", "Producer-Seq": str(i)}
            async with http.post(
                f"{a.url}/v1/stream/kept",
                data=orjson.dumps({"n": i}),
                headers={**headers, **producer},
            ) as resp:
                assert resp.status == 200
        a.signal(signal.SIGKILL)
        await a.wait()
        b = await spawn("serve", "--data", data, "--no-auth", "--upstream-url", "mock")
        async with http.get(f"{b.url}/v1/stream/kept?offset=-1") as resp:
            assert await resp.json() == [{"n": i} for i in range(20)]
        retry = {"Producer-Id": "p", "Producer-Epoch": "0", "Producer-Seq": "19"}
        async with http.post(
            f"{b.url}/v1/stream/kept", data=b'{"n":19}', headers={**headers, **retry}
        ) as resp:
            assert resp.status == 204  # the producer's state survived too: a duplicate


async def test_an_offset_past_the_tail_is_a_400(client):
    await client.put("/v1/stream/t", data=b"abc", headers=TEXT)
    resp = await client.get(f"/v1/stream/t?offset={format_offset(4)}")
    assert resp.status == 400


class TestRetention:
    async def test_expired_streams_are_removed_by_housekeeping(self, make_client, data_dir):
        client = await make_client()
        past = {**TEXT, "Stream-Expires-At": "2001-01-01T00:00:00Z"}
        assert (await client.put("/v1/stream/old", data=b"x", headers=past)).status == 201
        assert (await client.put("/v1/stream/kept", data=b"y", headers=TEXT)).status == 201
        assert (await client.head("/v1/stream/old")).status == 404  # refused at once
        await make_client()  # another daemon: its housekeeping starts with a sweep
        async with asyncio.timeout(10):
            while (data_dir / "streams" / "old.data").exists():
                await asyncio.sleep(0.02)
        assert not (data_dir / "streams" / "old.meta").exists()
        assert (await client.head("/v1/stream/kept")).status == 200

    async def test_gc_removes_streams_idle_past_the_cutoff(self, client, data_dir):
        import os

        from click.testing import CliRunner

        from offloadd import cli

        await client.put("/v1/stream/idle", data=b"x", headers=TEXT)
        await client.put("/v1/stream/busy", data=b"y", headers=TEXT)
        long_ago = 1_000_000_000
        os.utime(data_dir / "streams" / "idle.data", (long_ago, long_ago))
        args = ["gc", "--older-than", "30d", "--data", str(data_dir)]
        dry = CliRunner().invoke(cli.main, [*args, "--dry-run"])
        assert "stream idle" in dry.output and (data_dir / "streams" / "idle.data").exists()
        done = CliRunner().invoke(cli.main, args)
        assert done.exit_code == 0 and "1 stream(s)" in done.output
        assert (await client.head("/v1/stream/idle")).status == 404
        assert (await client.head("/v1/stream/busy")).status == 200


async def test_concurrent_appends_are_each_acknowledged_at_their_own_boundary(client):
    """Appends that arrive together are written together (one fsync), each still answered
    with the offset just after its own bytes."""
    await client.put("/v1/stream/many", headers=TEXT)
    bodies = [f"<{i:02d}>".encode() * (i + 1) for i in range(50)]
    answers = await asyncio.gather(
        *(client.post("/v1/stream/many", data=body, headers=TEXT) for body in bodies)
    )
    assert all(a.status == 204 for a in answers)
    data = await (await client.get("/v1/stream/many?offset=-1")).read()
    assert sorted(data[i : i + 4] for i in range(0, len(data), 4)) == sorted(
        b"<%02d>" % i for i in range(50) for _ in range(i + 1)
    )
    ends = [int(a.headers["Stream-Next-Offset"].split("_")[1]) for a in answers]
    for body, end in zip(bodies, ends, strict=True):  # each just after its own bytes
        assert data[end - len(body) : end] == body
    assert max(ends) == len(data) and len(set(ends)) == 50


async def test_a_full_disk_refuses_appends_and_loses_nothing_acknowledged(
    small_disk,  # noqa: F811  (the fixture of test_hostile)
    make_client,
):
    client = await make_client(data=small_disk / "data")
    octets = {"Content-Type": "application/octet-stream"}
    assert (await client.put("/v1/stream/big", headers=octets)).status == 201
    acknowledged, refused = b"", None
    for i in range(20):  # 20 × 100 KiB: more than the 1 MiB disk holds
        block = bytes([i]) * (100 * 1024)
        resp = await client.post("/v1/stream/big", data=block, headers=octets)
        if resp.status != 204:
            refused = resp
            break
        acknowledged += block
    assert refused is not None and refused.status == 503
    assert (await refused.json())["error"]["code"] == "storage_unavailable"
    read = await client.get("/v1/stream/big?offset=-1")
    assert await read.read() == acknowledged  # no part of the refused append
    assert (small_disk / "data" / "streams" / "big.data").stat().st_size == len(acknowledged)
