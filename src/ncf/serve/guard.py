"""Write access and request limits of the HTTP service (issue 18 item 5, issue 20 case 13).

- ``ApiKey``: an optional shared secret, sent in the ``X-API-Key`` header. A FastAPI
  dependency that the write endpoints (and, with ``reads=True``, the read endpoints) declare,
  so the OpenAPI schema names the security scheme and marks the operations that need it.
  Compared in constant time; a missing or wrong key is 401 ``unauthorized``.
- ``BodyLimit``: a pure ASGI middleware that answers 413 ``payload_too_large`` to a request
  body over ``max_bytes``: at once when ``Content-Length`` says so, else as soon as more
  bytes have arrived (chunked uploads), before anything is parsed.

``/healthz`` and ``/metrics`` stay open (probes and scrapers); put the service behind a
proxy for TLS and rate limits (docs/SERVING.md).
"""

from __future__ import annotations

import hmac
import json
from urllib.parse import unquote_to_bytes

from fastapi import Security
from fastapi.security import APIKeyHeader
from starlette.exceptions import HTTPException

from ncf.errors import ConfigError

HEADER = "X-API-Key"


class Unauthorized(Exception):
    """No key, or a wrong one (HTTP 401)."""


class ApiKey:
    """The key the service was started with (``ncf serve --api-key`` or ``$NCF_API_KEY``)."""

    def __init__(self, key: str, reads: bool = False):
        if not key or key != key.strip():
            raise ConfigError("the API key must be a non-empty string without surrounding whitespace")
        self._key = key.encode()
        self.reads = reads
        self.scheme = APIKeyHeader(name=HEADER, scheme_name="ApiKey", auto_error=False,
                                   description=f"The service's API key, in the {HEADER} header.")

    def dependency(self):
        """A dependency (for ``dependencies=[Security(...)]``) that raises ``Unauthorized``."""

        async def check(key: str | None = Security(self.scheme)) -> None:  # async: no threadpool hop on reads
            if key is None:
                raise Unauthorized(f"this endpoint needs the service's API key in the {HEADER} header")
            if not hmac.compare_digest(key.encode(), self._key):
                raise Unauthorized(f"wrong API key in the {HEADER} header")

        return Security(check)


class Utf8Path:
    """Pure ASGI middleware: a request whose URL path is not UTF-8 once percent-decoded
    (``/v1/users/%FF/...``) gets a JSON 400 ``malformed_url`` instead of reaching a route with
    the bad bytes replaced by U+FFFD (all such ids would then be one user)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            raw = scope.get("raw_path") or scope.get("path", "").encode("utf-8", "surrogateescape")
            decoded = unquote_to_bytes(raw.split(b"?", 1)[0])
            try:
                decoded.decode("utf-8")
            except UnicodeDecodeError as e:
                bad = decoded[e.start:e.end].hex(" ").upper()
                body = json.dumps({"error": "malformed_url",
                                   "message": f"the URL path is not UTF-8 once percent-decoded (byte {bad} at "
                                              f"{e.start}): ids are UTF-8 text, percent-encoded byte by byte"}).encode()
                await send({"type": "http.response.start", "status": 400,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


class BodyLimit:
    """Pure ASGI middleware: request bodies over ``max_bytes`` get a JSON 413."""

    def __init__(self, app, max_bytes: int):
        if max_bytes < 1:
            raise ConfigError(f"max_bytes must be >= 1, got {max_bytes}")
        self.app, self.max_bytes = app, max_bytes

    async def _reject(self, send) -> None:
        body = json.dumps({"error": "payload_too_large",
                           "message": f"request body over {self.max_bytes} bytes"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_bytes
                except ValueError:
                    too_big = False  # the server rejects a malformed length itself
                if too_big:
                    return await self._reject(send)
        received = [0]

        async def limited_receive():
            message = await receive()
            if message["type"] == "http.request":
                received[0] += len(message.get("body", b""))
                if received[0] > self.max_bytes:  # the app's HTTPException handler answers (JSON 413)
                    raise HTTPException(413, f"request body over {self.max_bytes} bytes")
            return message

        await self.app(scope, limited_receive, send)
