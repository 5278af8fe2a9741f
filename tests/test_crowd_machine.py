"""A user's crowd on two daemons sharing one data directory (issue 22), as a hypothesis
`RuleBasedStateMachine`: creates on every create endpoint (`/v1/stream-chatgpt`,
`/v1/async-chatgpt`, `/v1/chat/completions` streamed or not, `/v1/responses` in the
background or streamed) through either daemon, with and without an `Idempotency-Key`
(concurrent copies and later retries of one key and body); crowds of stops (GET and POST,
through both daemons) and of Responses cancels; readers of the streams that read to the end
or hang up midway (closing or resetting); status reads and `GET /v1/responses/{id}`; SDK
streams sent with `X-Offloadd-Stop-On-Disconnect: true` whose client leaves; a reader that
stops reading a long stream. Operations run as tasks that outlive the step that started
them, so later steps interleave with them (the machine runs in a worker thread and hands
each step to the test's event loop, where the clients live).

Every client is a raw socket, its answer parsed here, so anything a daemon writes into a
connection is seen. After every run of the machine:

- each request ends with a final status (`done`, `stopped`, `error`) in its status document,
  and every final state any answer reported (status reads, stops, cancels, retrieves) is
  that one: a request ends exactly once;
- its `.txt` ends with `data: [DONE]`, the only such record in it;
- each reader read exactly the file (to the end) or a prefix of it (hanging up): no foreign
  bytes; every answer on every connection is one whole `HTTP/1.1` message and nothing else;
  status, stop, cancel and retrieve answers are JSON of the conversation they were asked for;
- an `Idempotency-Key` names one conversation however many creates raced or retried it;
  each conversation made at most one upstream call (exactly one if it completed), no upstream
  call belongs to no conversation, and the key's charges equal the conversations made;
- a reader that stopped reading costs the daemon no more than its bounded send buffer,
  whatever endpoint serves the stream;
- neither daemon nor the mock upstream logged "Bad file descriptor" or "Traceback", and
  both still answer `/healthz` with 200 (checked after every step too).
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    MultipleResults,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)

from crowd_world import World
from helpers import make_key

SETTINGS = settings(
    max_examples=15,
    stateful_step_count=30,
    deadline=None,
    phases=(Phase.generate,),  # no shrinking: each example costs real seconds
    suppress_health_check=list(HealthCheck),
    report_multiple_bugs=False,
)

DAEMON = st.integers(0, 1)
METHOD = st.sampled_from(["GET", "POST"])
MODEL = st.sampled_from(["mock?tokens=30&delay_ms=5", "mock?tokens=200&delay_ms=5"])
COPIES = st.lists(st.integers(0, 1), min_size=1, max_size=4)  # through which daemons
# a hang-up: after this many bytes of the body (None: read to the end), by close or reset
CUT = st.one_of(st.none(), st.sampled_from([0, 1, 150, 2000]))


class Crowd(RuleBasedStateMachine):
    """Each rule starts what a crowd's member does; `teardown` checks the run."""

    convs = Bundle("convs")
    responses = Bundle("responses")

    def __init__(self, world: World) -> None:
        super().__init__()
        self.world = world
        world.call(world.begin())
        self.stalled = False

    def _copies(self, kind: str, model: str, daemons: list[int], keyed: bool):
        """A create sent once through each of `daemons`, all at once: retries of one body
        and key, or (without a key) requests of their own."""
        if keyed:
            nonce, body = self.world.new_body(kind, model)
            key = f"key-{uuid.uuid4().hex}"
            return [(d, nonce, body, key) for d in daemons]
        return [(d, *self.world.new_body(kind, model), None) for d in daemons]

    def _made(self, results) -> MultipleResults:
        return multiple(*{c.cid: c for c in results if c is not None}.values())

    @initialize(target=convs, daemons=COPIES, keyed=st.booleans())
    def a_stream_to_begin_with(self, daemons, keyed):
        return self.create("stream-chatgpt", daemons, "mock?tokens=200&delay_ms=5", keyed)

    @initialize(targets=(convs, responses), daemons=COPIES, keyed=st.booleans())
    def a_response_to_begin_with(self, daemons, keyed):
        return self.create_response(daemons, "mock?tokens=200&delay_ms=5", keyed)

    @rule(
        target=convs,
        kind=st.sampled_from(["stream-chatgpt", "async-chatgpt"]),
        daemons=COPIES,
        model=MODEL,
        keyed=st.booleans(),
    )
    def create(self, kind, daemons, model, keyed):
        copies = self._copies(kind, model, daemons, keyed)
        return self._made(self.world.call(gather(self.world.create(kind, *c) for c in copies)))

    @rule(targets=(convs, responses), daemons=COPIES, model=MODEL, keyed=st.booleans())
    def create_response(self, daemons, model, keyed):
        return self.create("responses-background", daemons, model, keyed)

    @rule(
        target=convs,
        kind=st.sampled_from(["chat-stream", "responses-stream"]),
        daemons=COPIES,
        model=MODEL,
        keyed=st.booleans(),
        cut=CUT,
        reset=st.booleans(),
        leave_stops=st.booleans(),
    )
    def create_streamed(self, kind, daemons, model, keyed, cut, reset, leave_stops):
        """SDK streams; when `cut`, every copy leaves midway (stopping it, if it asked to)."""
        copies = self._copies(kind, model, daemons, keyed)
        follows = (self.world.create_and_follow(kind, *c, cut, reset, leave_stops) for c in copies)
        return self._made(self.world.call(gather(follows)))

    @rule(daemons=COPIES, keyed=st.booleans())
    def create_and_wait(self, daemons, keyed):
        for copy in self._copies("chat-wait", "mock?tokens=30&delay_ms=5", daemons, keyed):
            self.world.start(self.world.create_and_wait(*copy))

    @rule(conv=convs, daemon=DAEMON)
    def retry(self, conv, daemon):
        """A client retrying an earlier create with its key and body (without a key, it
        reads the status instead: a retry would be a request of its own)."""
        world = self.world
        if conv.key is None:
            world.start(world.status(conv, daemon))
        elif conv.kind in ("chat-stream", "responses-stream"):
            args = (conv.nonce, conv.body, conv.key, None, False, False)
            world.start(world.create_and_follow(conv.kind, daemon, *args))
        else:
            world.start(world.create(conv.kind, daemon, conv.nonce, conv.body, conv.key))

    @rule(
        conv=convs,
        through=st.lists(st.tuples(DAEMON, METHOD), min_size=1, max_size=12),
    )
    def stop(self, conv, through):
        self.world.start(self.world.stops(conv, through))

    @rule(conv=responses, through=st.lists(DAEMON, min_size=1, max_size=12))
    def cancel(self, conv, through):
        self.world.start(self.world.cancels(conv, through))

    @rule(conv=convs, daemon=DAEMON, cut=CUT, reset=st.booleans(), readers=st.integers(1, 3))
    def read(self, conv, daemon, cut, reset, readers):
        for _ in range(readers):
            self.world.start(self.world.read(conv, daemon, cut, reset, sdk=False))

    @rule(conv=responses, daemon=DAEMON, cut=CUT, reset=st.booleans())
    def read_response_stream(self, conv, daemon, cut, reset):
        self.world.start(self.world.read(conv, daemon, cut, reset, sdk=True))

    @precondition(lambda self: not self.stalled)
    @rule(how=st.sampled_from(["txt", "chat-stream", "responses-stream", "retrieve"]), d=DAEMON)
    def stall(self, how, d):
        """A reader that stops reading a long stream (once a run: long streams cost)."""
        self.stalled = True
        self.world.call(self.world.stall(how, d))

    @rule(conv=convs, daemon=DAEMON)
    def read_status(self, conv, daemon):
        self.world.start(self.world.status(conv, daemon))

    @rule(conv=responses, daemon=DAEMON)
    def retrieve(self, conv, daemon):
        self.world.start(self.world.retrieve(conv, daemon))

    @rule(conv=convs, daemon=DAEMON)
    def until_streaming(self, conv, daemon):
        """Let a request get going (a condition, not a pause) before the next steps."""
        self.world.call(self.world.until_streaming(conv, daemon))

    @invariant()
    def both_daemons_answer(self):
        self.world.call(self.world.healthz())

    def teardown(self):
        self.world.call(self.world.verify())


async def gather(coros):
    return await asyncio.gather(*coros)


@pytest.mark.timeout(90)
async def test_a_crowd_on_two_daemons_sharing_a_directory(spawn, mock_process, tmp_path):
    data = tmp_path / "data"
    key = make_key(data, name="crowd", plan="unlimited")
    upstream = ("--upstream-url", f"{mock_process.url}/v1", "--upstream-key", "sk-own")
    daemons = [await spawn("serve", "--data", str(data), *upstream) for _ in range(2)]
    world = World(asyncio.get_running_loop(), data, key, mock_process, daemons)
    await asyncio.to_thread(run_state_machine_as_test, lambda: Crowd(world), settings=SETTINGS)
