"""SendGrid's v3 mail API (`POST /v3/mail/send`), as far as the examples use it."""

from __future__ import annotations

from tests.fakes.server import FakeServer, RecordedRequest, Reply

MAIL_SEND = "/v3/mail/send"


class FakeSendGrid(FakeServer):
    """Accepts mail with 202 (as SendGrid does); `fail_next(n)` makes the next n sends fail."""

    def __init__(self, api_key: str = "SG.test-key") -> None:
        super().__init__()
        self.api_key = api_key
        self._failures = 0
        self.failure_status = 500

    def fail_next(self, count: int, status: int = 500) -> None:
        self._failures, self.failure_status = count, status

    def respond(self, request: RecordedRequest) -> Reply:
        if request.method != "POST" or request.path != MAIL_SEND:
            return Reply.json(404, {"errors": [{"message": "not found"}]})
        if request.header("authorization") != f"Bearer {self.api_key}":
            return Reply.json(401, {"errors": [{"message": "The provided authorization grant is invalid"}]})
        if self._failures > 0:
            self._failures -= 1
            return Reply.json(self.failure_status, {"errors": [{"message": "upstream unavailable"}]})
        return Reply(202)

    @property
    def sent(self) -> list[RecordedRequest]:
        """Mail accepted or attempted, oldest first."""
        return self.received("POST", MAIL_SEND)

    def recipients(self) -> list[str]:
        return [to["email"] for r in self.sent for p in r.json()["personalizations"] for to in p["to"]]
