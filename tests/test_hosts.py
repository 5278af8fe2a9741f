"""Several hosts for real: two daemons, each in UTS and PID namespaces of its own (other host
names, overlapping process ids: no same-host shortcut applies), each on its own sshfs
mount of one export (a real network filesystem with attribute and page caches), with
their keys in one PostgreSQL server."""

from __future__ import annotations

import asyncio
import signal

import pytest

from helpers import how_it_ended, require_binary, wait_status
from offloadd.protocol.sse import parse_all
from realworld import SshfsExport, other_host

LONG = {"messages": [{"role": "user", "content": "x"}], "model": "mock?tokens=400&delay_ms=10"}


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """An sshd on loopback serving one directory that each host mounts on its own."""
    require_binary("openssh-server", "sshd")
    require_binary("sshfs", "sshfs")
    try:
        served = SshfsExport(tmp_path_factory.mktemp("sshfs"))
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)
    yield served
    served.close()


@pytest.fixture
async def hosts(export, serve_with_mock, mock_process, request):
    """Daemons A and B: other host names, other PID namespaces, other mounts, one export."""
    tag = request.node.name[-20:].replace("[", "").replace("]", "")
    daemons = []
    for host in ("host-a", "host-b"):
        data = export.mount(host) / tag
        data.mkdir(exist_ok=True)
        daemons.append(await serve_with_mock(data, "--owner-stale", "3", wrap=other_host(host)))
    return export.directory / tag, daemons


def _on(url: str, daemon) -> str:
    return f"{daemon.url}/" + url.split("/", 3)[3]


async def _create(http, daemon, body=LONG) -> dict:
    async with http.post(f"{daemon.url}/v1/stream-chatgpt", json=body) as resp:
        assert resp.status == 200, await resp.text()
        return (await resp.json())["endpoints"]


class TestTwoHosts:
    async def test_they_are_other_hosts(self, hosts, http):
        _, (a, b) = hosts
        owners = []
        for daemon in (a, b):
            async with http.get(f"{daemon.url}/healthz") as resp:
                owners.append((await resp.json())["daemon"])
        assert owners[0].startswith("host-a.") and owners[1].startswith("host-b.")

    async def test_a_reader_on_b_follows_a_request_on_a_live_to_done(self, hosts, http):
        export, (a, b) = hosts
        urls = await _create(http, a)
        async with http.get(_on(urls["stream_events_url"], b)) as resp:
            raw = await asyncio.wait_for(resp.read(), 60)
        events = parse_all(raw)
        assert [int(e.id) for e in events] == list(range(1, len(events) + 1))  # none lost or twice
        assert how_it_ended(events) == {"status": "done"}
        rel = urls["stream_events_url"].split("/r/", 1)[1]
        assert raw == (export / rel).read_bytes()  # what B served is what A wrote
        doc = await wait_status(http, _on(urls["status_url"], b), "done")
        assert len(doc["response"]["body"]["choices"][0]["message"]["content"].split()) == 400

    async def test_a_stop_sent_to_b_reaches_a(self, hosts, http):
        _, (a, b) = hosts
        urls = await _create(http, a)
        await wait_status(http, _on(urls["status_url"], b), "streaming")
        async with http.post(_on(urls["stop_url"], b)) as resp:
            answer = await resp.json()
        assert answer["conversation_status"] == "stopped", answer
        doc = await wait_status(http, _on(urls["status_url"], a), "stopped")
        assert doc["status"] == "stopped"

    async def test_killing_a_ends_its_requests_interrupted_on_b(self, hosts, http):
        _, (a, b) = hosts
        urls = await _create(http, a)
        async with http.get(_on(urls["stream_events_url"], b)) as reader:
            await wait_status(http, _on(urls["status_url"], b), "streaming")
            a.signal(signal.SIGKILL)  # unshare --kill-child takes the daemon with it
            await a.wait()
            doc = await wait_status(http, _on(urls["status_url"], b), "error", "done", timeout=20)
            assert doc["error"]["code"] == "interrupted"
            events = parse_all(await asyncio.wait_for(reader.read(), 20))
        assert how_it_ended(events)["error"]["code"] == "interrupted"


class TestQuotasAcrossHosts:
    async def test_exact_with_postgresql(self, export, spawn, mock_process, pg_dsn, http, tmp_path):
        from click.testing import CliRunner

        from offloadd import cli

        plans = tmp_path / "plans.json"
        plans.write_text('{"tiny": {"monthly": 15, "per_minute": null}}')
        args = ["keys", "create", "--name", "x", "--plan", "tiny", "--plans", str(plans)]
        created = await asyncio.to_thread(CliRunner().invoke, cli.main, [*args, "--keys", pg_dsn])
        key = created.output.strip().splitlines()[-1]
        daemons = []
        for host in ("host-c", "host-d"):
            data = export.mount(host) / "q"
            data.mkdir(exist_ok=True)
            wrap = other_host(host)
            upstream = ("--upstream-url", f"{mock_process.url}/v1", "--upstream-key", "sk-own")
            daemons.append(
                await spawn(
                    "serve",
                    "--data",
                    str(data),
                    *upstream,
                    "--keys",
                    pg_dsn,
                    "--plans",
                    str(plans),
                    wrap=wrap,
                )
            )

        async def post(daemon):
            body = {"messages": [{"role": "user", "content": "x"}], "model": "mock?tokens=1"}
            async with http.post(
                f"{daemon.url}/v1/stream-chatgpt", json=body, headers={"X-API-Key": key}
            ) as resp:
                return resp.status

        statuses = await asyncio.gather(*(post(d) for _ in range(12) for d in daemons))
        assert statuses.count(200) == 15 and statuses.count(429) == 9
