"""The one configuration object, built by the CLI (or by tests) and never mutated."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

OPENAI_URL = "https://api.openai.com/v1"
ANTHROPIC_URL = "https://api.anthropic.com"  # no `/v1`: Anthropic's paths begin with it
MOCK = "mock"


@dataclass(frozen=True)
class Config:
    data: Path
    host: str = "127.0.0.1"
    port: int = 8080
    unix: str | None = None
    fd: int | None = None
    workers: int = 1
    public_url: str | None = None
    upstream_url: str = OPENAI_URL
    upstream_key: str | None = None
    # Anthropic's Messages API (`POST /v1/messages`): its base URL, or `mock`, and key.
    anthropic_url: str = ANTHROPIC_URL
    anthropic_key: str | None = None
    default_model: str = "gpt-3.5-turbo"
    auth: bool = True
    plans_file: Path | None = None
    # Where keys and their usage live: None for SQLite under `data`, or postgresql://…
    keys_url: str | None = None
    # Limits a request may ask for (SPEC §1, the original's documented ranges).
    max_timeout: float = 90.0
    default_timeout: float = 90.0
    default_connect_timeout: float = 5.0
    max_connect_timeout: float = 10.0
    max_body_bytes: int = 1024 * 1024
    # Behind nginx: finished public files are handed to it with X-Accel-Redirect to this
    # internal location prefix (None: offloadd sends them itself).
    accel_redirect: str | None = None
    # Streams.
    retry_ms: int = 3000
    keepalive_seconds: float = 15.0
    poll_interval: float = 0.05
    status_flush_seconds: float = 1.0
    # Durable Streams reads: how long a long-poll waits for data (a 204 after), and how
    # long an SSE connection lasts before it is ended (so caches collapse new readers).
    long_poll_seconds: float = 20.0
    sse_seconds: float = 60.0
    # Retries of the upstream call before the first token (never after it).
    upstream_retries: int = 2
    upstream_retry_max_wait: float = 10.0
    # CORS: reading URLs (status, stream, stop) and, only when configured, create.
    cors_origins: tuple[str, ...] = ("*",)
    create_cors_origins: tuple[str, ...] = field(default_factory=tuple)
    # Webhooks: where they may go, how they are signed, how long they are retried.
    allow_private_webhooks: bool = False
    webhook_secret: str | None = None
    webhook_max_seconds: float = 300.0
    webhook_backoff: float = 1.0
    # Several daemons on one directory: heartbeats, stop markers, orphans.
    heartbeat_seconds: float = 1.0
    owner_stale_seconds: float = 10.0
    stop_poll_seconds: float = 0.1
    orphan_sweep_seconds: float = 2.0
    remote_stop_wait: float = 3.0
    # Retention: finished conversations older than this are removed (None: kept forever).
    retention_seconds: float | None = None
    # Facing the internet: whose X-Forwarded-* headers are believed (as uvicorn's
    # --forwarded-allow-ips; "*" for any), and the limits on slow or many clients.
    forwarded_allow_ips: tuple[str, ...] = ("127.0.0.1", "::1")
    header_timeout: float = 60.0  # nginx's client_header_timeout
    body_timeout: float = 60.0  # nginx's client_body_timeout
    max_connections: int = 10_000
    # What a stream reader that stops reading may cost: this much kernel send buffer
    # (autotuning would let it grow to megabytes) plus aiohttp's 64 KiB write buffer.
    reader_send_buffer: int = 128 * 1024
    # How long running requests may finish on shutdown before they are ended.
    grace_seconds: float = 10.0

    @property
    def uses_mock(self) -> bool:
        return self.upstream_url == MOCK

    @property
    def anthropic_mock(self) -> bool:
        return self.anthropic_url == MOCK
