"""The published OpenAPI document, fuzzed against a real server with schemathesis:
no 5xx, no traceback, every answer as documented, no files from rejected requests."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks

from helpers import Daemon, files_under


def _conversations(data: Path) -> set[str]:
    """Conversations on disk (a status file being replaced leaves a transient temp file)."""
    return {p.stem for p in files_under(data) if not p.name.startswith(".")}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("openapi") / "data"
    limits = ("--max-body", "65536", "--max-timeout", "120", "--log-level", "WARNING")
    serve = (
        "serve",
        "--data",
        str(data),
        "--upstream-url",
        "mock",
        "--anthropic-url",
        "mock",
        "--no-auth",
    )
    daemon = Daemon(*serve, *limits).start()
    yield daemon.url, data
    daemon.signal(signal.SIGTERM)
    daemon.proc.wait(30)
    assert b"Traceback" not in daemon.output, daemon.output.decode()
    daemon.stop()


@pytest.fixture(scope="module")
def api_schema(server):
    base, _ = server
    return schemathesis.openapi.from_url(f"{base}/openapi.json", wait_for_schema=10)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_matches_its_description(case, server):
    _, data = server
    before = _conversations(data)
    # A schema cannot say "a string holding a JSON list of messages" or "the URL of a
    # finished conversation", so valid-looking requests may rightly be refused.
    response = case.call_and_validate(excluded_checks=[checks.positive_data_acceptance])
    assert response.status_code < 500
    assert b"Traceback" not in response.content
    if response.status_code >= 400:
        assert _conversations(data) == before, "a rejected request left files"


def test_the_document_is_served(server):
    import json
    import urllib.request

    base, _ = server
    with urllib.request.urlopen(f"{base}/openapi.json") as resp:
        doc = json.load(resp)
    assert doc["openapi"].startswith("3.1")
    assert "/v1/stream-chatgpt" in doc["paths"]


def test_the_documents_own_values_and_limits_are_accepted(server):
    """Every role and access value the document lists, and its timeout limits, at both
    ends: what the description promises, the server takes."""
    import json
    import urllib.request

    base, _ = server
    with urllib.request.urlopen(f"{base}/openapi.json") as resp:
        doc = json.load(resp)
    body = doc["paths"]["/v1/stream-chatgpt"]["post"]["requestBody"]["content"]
    props = body["application/json"]["schema"]["properties"]
    roles = props["messages"]["oneOf"][0]["items"]["properties"]["role"]["enum"]
    assert "function" in roles
    assert props["timeout"]["maximum"] == 120  # the server's --max-timeout
    bodies = [
        {"messages": [{"role": role, "content": "x"}], "model": "mock?tokens=1"} for role in roles
    ]
    bodies += [
        {"messages": [{"role": "user", "content": "x"}], "access": access}
        for access in props["access"]["enum"]
    ]
    for name in ("timeout", "connect_timeout"):
        for end in ("minimum", "maximum"):
            bodies.append({"messages": [{"role": "user", "content": "x"}], name: props[name][end]})
    for sent in bodies:
        request = urllib.request.Request(
            f"{base}/v1/stream-chatgpt",
            data=json.dumps(sent).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request) as resp:
            assert resp.status == 200, sent
    assert {"/v1/info", "/metrics", "/"} <= set(doc["paths"])
