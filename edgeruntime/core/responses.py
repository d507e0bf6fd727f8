"""The responses the runtime itself produces (the local Supabase forms, plus `sb-error-code`)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from edgeruntime.core.types import Send

__all__ = ["RuntimeResponse", "send_response"]

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
    """Send `response` as a complete ASGI HTTP response."""
    await send({"type": "http.response.start", "status": response.status, "headers": response.headers()})
    await send({"type": "http.response.body", "body": response.body})
