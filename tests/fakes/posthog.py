"""PostHog's capture endpoint (`POST /capture`), as the analytics example uses it."""

from __future__ import annotations

from typing import Any

from tests.fakes.server import FakeServer, RecordedRequest, Reply

CAPTURE_PATHS = ("/capture", "/capture/", "/i/v0/e/")


class FakePostHog(FakeServer):
    """Answers captures with PostHog's `{"status": 1}`; a capture without `api_key` gets 401."""

    def respond(self, request: RecordedRequest) -> Reply:
        if request.method != "POST" or request.path not in CAPTURE_PATHS:
            return Reply.json(404, {"detail": "not found"})
        payload = request.json()
        if not payload.get("api_key"):
            return Reply.json(401, {"type": "authentication_error", "detail": "API key is not valid"})
        return Reply.json(200, {"status": 1})

    def events(self) -> list[dict[str, Any]]:
        return [r.json() for r in self.received("POST") if r.path in CAPTURE_PATHS]
