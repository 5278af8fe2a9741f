"""Continuations: `from_status_url` puts an earlier request and its answer before new messages."""

from __future__ import annotations

import pytest

from helpers import files_under

FIRST = {
    "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first question"},
    ]
}
SECOND = [{"role": "user", "content": "second question"}]


async def _finished(api, body=FIRST, **fields):
    answer = await api.create(body, **fields)
    await api.stream(
        answer["endpoints"]["stream_events_url"],
        headers={"Authorization": f"Bearer {answer['authorization'].get('bearer_token', '')}"},
    )
    return answer


class TestContinuation:
    async def test_messages_and_answer_come_first_and_the_id_is_kept(self, api):
        first = await _finished(api)
        second = await api.create(
            {"messages": SECOND}, from_status_url=first["endpoints"]["status_url"]
        )
        assert second["conversation_id"] == first["conversation_id"]
        doc = await api.wait_status(second["endpoints"]["status_url"], "done")
        assert doc["parameters"]["messages"] == [
            *FIRST["messages"],
            {"role": "assistant", "content": "first question"},
            *SECOND,
        ]
        assert doc["endpoints"]["from_status_url"] == first["endpoints"]["status_url"]
        assert "from_status_url" not in second["endpoints"]
        [_, seen] = await api.upstream_requests()
        assert len(seen["body"]["messages"]) == 4
        assert "from_status_url" not in seen["body"]

    async def test_a_chat_can_be_rebuilt_from_its_last_status_url(self, api):
        url = (await _finished(api))["endpoints"]["status_url"]
        for i in range(3):
            answer = await api.create(
                {"messages": [{"role": "user", "content": f"turn {i}"}]}, from_status_url=url
            )
            url = answer["endpoints"]["status_url"]
            await api.wait_status(url, "done")
        chain = []
        while url:
            doc = await api.status(url)
            chain.append(doc["parameters"]["messages"][-1]["content"])
            url = doc["endpoints"].get("from_status_url")
        assert chain == ["turn 2", "turn 1", "turn 0", "first question"]

    async def test_a_given_conversation_id_wins(self, api):
        first = await _finished(api)
        second = await api.create(
            {"messages": SECOND},
            conversation_id="mine",
            from_status_url=first["endpoints"]["status_url"],
        )
        assert second["conversation_id"] == "mine"

    async def test_private_needs_its_token_and_stays_private(self, api):
        first = await _finished(api, access="private")
        token = first["authorization"]["bearer_token"]
        url = first["endpoints"]["status_url"]
        resp = await api.client.post(
            "/v1/stream-chatgpt",
            json={"messages": SECOND, "from_status_url": url},
            headers={"X-OpenAI-API-Key": "sk-x"},
        )
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "from_status_not_found"
        second = await api.create(
            {"messages": SECOND}, from_status_url=url, from_bearer_token=token
        )
        assert second["authorization"]["access"] == "private"
        assert second["authorization"]["bearer_token"] != token

    async def test_still_running_is_400_and_makes_no_files(self, api, data_dir):
        running = await api.create(model="mock?tokens=500&delay_ms=20")
        before = files_under(data_dir)
        resp = await api.client.post(
            "/v1/stream-chatgpt",
            json={"messages": SECOND, "from_status_url": running["endpoints"]["status_url"]},
            headers={"X-OpenAI-API-Key": "sk-x"},
        )
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "from_status_not_finished"
        assert files_under(data_dir) == before
        await api.get(running["endpoints"]["stop_url"])

    @pytest.mark.parametrize(
        ("make_url", "status", "code"),
        [
            (lambda u: u.replace("127.0.0.1", "other.example"), 400, "foreign_from_status_url"),
            (lambda u: u.replace(".json", ".txt"), 400, "invalid_from_status_url"),
            (lambda u: u[:-10] + "0000000000.json", 400, "invalid_from_status_url"),
            (lambda u: u.replace(u.split("/")[-1][:8], "00000000"), 404, "from_status_not_found"),
            (lambda u: "ftp://x/y", 400, "invalid_from_status_url"),
        ],
        ids=["foreign-host", "not-a-status-url", "bad-uuid", "unknown", "not-http"],
    )
    async def test_bad_earlier_urls(self, api, data_dir, make_url, status, code):
        first = await _finished(api)
        before = files_under(data_dir)
        resp = await api.client.post(
            "/v1/stream-chatgpt",
            json={
                "messages": SECOND,
                "from_status_url": make_url(first["endpoints"]["status_url"]),
            },
            headers={"X-OpenAI-API-Key": "sk-x"},
        )
        assert resp.status == status
        assert (await resp.json())["error"]["code"] == code
        assert files_under(data_dir) == before
