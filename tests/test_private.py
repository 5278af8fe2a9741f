"""Private conversations: a bearer token opens them; without it every URL is 404."""

from __future__ import annotations

import hashlib

import orjson
from yarl import URL

from helpers import files_under


async def _private(api, **fields):
    answer = await api.create(access="private", model="mock?tokens=3", **fields)
    return answer, answer["authorization"]["bearer_token"]


class TestPrivate:
    async def test_answer_carries_the_token_three_ways(self, api):
        answer, token = await _private(api)
        auth = answer["authorization"]
        assert auth["access"] == "private"
        assert len(token) >= 40
        assert auth["stream_url_arg"] == f"token={token}"
        assert answer["endpoints"]["bearer_token"] == token
        assert "/1/r/priv/" in answer["endpoints"]["status_url"]

    async def test_files_live_under_priv_and_hold_only_the_tokens_hash(self, api, data_dir):
        answer, token = await _private(api)
        headers = {"Authorization": f"Bearer {token}"}
        await api.stream(answer["endpoints"]["stream_events_url"], headers=headers)
        files = files_under(data_dir)
        assert files and all("/priv/" in str(p) for p in files)
        blob = b"".join(p.read_bytes() for p in files)
        assert token.encode() not in blob
        assert hashlib.sha256(token.encode()).hexdigest().encode() in blob

    async def test_with_the_token_everything_opens(self, api):
        answer, token = await _private(api)
        urls = answer["endpoints"]
        headers = {"Authorization": f"Bearer {token}"}
        raw = await api.stream(
            f"{urls['stream_events_url']}?{answer['authorization']['stream_url_arg']}"
        )
        assert raw.endswith(b"data: [DONE]\n\n")
        assert raw == await api.stream(urls["stream_events_url"], headers=headers)
        doc = await (await api.get(urls["status_url"], headers=headers)).json()
        assert doc["status"] == "done"
        assert doc["authorization"] == {"access": "private"}
        assert "_offloadd" not in doc
        stop = await (await api.post(urls["stop_url"], headers=headers)).json()
        assert stop["status"] == "success"

    async def test_without_the_right_token_every_url_is_404(self, api):
        answer, token = await _private(api)
        urls = answer["endpoints"]
        wrong = [{}, {"Authorization": "Bearer nope"}, {"Authorization": f"Bearer {token}x"}]
        for headers in wrong:
            for url in (urls["status_url"], urls["stream_events_url"], urls["stop_url"]):
                resp = await api.get(url, headers=headers)
                assert resp.status == 404, (url, headers)
        # the query token opens the stream only, not status or stop
        for url in (urls["status_url"], urls["stop_url"]):
            resp = await api.get(str(URL(url).with_query(token=token)))
            assert resp.status == 404

    async def test_stop_with_the_token_stops(self, api):
        answer = await api.create(access="private", model="mock?tokens=500&delay_ms=20")
        token = answer["authorization"]["bearer_token"]
        headers = {"Authorization": f"Bearer {token}"}
        resp = await api.post(answer["endpoints"]["stop_url"], headers=headers)
        assert (await resp.json())["conversation_status"] == "stopped"
        events = await api.events(answer["endpoints"]["stream_events_url"], headers=headers)
        assert orjson.loads(events[-2].data)["status"] == "stopped"
