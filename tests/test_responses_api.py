"""OpenAI's Responses API, background mode included, driven by the official SDK."""

from __future__ import annotations

import signal

import openai
import pytest

from helpers import eventually

LONG = "mock?tokens=300&delay_ms=10"


@pytest.fixture
def client(api, sdk) -> openai.AsyncOpenAI:
    return sdk(api)


def _text(events) -> str:
    return "".join(e.delta for e in events if e.type == "response.output_text.delta")


async def _until(client, rid: str, *statuses: str, words: int = 0):
    """The response once its status is one of `statuses` and its text has `words` words."""

    async def reached():
        response = await client.responses.retrieve(rid)
        assert response.status in statuses, f"status {response.status!r}, not in {statuses}"
        assert len(response.output_text.split()) >= words, f"text {response.output_text!r}"
        return response

    return await eventually(reached, timeout=20)


class TestResponses:
    async def test_streamed_typed_events_with_sequence_numbers(self, client, api):
        stream = await client.responses.create(model="mock?tokens=12", input="hi", stream=True)
        events = [e async for e in stream]
        assert events[0].type == "response.created" and events[-1].type == "response.completed"
        assert [e.sequence_number for e in events] == list(range(len(events)))
        assert _text(events).split() == [f"t{i}" for i in range(12)]
        assert events[-1].response.output_text == _text(events)

    async def test_not_streamed(self, client):
        response = await client.responses.create(model="mock", input="hello over there")
        assert response.id.startswith("resp_") and response.status == "completed"
        assert response.output_text == "hello over there"
        assert response.usage.output_tokens == 3
        again = await client.responses.retrieve(response.id)
        assert again.output_text == "hello over there" and again.id == response.id

    async def test_background_retrieve_resume_cancel(self, client, api):
        created = await client.responses.create(model=LONG, input="x", background=True)
        assert created.status in ("queued", "in_progress") and created.background
        running = await _until(client, created.id, "in_progress", words=2)
        partial = running.output_text
        assert partial.startswith("t0 t1")
        for after in (0, 3, 10):
            stream = await client.responses.retrieve(created.id, stream=True, starting_after=after)
            seen = []
            async for event in stream:
                seen.append(event)
                if len(seen) == 5:
                    break
            await stream.close()
            assert [e.sequence_number for e in seen] == list(range(after + 1, after + 6))
        cancelled = await client.responses.cancel(created.id)
        assert cancelled.status == "cancelled" and running.id == cancelled.id
        assert (await client.responses.retrieve(created.id)).status == "cancelled"
        assert (await client.responses.cancel(created.id)).status == "cancelled"  # idempotent
        [seen] = [r for r in await api.upstream_requests() if r["model"] == LONG]
        assert seen["client_closed"] is True  # the upstream connection was closed
        assert "background" not in seen["body"]

    async def test_a_finished_stream_resumes_any_time(self, client):
        created = await client.responses.create(model="mock?tokens=5", input="x", background=True)
        await _until(client, created.id, "completed")
        stream = await client.responses.retrieve(created.id, stream=True, starting_after=6)
        events = [e async for e in stream]
        assert [e.sequence_number for e in events] == list(range(7, 7 + len(events)))
        assert events[-1].type == "response.completed"

    async def test_previous_response_id_for_any_upstream(self, client, api):
        first = await client.responses.create(model="mock", input="first question")
        second = await client.responses.create(
            model="mock?tokens=2", input="second question", previous_response_id=first.id
        )
        assert second.previous_response_id == first.id
        sent = (await api.upstream_requests())[-1]["body"]
        assert "previous_response_id" not in sent
        texts = [str(item.get("content")) for item in sent["input"]]
        assert "first question" in texts[0] and "first question" in texts[1]
        assert texts[-1] == "second question"
        with pytest.raises(openai.NotFoundError):
            await client.responses.create(model="mock", input="x", previous_response_id="resp_x")

    async def test_the_id_read_from_the_stream_is_offloadds_everywhere(self, client, api):
        """Clients (OpenAI's background recipe, the Vercel AI SDK, LangChain) take the id
        from `response.created`: it must retrieve, resume, cancel and continue."""
        raw = await client.responses.with_raw_response.create(
            model="mock?tokens=4", input="hi", stream=True
        )
        own = raw.headers["X-Offloadd-Response-Id"]
        events = [e async for e in raw.parse()]
        ids = {e.response.id for e in events if hasattr(e, "response")}
        assert ids == {own} and own.startswith("resp_2")
        stream_url = raw.headers["X-Offloadd-Stream-Url"]
        on_disk = (await api.stream(stream_url)).decode()
        assert "resp_mock" not in on_disk and on_disk.count(own) == 3
        retrieved = await client.responses.retrieve(events[0].response.id)
        assert retrieved.id == own and retrieved.output_text == "t0 t1 t2 t3"
        resumed = await client.responses.retrieve(own, stream=True, starting_after=0)
        assert {e.response.id async for e in resumed if hasattr(e, "response")} == {own}
        assert (await client.responses.cancel(own)).status == "completed"
        second = await client.responses.create(
            model="mock?tokens=2", input="again", previous_response_id=events[-1].response.id
        )
        assert second.previous_response_id == own
        sent = (await api.upstream_requests())[-1]["body"]
        assert [item.get("content") for item in sent["input"]][0] == "hi"

    async def test_upstream_errors_are_the_sdks_own(self, client):
        with pytest.raises(openai.RateLimitError):
            await client.responses.create(model="mock?status=429", input="x")
        stream = await client.responses.create(
            model="mock?tokens=20&disconnect_after=6", input="x", stream=True
        )
        with pytest.raises(openai.APIError, match="upstream"):
            async for _ in stream:
                pass
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve("resp_20260101000000" + "0" * 32)


class TestCrash:
    async def test_a_background_response_of_a_killed_daemon_ends_failed(
        self, serve_with_mock, mock_process, tmp_path, sdk, http
    ):
        data = tmp_path / "data"
        a, b = [await serve_with_mock(data) for _ in range(2)]
        on_a, on_b = sdk(f"{a.url}/v1"), sdk(f"{b.url}/v1")
        created = await on_a.responses.create(model=LONG, input="x", background=True)
        # some text written (and flushed) before the kill
        await _until(on_b, created.id, "in_progress", words=1)
        a.signal(signal.SIGKILL)
        await a.wait()
        failed = await _until(on_b, created.id, "failed")
        assert failed.error.code == "interrupted"
        assert failed.output_text.startswith("t0")
