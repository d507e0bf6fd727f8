"""Type aliases shared across edgeruntime.

A leaf: Starlette's classes are imported for type checking only, so importing this module (and
the config reader, which uses it) does not load Starlette.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

Scope: TypeAlias = MutableMapping[str, Any]
Message: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
Send: TypeAlias = Callable[[Message], Awaitable[None]]
ASGIApp: TypeAlias = Callable[[Scope, Receive, Send], Awaitable[None]]

#: What `serve()` accepts: an async or sync request handler, or an ASGI application.
Handler: TypeAlias = "Callable[[Request], Awaitable[Response]] | Callable[[Request], Response] | ASGIApp"

JSON: TypeAlias = dict[str, Any] | list[Any] | str | int | float | bool | None


class Enqueue(Protocol):
    """What ``edgeruntime.jobs.enqueue`` does: queue a job for `function`, return its id."""

    def __call__(
        self,
        function: str,
        payload: Any = None,
        *,
        delay: float = 0,
        max_attempts: int | None = None,
        idempotency_key: str | None = None,
    ) -> Awaitable[int]: ...
