"""The exception tree of edgeruntime.

EdgeRuntimeError
├── ConfigError              bad config file, flag or env file (CLI exit status 2)
├── UsageError               bad CLI input: missing directory, port in use, unknown function
├── NotSupportedError        an API the edge runtime forbids (`Deno.env.set`)
├── JobsError                the jobs system cannot do what was asked (no store, bad payload)
│   └── StoreUnavailable     the store cannot be reached or written now; retrying may succeed
├── DashboardError           a dashboard API request that cannot be served (→ its 4xx JSON error)
├── DuplicateHeader          a request repeats a header that must appear once (Authorization, apikey) → 400
├── ResourceExhausted        the server is out of file descriptors → 503 RESOURCE_EXHAUSTED
├── InvalidJWT               `verify_jwt(token)` in a function: the token is missing, forged or expired
├── WebSocketUpgradeError    `upgrade_websocket(req)` on a request that is no WebSocket upgrade (also a TypeError)
├── WebSocketDenied          `EdgeClient.websocket(...)`: the upgrade was answered with a response, not accepted
├── SiblingsUnavailable      the other serving processes (--workers N) did not all answer → 503
└── FunctionError            something went wrong in one function; the others keep serving
    ├── BootError            the function's module failed to load → 503 BOOT_ERROR
    ├── WorkerCrashed        the worker died (or its module raised at top level) → 500 WORKER_ERROR
    ├── InvalidResponse      the handler returned something that is not a Response → 502
    ├── LimitExceeded        a resource limit ended the work → 546 WORKER_LIMIT
    │   └── WallClockLimitExceeded (also a TimeoutError)
    ├── IdleTimeout          no response started within the request idle timeout → 504 IDLE_TIMEOUT
    └── PayloadTooLarge      the request body is over max_request_body_mb → 413 PAYLOAD_TOO_LARGE
"""

from __future__ import annotations

__all__ = [
    "BootError",
    "ConfigError",
    "DashboardError",
    "DuplicateHeader",
    "EdgeRuntimeError",
    "FunctionError",
    "IdleTimeout",
    "InvalidJWT",
    "InvalidResponse",
    "JobsError",
    "LimitExceeded",
    "NotSupportedError",
    "PayloadTooLarge",
    "StoreUnavailable",
    "ResourceExhausted",
    "SiblingsUnavailable",
    "UsageError",
    "WallClockLimitExceeded",
    "WebSocketDenied",
    "WebSocketUpgradeError",
    "WorkerCrashed",
]


class EdgeRuntimeError(Exception):
    """Unexpected edgeruntime error."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigError(EdgeRuntimeError):
    """Raised when a config file, env file or flag holds a value edgeruntime cannot use."""


class UsageError(EdgeRuntimeError):
    """Raised when the command line asks for something that cannot be done."""


class NotSupportedError(EdgeRuntimeError):
    """Raised when function code calls an API the edge runtime does not support."""


class JobsError(EdgeRuntimeError):
    """Raised when a job cannot be enqueued or found, or no jobs store is running."""


class StoreUnavailable(JobsError):
    """Raised when the jobs store cannot be reached or written now (connection lost, database
    locked or read-only); the same write may succeed later."""


class DashboardError(EdgeRuntimeError):
    """Raised when a dashboard API request cannot be served; answered with `status`."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


class DuplicateHeader(EdgeRuntimeError):
    """Raised when a request sends a header that must appear once (a credential) more than once."""

    def __init__(self, header: str) -> None:
        self.header = header
        super().__init__(f"the request has more than one {header} header")


class ResourceExhausted(EdgeRuntimeError):
    """Raised when the server is out of file descriptors: no function is at fault, and it passes.

    Answered 503 RESOURCE_EXHAUSTED; unlike a boot error it is not recorded against the function.
    """

    def __init__(self, function: str | None, action: str) -> None:
        self.function = function
        #: What could not be done, e.g. "loading function hello".
        self.action = action
        super().__init__(f"out of file descriptors: {action} failed")


class InvalidJWT(EdgeRuntimeError):
    """Raised by ``verify_jwt`` when a token is missing, malformed, forged or expired.

    `code` is the ``sb-error-code`` the gateway would answer such a token with
    (``UNAUTHORIZED_LEGACY_JWT``, ``UNAUTHORIZED_INVALID_JWT_FORMAT`` ...).
    """

    def __init__(self, message: str, code: str) -> None:
        self.code = code
        super().__init__(message)


class WebSocketUpgradeError(EdgeRuntimeError, TypeError):
    """Raised by ``upgrade_websocket`` for a request that is not a WebSocket upgrade request (as
    ``Deno.upgradeWebSocket`` throws a TypeError), or that was upgraded already."""


class WebSocketDenied(EdgeRuntimeError):
    """Raised by ``EdgeClient.websocket`` when the upgrade request was answered with a response
    (the gateway's 401 or 404, the function's 400 or 403) instead of being accepted."""

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.status = status
        self.headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in headers}
        self.body = body
        super().__init__(f"the WebSocket upgrade was answered {status}: {body[:200]!r}")


class SiblingsUnavailable(EdgeRuntimeError):
    """Raised when what every serving process holds (metrics, in-flight work) was asked of all of
    them under ``--workers N`` and not every one answered in time: a scrape then answers 503
    rather than the totals of some of them."""


class FunctionError(EdgeRuntimeError):
    """Raised when one function fails; other functions are not affected."""

    def __init__(self, function: str, message: str | None = None) -> None:
        self.function = function
        super().__init__(message)


class BootError(FunctionError):
    """Raised when a function's module cannot be loaded."""


class WorkerCrashed(FunctionError):
    """Raised when a function's worker ended with an error."""


class InvalidResponse(FunctionError):
    """Raised when a handler returns something that is not a Response."""


class LimitExceeded(FunctionError):
    """Raised when a resource limit (wall clock, CPU, memory) ended the work."""

    def __init__(self, function: str, reason: str, message: str | None = None) -> None:
        self.reason = reason
        super().__init__(function, message or f"{function}: {reason} limit reached")


class WallClockLimitExceeded(LimitExceeded, TimeoutError):
    """Raised when the wall-clock limit ended the work."""


class IdleTimeout(FunctionError, TimeoutError):
    """Raised when a handler has not started its response within the request idle timeout."""


class PayloadTooLarge(FunctionError):
    """Raised when a request body is larger than the function's max_request_body_mb."""

    def __init__(self, function: str, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        super().__init__(function, f"request body of {function} is larger than {max_bytes} bytes")
