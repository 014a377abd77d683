"""The browser guard: no web page can drive the server or read from it.

A page open in the user's browser can send "simple" cross-site requests (a form
post, a ``fetch`` in ``no-cors`` mode) to any address, loopback included, and a
DNS-rebinding page can even read the answers, because the browser thinks the
server is the page's own origin (how Ollama was attacked, CVE-2024-28224). So:

- the ``Host`` must be one of the server's own names: a loopback name, an IP
  literal (a rebinding page's Host is its own domain name), the address the
  server binds, or a configured public name (``allowed_hosts``);
- a request with an ``Origin`` other than the server's own is refused unless that
  origin is configured (``cors_origins``; CORS headers are then added for it);
- a request body is JSON sent as ``application/json`` (blob uploads: raw bytes as
  ``application/octet-stream``), never one of the types a simple request may carry
  (415), and a JSON body is at most ``limits.max_body_bytes`` (413): both checked as
  a route starts to read the body, so a path or method without a route is still a
  404 or 405.

Pure ASGI, in front of everything but the request id, so a refused request never
reaches a route, and its error still carries the id and OpenAI's shape.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmos.errors import Forbidden, LLMOSError, PayloadTooLarge, UnsupportedMediaType
from llmos.gateway.errors import Refused, error_response

_BINARY_ROUTES = (("POST", re.compile(r"^/api/blobs$")),
                  ("PATCH", re.compile(r"^/api/uploads/[^/]+$")))
"""Routes whose body is raw bytes (a blob), streamed to storage: no size limit here."""

_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


def host_name(host_header: str) -> str:
    """The name part of a Host header: ``[::1]:8000`` -> ``::1``, ``A.b:80`` -> ``a.b``."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    if host.count(":") == 1:
        host = host.partition(":")[0]
    return host.rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class HostPolicy:
    """Which Host names are the server's own (pure: names in, a decision out)."""

    def __init__(self, bind_host: str, allowed: Iterable[str]) -> None:
        self.any = "*" in allowed
        self.names = {host_name(n) for n in allowed if n != "*"} | _LOOPBACK_NAMES
        if bind_host and not _is_ip(bind_host):
            self.names.add(host_name(bind_host))

    def allows(self, host_header: str | None) -> bool:
        if self.any or host_header is None:  # no Host: not a browser (HTTP/1.0)
            return True
        name = host_name(host_header)
        return name in self.names or name.endswith(".localhost") or _is_ip(name)


def body_media_type(headers: dict[bytes, bytes]) -> str:
    return headers.get(b"content-type", b"").decode("latin-1").split(";")[0].strip().lower()


def has_body(headers: dict[bytes, bytes]) -> bool:
    if b"transfer-encoding" in headers:
        return True
    length = headers.get(b"content-length", b"0").strip()
    return not length.isdigit() or int(length) > 0


class BrowserGuard:
    def __init__(self, app: ASGIApp, *, bind_host: str, allowed_hosts: Iterable[str],
                 cors_origins: Iterable[str], max_body_bytes: int) -> None:
        self.app = app
        self.hosts = HostPolicy(bind_host, list(allowed_hosts))
        self.origins = {o.rstrip("/").lower() for o in cors_origins}
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        try:
            self._check_sender(scope, headers)
        except LLMOSError as exc:
            await error_response(exc)(scope, receive, send)
            return
        if scope["method"] in ("POST", "PUT", "PATCH", "DELETE") and has_body(headers):
            # Checked when a route first reads the body: a method or path without a
            # route still gets its 405 or 404.
            receive = _checked_body(receive, lambda: self._check_body(scope, headers),
                                    self.max_body_bytes)
        await self.app(scope, receive, send)

    def _check_sender(self, scope: Scope, headers: dict[bytes, bytes]) -> None:
        """Raise for a request a browser page could have sent on its own."""
        host = headers.get(b"host")
        if not self.hosts.allows(host.decode("latin-1") if host is not None else None):
            raise Forbidden(
                "this server does not answer to the host name this request was sent to; "
                "add the name to the setting allowed_hosts (LLMOS_ALLOWED_HOSTS) if it is "
                "one of the server's own", param="host")
        origin = headers.get(b"origin")
        if origin is not None:
            self._check_origin(scope, origin.decode("latin-1"), host)

    def _check_body(self, scope: Scope, headers: dict[bytes, bytes]) -> bool:
        """Raise for a body of the wrong type or size; True when it must be counted
        against the size limit as it arrives."""
        method = scope["method"]
        media_type = body_media_type(headers)
        path = scope["path"]
        binary = any(m == method and p.match(path) for m, p in _BINARY_ROUTES)
        if binary:
            if media_type not in ("application/octet-stream", ""):
                raise UnsupportedMediaType(
                    f"this endpoint takes raw bytes as application/octet-stream, not "
                    f"{media_type[:64]!r}", param="content-type")
            return False
        if media_type != "application/json":
            raise UnsupportedMediaType(
                f"the request body must be JSON sent as Content-Type: application/json "
                f"(got {media_type[:64] or 'none'!r})", param="content-type")
        length = headers.get(b"content-length", b"").strip()
        if length.isdigit() and int(length) > self.max_body_bytes:
            raise too_large(self.max_body_bytes)
        return True

    def _check_origin(self, scope: Scope, origin: str, host: bytes | None) -> None:
        given = origin.strip().rstrip("/").lower()
        if given in self.origins or "*" in self.origins:
            return
        own = f"{scope.get('scheme', 'http')}://{(host or b'').decode('latin-1').lower()}"
        if given == own:
            return
        raise Forbidden(
            f"cross-origin requests are refused (origin {origin[:100]!r}); allow an origin "
            "with the setting cors_origins (LLMOS_CORS_ORIGINS)", param="origin")


def too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the request body is larger than {limit} bytes; raise the setting "
        "limits.max_body_bytes (LLMOS_LIMITS__MAX_BODY_BYTES) to allow more",
        param="body")


def _checked_body(receive: Receive, check: Callable[[], bool], limit: int) -> Receive:
    """``receive`` that runs ``check`` before the first body message, and then (if it
    says so) fails once more than ``limit`` body bytes have arrived. It raises
    ``Refused``, an HTTPException: FastAPI's body parsing passes those on as they are."""
    seen = 0
    counted: bool | None = None

    async def checked() -> Message:
        nonlocal seen, counted
        if counted is None:
            try:
                counted = check()
            except LLMOSError as exc:
                raise Refused(exc) from None
        message = await receive()
        if counted and message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise Refused(too_large(limit))
        return message

    return checked
