"""SSE encoding and parsing, by property: any chunk text round-trips, ids stay contiguous,
and a stream cut anywhere resumes exactly."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from offloadd.protocol.sse import DONE, encode_event, parse_all
from offloadd.storage.transcript import chunk_record, ending, resume_offset

# SSE cannot carry a lone "\r" (it is a line break on the wire); JSON chunks never hold one.
TEXT = st.text(st.characters(blacklist_characters="\r", blacklist_categories=("Cs",)))
DATA = TEXT.map(str.encode)
NAMES = st.one_of(st.none(), st.sampled_from(["usage", "status"]))


def _stream(chunks: list[bytes], names: list) -> bytes:
    """A transcript in today's format, with named events as the first release wrote some."""
    out = b""
    for i, (data, name) in enumerate(zip(chunks, names, strict=False), start=1):
        out += encode_event(i, data, name, retry=3000 if i == 1 else None)
    return out + ending(len(chunks), "done", None, 3000)


class TestRoundTrip:
    @given(DATA, NAMES)
    def test_any_chunk_text_round_trips(self, data, name):
        [event] = parse_all(encode_event(7, data, name))
        assert event.data == data
        assert event.event == name
        assert event.id == "7"

    @pytest.mark.parametrize("name", ["a\nb", "a\rb", "a\r\ndata: forged", "\n"])
    def test_an_event_name_with_a_line_break_is_refused(self, name):
        with pytest.raises(ValueError, match="line break"):
            encode_event(1, b"{}", name)

    def test_an_id_is_an_integer_so_it_holds_no_line_break(self):
        with pytest.raises(TypeError):
            encode_event("1\ndata: forged", b"{}")  # type: ignore[arg-type]

    @given(st.lists(DATA, max_size=20), st.data())
    def test_ids_stay_contiguous_however_the_bytes_are_split(self, chunks, draw):
        names = draw.draw(st.lists(NAMES, min_size=len(chunks), max_size=len(chunks)))
        raw = _stream(chunks, names)
        cuts = sorted(draw.draw(st.lists(st.integers(0, len(raw)), max_size=8)))
        from offloadd.protocol.sse import SSEParser

        parser, events, last = SSEParser(), [], 0
        for cut in [*cuts, len(raw)]:
            events += parser.feed(raw[last:cut])
            last = cut
        events = [e for e in events if e.id]
        assert [int(e.id) for e in events] == list(range(1, len(chunks) + 2))
        assert [e.data for e in events[:-1]] == chunks
        assert events[-1].data == DONE


class TestResumeOffset:
    @settings(max_examples=50, deadline=None)
    @given(st.lists(DATA, min_size=1, max_size=15), st.data())
    def test_resume_after_any_id_gives_exactly_the_rest(self, tmp_path_factory, chunks, draw):
        raw = _stream(chunks, [None] * len(chunks))
        path = tmp_path_factory.mktemp("sse") / "s.txt"
        path.write_bytes(raw)
        last = draw.draw(st.integers(0, len(chunks) + 1))
        found = asyncio.run(resume_offset(path, last))
        rest = [e for e in parse_all(raw[found.offset :]) if e.id]
        assert [int(e.id) for e in rest] == list(range(last + 1, len(chunks) + 2))
        assert found.ended == (last == len(chunks) + 1)
        assert found.highest >= min(last, len(chunks) + 1)


class TestEveryRecordHasData:
    @given(
        st.lists(TEXT.map(orjson.dumps), max_size=5), st.sampled_from(["done", "error", "stopped"])
    )
    def test_no_record_without_data_and_retry_rides_on_the_first(self, chunks, status):
        error = {"code": "x", "message": "why"} if status == "error" else None
        raw = b"".join(chunk_record(i, c, 3000) for i, c in enumerate(chunks, 1))
        raw += ending(len(chunks), status, error, 3000)
        records = raw.split(b"\n\n")[:-1]
        assert all(b"\ndata: " in b"\n" + r for r in records)
        assert [r.count(b"retry: 3000") for r in records] == [1] + [0] * (len(records) - 1)
