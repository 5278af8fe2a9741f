"""Webhooks: POST `{"response": <final status document>}` when a request ends.

Signed with HMAC-SHA256 of the body (`X-Offloadd-Signature: sha256=<hex>`),
retried with backoff for a bounded time. A webhook never reaches loopback,
private or link-local addresses unless the server allows it: the check is made
by the socket factory on the very address being connected (whatever form the
URL gave it in, literal or name, and however DNS answers change), and again by
the resolver, for a clear message.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import os
import secrets
import socket
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import orjson
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from offloadd.errors import BadRequest

SECRET_FILE = "webhook-secret"
SIGNATURE_HEADER = "X-Offloadd-Signature"


def load_or_create_secret(data: Path) -> bytes:
    """The server's signing secret: `DATA/webhook-secret`, made (mode 0600) on first use."""
    path = data / SECRET_FILE
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        data.mkdir(parents=True, exist_ok=True)
        secret = secrets.token_hex(32).encode()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first
            return path.read_bytes().strip()
        with os.fdopen(fd, "wb") as f:
            f.write(secret + b"\n")
        return secret


def sign(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


# IPv6 prefixes whose last 32 bits are an IPv4 address a packet can end up at.
_EMBEDS_IPV4 = [
    ipaddress.ip_network(n)
    for n in ("::/96", "::ffff:0:0/96", "::ffff:0:0:0/96", "64:ff9b::/96", "64:ff9b:1::/48")
]


def is_public(address: str) -> bool:
    """Whether an address is public unicast, and so is every IPv4 address it embeds."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if not ip.is_global or ip.is_multicast:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = [ip.ipv4_mapped, ip.sixtofour, *(ip.teredo or ())]
        if any(ip in net for net in _EMBEDS_IPV4):
            embedded.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        return all(is_public(str(v4)) for v4 in embedded if v4 is not None)
    return True


def public_socket(addr_info: tuple) -> socket.socket:
    """The connector's socket factory: refuses any address that is not public, at the
    moment of connecting (IP literals never reach a resolver)."""
    family, type_, proto, _, sockaddr = addr_info
    if not is_public(str(sockaddr[0])):
        raise OSError("the webhook address is not a public address")
    return socket.socket(family, type_, proto)


class PublicOnlyResolver(AbstractResolver):
    """Resolves like the default resolver, then drops every non-public address."""

    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = [r for r in await self._inner.resolve(host, port, family) if is_public(r["host"])]
        if not results:
            raise OSError(f"{host} resolves only to loopback or private addresses")
        return results

    async def close(self) -> None:
        await self._inner.close()


def shown_url(url: str) -> str:
    """The URL without query or credentials, fit for the status document."""
    try:
        return str(
            URL(url).with_user(None).with_password(None).with_query(None).with_fragment(None)
        )
    except (ValueError, TypeError, UnicodeError):
        return "(not a URL)"


class Webhooks:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        secret: Callable[[], bytes],
        allow_private: bool,
        max_seconds: float,
        backoff: float,
    ):
        self.session, self._secret, self.allow_private = session, secret, allow_private
        self.max_seconds, self.backoff = max_seconds, backoff

    @staticmethod
    def client_session(allow_private: bool) -> aiohttp.ClientSession:
        guard: dict = (
            {}
            if allow_private
            else {
                "resolver": PublicOnlyResolver(),
                "socket_factory": public_socket,
            }
        )
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=50, **guard),
            timeout=aiohttp.ClientTimeout(total=10),
        )

    def check_url(self, url: str) -> str:
        """A usable webhook URL, or BadRequest; literal private addresses are refused here,
        names when they resolve."""
        invalid = BadRequest("`webhook_url` must be an http(s) URL", code="invalid_webhook_url")
        if not url.isprintable() or " " in url or len(url) > 2048:
            raise invalid
        try:  # the host as the client library will see it (fullwidth digits and all)
            parsed = URL(url)
            host, _ = parsed.host, parsed.port
        except (ValueError, TypeError, UnicodeError):
            raise invalid from None
        if parsed.scheme not in ("http", "https") or not host:
            raise invalid
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            return url
        if not self.allow_private and not is_public(str(literal)):
            raise BadRequest(
                "`webhook_url` may not point at a loopback or private address on this server",
                code="forbidden_webhook_url",
            )
        return url

    async def deliver(self, url: str, doc: dict, record: Callable[[dict], None]) -> None:
        """Post until a 2xx answer or the time is up; `record` sees each attempt's outcome."""
        body = orjson.dumps({"response": doc})
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "offloadd-webhook",
            SIGNATURE_HEADER: sign(self._secret(), body),
        }
        deadline = time.monotonic() + self.max_seconds
        state: dict = {
            "url": shown_url(url),
            "status": "pending",
            "attempts": 0,
            "last_attempt_at": None,
            "last_status_code": None,
            "last_error": None,
        }
        wait = self.backoff
        while True:
            state["attempts"] += 1
            state["last_attempt_at"] = round(time.time(), 3)
            state["last_status_code"], state["last_error"] = await self._post(url, body, headers)
            code = state["last_status_code"]
            if code is not None and 200 <= code < 300:
                state["status"] = "delivered"
            elif time.monotonic() + wait > deadline:
                state["status"] = "failed"
            record(dict(state))
            if state["status"] != "pending":
                return
            await asyncio.sleep(wait)
            wait = min(wait * 2, 60)

    async def _post(self, url: str, body: bytes, headers: dict) -> tuple[int | None, str | None]:
        try:
            async with self.session.post(
                url, data=body, headers=headers, allow_redirects=False
            ) as resp:
                await resp.read()
                return resp.status, None if resp.status < 300 else f"HTTP {resp.status}"
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            cause = getattr(e, "os_error", None) or e  # the resolver's refusal, if that was it
            return None, str(cause) or type(e).__name__
