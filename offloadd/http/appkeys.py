"""The application's typed keys: what the factory puts in and the handlers take out."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from offloadd.config import Config
from offloadd.keys.base import KeyStore
from offloadd.metrics import Metrics
from offloadd.requests.create import Creator
from offloadd.requests.readers import Hub
from offloadd.requests.runner import Runner
from offloadd.requests.streams import Streams
from offloadd.storage.store import Store

CONFIG = web.AppKey("config", Config)
STORE = web.AppKey("store", Store)
HUB = web.AppKey("hub", Hub)
RUNNER = web.AppKey("runner", Runner)
UPSTREAM_URL = web.AppKey("upstream_url", str)
KEYS = web.AppKey("keys", KeyStore)
METRICS = web.AppKey("metrics", Metrics)
CREATOR = web.AppKey("creator", Creator)
STREAMS = web.AppKey("streams", Streams)  # application streams (Durable Streams)
ON_FATAL: web.AppKey[Callable[[str], None]] = web.AppKey("on_fatal")
# "POST /v1/…" for each create route of the route table (`routes.py`), for /v1/info
CREATE_ENDPOINTS: web.AppKey[tuple[str, ...]] = web.AppKey("create_endpoints")

STATIC = "offloadd.static"  # a response that nginx completes from a file
