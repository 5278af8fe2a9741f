"""What follows a request's ending without holding it up: its webhook delivery and the count
of the tokens it used against its key's budget, each in a task that outlives the request
and is given up on shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine

from offloadd.domain.status import StatusDocument, public_view, tokens_used, webhook_outcome
from offloadd.domain.webhooks import Webhooks
from offloadd.keys.base import Charge, KeyStore
from offloadd.storage.layout import Location
from offloadd.storage.store import StorageError, Store

log = logging.getLogger("offloadd.runner")


class Aftermath:
    """Starts the follow-ups of ended requests and keeps their tasks until they are done."""

    def __init__(self, store: Store, webhooks: Webhooks, keys: KeyStore | None):
        self.store, self.webhooks, self.keys = store, webhooks, keys
        self.tasks: set[asyncio.Task] = set()

    def after(
        self, loc: Location, doc: StatusDocument, webhook_url: str | None, charge: Charge | None
    ) -> None:
        """The webhook (if the request named one) and the token count (if it was charged)."""
        if webhook_url:
            self._deliver(loc, doc, webhook_url)
        if charge is not None and self.keys is not None:
            self._background(self._add_tokens(self.keys, charge, doc), "offloadd-tokens")

    async def close(self) -> None:
        """Give up what is still pending (a webhook's retries) on shutdown."""
        for task in self.tasks:
            task.cancel()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=5)

    async def _add_tokens(self, keys: KeyStore, charge: Charge, doc: StatusDocument) -> None:
        try:
            await keys.add_tokens(charge, *tokens_used(doc))
        except Exception:
            log.exception("request %s: its tokens could not be counted", doc.get("conversation_id"))

    def _deliver(self, loc: Location, doc: StatusDocument, url: str) -> None:
        """Post the final document to the request's webhook; its outcome goes into the
        document on disk."""

        def save() -> None:  # in a worker thread, synced as the final document it replaces
            try:
                self.store.write_status(loc, doc, durable=True)
            except StorageError as e:
                log.error("request %s: webhook outcome not saved: %s", loc.rel, e)

        def record(outcome: dict) -> None:
            webhook_outcome(doc, outcome)
            self._background(asyncio.to_thread(save), f"offloadd-webhook-save-{loc.uuid}")

        deliver = self.webhooks.deliver(url, public_view(doc), record)
        self._background(deliver, f"offloadd-webhook-{loc.uuid}")

    def _background(self, job: Coroutine, name: str) -> None:
        task = asyncio.create_task(job, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
