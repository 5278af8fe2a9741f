"""Reading URLs: only well-formed paths of existing conversations; CORS for browsers; what
/v1/info lists (all three follow the route table)."""

from __future__ import annotations

import pytest

BAD_PATHS = [
    "/1/r/pub/../../../../etc/passwd",
    "/1/r/pub/%2e%2e/%2e%2e/etc/passwd",
    "/1/r/pub/2026%2F01%2F01%2F00%2F00%2F00/1b4e28ba-2fa1-41d2-883f-0016d3cca427.json",
    "/1/r/pub/2026/01/01/00/00/00/not-a-uuid.json",
    "/1/r/pub/2026/01/01/00/00/00/1b4e28ba-2fa1-11d2-883f-0016d3cca427.json",
    "/1/r/pub/2026/01/01/00/00/00/1B4E28BA-2FA1-41D2-883F-0016D3CCA427.json",
    "/1/r/pub/2026/01/01/00/00/00/1b4e28ba-2fa1-41d2-883f-0016d3cca427.json",
    "/1/r/other/2026/01/01/00/00/00/1b4e28ba-2fa1-41d2-883f-0016d3cca427.json",
    "/3/r/pub/2026/01/01/00/00/00/1b4e28ba-2fa1-41d2-883f-0016d3cca427.json",
    "/1/r/pub/2026/01/01/00/00/00/1b4e28ba-2fa1-41d2-883f-0016d3cca427.txt",
    "/1/r/pub/2026/01/01/00/00/00/1b4e28ba-2fa1-41d2-883f-0016d3cca427/stop",
]


async def _preflight(client, path: str, *headers: str) -> str:
    """A page at https://app.example.com asks to POST to `path` with `headers`: the answer
    allows the method, those headers and `content-type`; the origin it allows is returned."""
    resp = await client.options(
        path,
        headers={
            "Origin": "https://app.example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": ", ".join(headers),
        },
    )
    assert resp.status == 204
    assert "POST" in resp.headers["Access-Control-Allow-Methods"]
    allowed = resp.headers["Access-Control-Allow-Headers"].lower()
    for header in (*headers, "content-type"):
        assert header in allowed
    return resp.headers["Access-Control-Allow-Origin"]


class TestPaths:
    @pytest.mark.parametrize("path", BAD_PATHS, ids=range(len(BAD_PATHS)))
    async def test_malformed_or_unknown_is_404(self, client, path):
        resp = await client.get(path)
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "not_found"

    async def test_a_sibling_files_uuid_with_a_wrong_date_is_404(self, api):
        urls = (await api.create(model="mock?tokens=1"))["endpoints"]
        await api.wait_status(urls["status_url"], "done")
        parts = urls["status_url"].split("/")
        parts[-2] = "59" if parts[-2] != "59" else "58"  # another second, same uuid
        resp = await api.get("/".join(parts))
        assert resp.status == 404


class TestCors:
    async def test_reading_urls_allow_any_origin(self, api):
        urls = (await api.create(model="mock?tokens=1"))["endpoints"]
        await api.wait_status(urls["status_url"], "done")
        origin = {"Origin": "https://app.example.com"}
        for url in (urls["status_url"], urls["stream_events_url"], urls["stop_url"]):
            resp = await api.get(url, headers=origin)
            await resp.read()
            assert resp.headers["Access-Control-Allow-Origin"] == "*", url
            assert "X-RateLimit-Limit" in resp.headers["Access-Control-Expose-Headers"]

    async def test_preflight_allows_get_post_and_the_headers_a_page_sends(self, api):
        urls = (await api.create(model="mock?tokens=1"))["endpoints"]
        for url in (urls["status_url"], urls["stream_events_url"], urls["stop_url"]):
            path = url.split(str(api.client.port), 1)[1]
            origin = await _preflight(api.client, path, "authorization", "last-event-id")
            assert origin == "*"

    async def test_configured_origins_are_echoed_and_others_refused(self, make_api):
        api = await make_api(cors_origins=("https://app.example.com",))
        urls = (await api.create(model="mock?tokens=1"))["endpoints"]
        await api.wait_status(urls["status_url"], "done")
        ok = await api.get(urls["status_url"], headers={"Origin": "https://app.example.com"})
        assert ok.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
        other = await api.get(urls["status_url"], headers={"Origin": "https://evil.example"})
        assert "Access-Control-Allow-Origin" not in other.headers

    async def test_create_has_no_cors_unless_configured(self, client):
        resp = await client.options(
            "/v1/stream-chatgpt",
            headers={"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"},
        )
        assert "Access-Control-Allow-Origin" not in resp.headers

    @pytest.mark.parametrize(
        "path",
        [
            "/v1/responses",
            "/v1/responses/resp_x/cancel",
            "/v1/responses/resp_x",
            "/v1/chat/completions",
            "/v1/stream-chatgpt",
            "/v1/async-chatgpt",
        ],
    )
    async def test_create_endpoints_answer_a_preflight_when_configured(self, make_client, path):
        client = await make_client(create_cors_origins=("https://app.example.com",))
        origin = await _preflight(client, path, "authorization", "content-type", "x-api-key")
        assert origin == "https://app.example.com"


class TestInfo:
    async def test_info_lists_every_create_endpoint(self, client):
        info = await (await client.get("/v1/info")).json()
        assert info["create"] == [
            "POST /v1/stream-chatgpt",
            "POST /v1/async-chatgpt",
            "POST /v1/chat/completions",
            "POST /v1/responses",
            "POST /v1/messages",
        ]
