"""The create use case: the rules of starting an offloaded request, with no HTTP in them.

The HTTP handler reads the request into a `NewRequest`; this decides the rest, in this
order: earlier conversation (continuation), webhook, idempotency, quota, files, task.
Nothing rejected is counted against a quota and nothing rejected leaves files.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from offloadd.config import Config
from offloadd.domain.access import allows, authorization, new_token, private_fields
from offloadd.domain.continuation import continued_messages, earlier_location
from offloadd.domain.dialects import CHAT, RESPONSES, RESPONSES_ENDPOINT, dialect_of
from offloadd.domain.idempotency import Idempotency, with_token
from offloadd.domain.responses import continued_input, location_of
from offloadd.domain.status import TERMINAL, StatusDocument, create_answer, new_document
from offloadd.domain.validate import ChatRequest
from offloadd.domain.webhooks import Webhooks, shown_url
from offloadd.errors import BadRequest, NotFound, Unavailable
from offloadd.keys.base import Charge, KeyStore
from offloadd.protocol.wire import Dialect
from offloadd.requests.runner import Runner
from offloadd.requests.sessions import Sessions
from offloadd.storage.layout import Kind, Location, parse_url
from offloadd.storage.store import Store
from offloadd.upstream.call import Call


@dataclass(frozen=True)
class NewRequest:
    kind: Kind
    body: bytes  # as received, for idempotency
    chat: ChatRequest
    upstream_key: str
    organization: str | None
    base_url: str  # of the URLs handed out
    caller: str | None  # the offloadd API key, when auth is on
    created_at: float
    idempotency_key: str | None = None
    endpoint: str | None = None  # when not the kind's own (the OpenAI-compatible API)
    dialect: Dialect = CHAT
    upstream_headers: dict | None = None  # sent upstream as they are (Anthropic's version)

    @property
    def route(self) -> str:
        """Which create endpoint took it: an `Idempotency-Key` is bound to one."""
        return self.endpoint or f"/v1/{'stream' if self.kind is Kind.STREAM else 'async'}-chatgpt"


@dataclass(frozen=True)
class Created:
    answer: dict
    headers: dict | None  # the caller's rate-limit figures


class Creator:
    def __init__(
        self,
        config: Config,
        store: Store,
        runner: Runner,
        webhooks: Webhooks,
        keys: KeyStore | None,
        idempotency: Idempotency,
    ):
        self.config, self.store, self.runner, self.webhooks = config, store, runner, webhooks
        self.keys, self.idempotency = keys, idempotency
        self.sessions: Sessions | None = None  # set once the readers' hub runs (app.py)

    async def admit(self, caller: str | None) -> None:
        """Before the body is read: is the server taking requests, is the key good."""
        if self.runner.closing:
            raise Unavailable("the server is shutting down", code="shutting_down")
        if caller and self.keys:
            await self.keys.check(caller)

    async def create(self, new: NewRequest) -> Created:
        options = new.chat.options
        earlier = await self._earlier(new) if options.from_status_url else None
        previous = await self._previous(new) if new.chat.previous_response_id else None
        webhook = self.webhooks.check_url(options.webhook_url) if options.webhook_url else None
        session = None
        if options.session_stream:
            if self.sessions is None:
                raise Unavailable("session streams are not ready yet", code="not_ready")
            session = await self.sessions.check(options.session_stream, new.caller)
        idem = new.idempotency_key
        caller_scope = ""  # whose idempotency keys: needed with one only
        if idem is not None:
            caller_scope = hashlib.sha256((new.caller or "").encode()).hexdigest()
            first = await self.idempotency.begin(caller_scope, idem, new.body, new.route)
            if first is not None:
                return Created(with_token(first, self.idempotency.token(caller_scope, idem)), None)
        charge = await self.keys.charge(new.caller) if new.caller and self.keys else None
        try:
            token = None
            granted = earlier.get("authorization", {}).get("access") if earlier else None
            access = options.access or granted
            if access == "private":
                token = self.idempotency.token(caller_scope, idem) if idem else new_token()
            answer = await self._start(new, earlier, webhook, token, previous, charge)
        except BaseException:  # nothing that was not started is counted, or remembered
            if charge and self.keys:
                await self.keys.refund(charge)
            if idem is not None:
                await self.idempotency.abandon(caller_scope, idem)
            raise
        if idem is not None:
            await self.idempotency.finish(caller_scope, idem, new.body, answer, new.route)
        if session is not None and self.sessions is not None:
            found = parse_url(answer["endpoints"]["status_url"])
            assert found is not None  # we made this URL
            self.sessions.follow(session, found[1], answer)
        return Created(answer, _limits(charge))

    async def _earlier(self, new: NewRequest) -> StatusDocument:
        """The finished request a continuation starts from, or a clear error."""
        options = new.chat.options
        loc = earlier_location(options.from_status_url or "", new.base_url)
        doc = await self.runner.document(loc)
        if doc is None or not allows(doc, options.from_bearer_token):
            raise NotFound(
                "`from_status_url` names no conversation here (or a private one without the "
                "right `from_bearer_token`)",
                code="from_status_not_found",
            )
        if doc["status"] not in TERMINAL:
            raise BadRequest(
                "the conversation at `from_status_url` is still running; continue it once it ends",
                code="from_status_not_finished",
            )
        if dialect_of(doc).upstream != new.dialect.upstream:  # OpenAI's turns or Anthropic's
            raise BadRequest(
                "the conversation at `from_status_url` was held with another API; continue "
                "it on its own endpoint",
                code="from_status_other_api",
            )
        return doc

    async def _previous(self, new: NewRequest) -> StatusDocument:
        """The finished response `previous_response_id` names, held by this server."""
        rid = new.chat.previous_response_id or ""
        loc = location_of(rid)
        doc = await self.runner.document(loc) if loc else None
        endpoint = doc.get("request", {}).get("endpoint") if doc else None
        if doc is None or doc["status"] not in TERMINAL or endpoint != RESPONSES_ENDPOINT:
            raise NotFound(
                f"no finished response {rid!r} on this server", code="previous_response_not_found"
            )
        return doc

    async def _start(
        self,
        new: NewRequest,
        earlier: StatusDocument | None,
        webhook: str | None,
        token: str | None,
        previous: StatusDocument | None = None,
        charge: Charge | None = None,
    ) -> dict:
        """Make the files, start the task; the create answer."""
        options, parameters = new.chat.options, new.chat.parameters
        if previous is not None:
            parameters = {**parameters, "input": continued_input(previous, parameters["input"])}
        loc = Location.at("priv" if token else "pub", new.created_at)
        if earlier:
            messages = continued_messages(earlier, parameters["messages"])
            parameters = {**parameters, "messages": messages}
        doc = new_document(
            kind=new.kind,
            endpoint=new.endpoint,
            loc=loc,
            base_url=new.base_url,
            created_at=new.created_at,
            conversation_id=options.conversation_id
            or (earlier.get("conversation_id") if earlier else None)
            or loc.uuid,
            authorization={"access": "private" if token else "public"},
            options={"timeout": options.timeout, "connect_timeout": options.connect_timeout},
            parameters=parameters,
            from_status_url=earlier["endpoints"]["status_url"] if earlier else None,
        )
        if token:
            doc.update(private_fields(token))
        if new.dialect is RESPONSES:
            doc["background"] = new.chat.background
            doc["previous_response_id"] = new.chat.previous_response_id
        if webhook:
            doc["webhook"] = {"url": shown_url(webhook), "status": "pending", "attempts": 0}
        call = Call(
            parameters,
            new.upstream_key,
            new.organization,
            options.connect_timeout,
            new.dialect,
            dict(new.upstream_headers or {}),
        )
        usage_added = new.chat.usage_added  # the files (both, or neither) and the task:
        await self.runner.start(loc, doc, call, usage_added, options.timeout, webhook, charge)
        answer = create_answer(
            doc, new.kind, authorization(token) if token else {"access": "public"}
        )
        if token:
            answer["endpoints"]["bearer_token"] = token
        return answer


def _limits(charge: Charge | None) -> dict | None:
    return charge.limits.headers() if charge and charge.limits else None
