"""The responses the runtime itself produces (the local Supabase forms, plus `sb-error-code`), and
the CORS headers they carry on function routes (:class:`CorsPolicy`, as the local stack's Kong
``cors`` plugin adds them), so that a browser can read them."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from urllib.parse import urlsplit

from edgeruntime.core.types import Scope, Send

__all__ = ["FUNCTIONS_PREFIX", "RUNTIME_RESPONSE", "CorsPolicy", "RuntimeResponse", "normalize_origin", "send_response"]

#: A key of the ``http.response.start`` message of every response the runtime makes itself (the
#: gateway, a worker answering for its handler): the gateway adds CORS headers to those only. It
#: travels with the message from a worker process (plain data) and is removed before the server.
RUNTIME_RESPONSE = "edgeruntime.runtime_response"
#: The routes of functions: the only ones whose runtime responses carry CORS headers.
FUNCTIONS_PREFIX = "/functions/v1/"

TEXT = b"text/plain; charset=utf-8"
JSON_TYPE = b"application/json"


@dataclass(frozen=True)
class RuntimeResponse:
    """A fixed response: status, body, content type and the `sb-error-code` header."""

    status: int
    body: bytes
    content_type: bytes
    code: str | None = None
    #: Headers sent after the content headers and `sb-error-code`.
    extra_headers: tuple[tuple[bytes, bytes], ...] = ()

    @classmethod
    def text(cls, status: int, body: str, code: str | None = None) -> RuntimeResponse:
        return cls(status, body.encode(), TEXT, code)

    @classmethod
    def json(cls, status: int, payload: object, code: str | None = None) -> RuntimeResponse:
        return cls(status, json.dumps(payload, separators=(",", ":")).encode(), JSON_TYPE, code)

    @classmethod
    def error(cls, status: int, code: str, message: str) -> RuntimeResponse:
        return cls.json(status, {"code": code, "message": message}, code)

    def headers(self) -> list[tuple[bytes, bytes]]:
        headers = [(b"content-type", self.content_type), (b"content-length", str(len(self.body)).encode())]
        if self.code is not None:
            headers.append((b"sb-error-code", self.code.encode()))
        headers.extend(self.extra_headers)
        return headers


FUNCTION_NOT_FOUND = RuntimeResponse.text(404, "Function not found", "NOT_FOUND")
NOT_FOUND = RuntimeResponse.text(404, "Not Found", "NOT_FOUND")
METHOD_NOT_ALLOWED = RuntimeResponse.text(405, "Method Not Allowed", "METHOD_NOT_ALLOWED")
BOOT_ERROR = RuntimeResponse.error(503, "BOOT_ERROR", "Worker failed to boot (please check logs)")
WORKER_ERROR = RuntimeResponse.error(500, "WORKER_ERROR", "Function exited due to an error (please check logs)")
WORKER_LIMIT = RuntimeResponse.error(
    546, "WORKER_LIMIT", "Worker failed to respond due to a resource limit (please check logs)"
)
INTERNAL_SERVER_ERROR = RuntimeResponse.text(500, "Internal Server Error", "EDGE_FUNCTION_ERROR")
BAD_GATEWAY = RuntimeResponse.text(502, "Bad Gateway", "EDGE_FUNCTION_ERROR")
IDLE_TIMEOUT = RuntimeResponse.error(
    504, "IDLE_TIMEOUT", "Function did not start its response within the request idle timeout"
)
PAYLOAD_TOO_LARGE = RuntimeResponse.error(
    413, "PAYLOAD_TOO_LARGE", "Request body is larger than the function's max_request_body_mb"
)
RESOURCE_EXHAUSTED = dataclasses.replace(
    RuntimeResponse.error(503, "RESOURCE_EXHAUSTED", "Server is out of file descriptors (please retry shortly)"),
    extra_headers=((b"retry-after", b"1"),),
)
HEALTH = RuntimeResponse.json(200, {"message": "ok"})
DUPLICATE_AUTHORIZATION = RuntimeResponse.error(
    400, "DUPLICATE_AUTH_HEADER", "Request has more than one Authorization header"
)
DUPLICATE_APIKEY = RuntimeResponse.error(400, "DUPLICATE_AUTH_HEADER", "Request has more than one apikey header")
#: What a client that went away before the response started is recorded with (nginx's
#: "client closed request"); never sent, there is no one left to send it to.
CLIENT_CLOSED_REQUEST = 499


async def send_response(send: Send, response: RuntimeResponse) -> None:
    """Send `response` as a complete ASGI HTTP response, marked as the runtime's own."""
    await send(
        {
            "type": "http.response.start",
            "status": response.status,
            "headers": response.headers(),
            RUNTIME_RESPONSE: True,
        }
    )
    await send({"type": "http.response.body", "body": response.body})


#: The request headers the supabase clients send: the allowed headers of the runtime's answers.
CORS_ALLOW_HEADERS = b"authorization, x-client-info, apikey, content-type"
#: The methods a preflight the gateway answers allows: those functions are routed for.
CORS_ALLOW_METHODS = b"GET,HEAD,PUT,PATCH,POST,DELETE,OPTIONS"
_ALLOW_ORIGIN = b"access-control-allow-origin"
_ALLOW_HEADERS = b"access-control-allow-headers"
_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalize_origin(origin: str) -> str | None:
    """`scheme://host[:port]` in lower case, without a default port; None if `origin` is not an
    origin (a path, no host, a scheme other than http and https).

    Browsers send ``Origin`` in this form; Kong's ``cors`` plugin compares origins so normalized.
    """
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if scheme not in _DEFAULT_PORTS or not host or parts.path not in ("", "/") or parts.query or parts.fragment:
        return None
    if parts.username is not None or parts.password is not None:
        return None
    if ":" in host:  # an IPv6 address keeps its brackets
        host = f"[{host}]"
    return f"{scheme}://{host}" if port is None or port == _DEFAULT_PORTS[scheme] else f"{scheme}://{host}:{port}"


@dataclass(frozen=True)
class CorsPolicy:
    """The CORS headers of the runtime's own responses to function routes, as Kong's ``cors``
    plugin sets them on the local stack's ``/functions/v1/`` route.

    `origins` is ``("*",)`` (any origin: the default), a list of normalized origins (the request's
    ``Origin`` is echoed when it is one of them, with ``Vary: Origin``), or empty (no CORS headers).
    A function's own responses are never touched: functions answer CORS themselves, as on the
    platform.
    """

    origins: tuple[str, ...] = ("*",)

    @property
    def any_origin(self) -> bool:
        return "*" in self.origins

    def _allow_origin(self, origin: bytes | None) -> bytes | None:
        if self.any_origin:
            return b"*"
        if origin is None:
            return None
        normalized = normalize_origin(origin.decode("latin-1"))
        return normalized.encode() if normalized is not None and normalized in self.origins else None

    def headers(self, origin: bytes | None) -> list[tuple[bytes, bytes]]:
        """The headers a runtime response to a request with `origin` (its ``Origin``) carries."""
        if not self.origins:
            return []
        allowed = self._allow_origin(origin)
        headers = [] if self.any_origin else [(b"vary", b"Origin")]
        if allowed is not None:
            headers += [(_ALLOW_ORIGIN, allowed), (_ALLOW_HEADERS, CORS_ALLOW_HEADERS)]
        return headers

    def for_scope(self, scope: Scope) -> list[tuple[bytes, bytes]]:
        """The headers of a runtime response to the request `scope` (on function routes; none elsewhere,
        as the local stack runs Kong's ``cors`` plugin on ``/functions/v1/`` only)."""
        if not str(scope.get("path", "")).startswith(FUNCTIONS_PREFIX):
            return []
        return self.headers(next((value for key, value in scope["headers"] if key == b"origin"), None))

    def preflight_headers(self, origin: bytes | None, requested: bytes | None) -> list[tuple[bytes, bytes]]:
        """The headers of the gateway's answer to a preflight: the requested headers are allowed
        (as Kong allows them), else those the supabase clients send."""
        if not self.origins:
            return []
        allowed = self._allow_origin(origin)
        headers = [] if self.any_origin else [(b"vary", b"Origin")]
        if allowed is not None:
            headers += [
                (_ALLOW_ORIGIN, allowed),
                (_ALLOW_HEADERS, requested or CORS_ALLOW_HEADERS),
                (b"access-control-allow-methods", CORS_ALLOW_METHODS),
            ]
        return headers
