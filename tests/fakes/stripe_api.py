"""Stripe's REST API (`/v1/customers/{id}`), as far as the stripe-webhook example calls it."""

from __future__ import annotations

from typing import Any

from tests.fakes.server import FakeServer, RecordedRequest, Reply

CUSTOMERS = "/v1/customers/"


class FakeStripe(FakeServer):
    """Serves the customers in `customers` to a client with the right secret key (Bearer auth, as Stripe)."""

    def __init__(self, api_key: str = "sk_test_example") -> None:
        super().__init__()
        self.api_key = api_key
        self.customers: dict[str, dict[str, Any]] = {}

    def respond(self, request: RecordedRequest) -> Reply:
        if request.header("authorization") != f"Bearer {self.api_key}":
            return _error(401, "authentication_error", "Invalid API Key provided")
        if request.method == "GET" and request.path.startswith(CUSTOMERS):
            customer_id = request.path[len(CUSTOMERS) :]
            customer = self.customers.get(customer_id)
            if customer is None:
                return _error(404, "invalid_request_error", f"No such customer: '{customer_id}'")
            return Reply.json(200, {"id": customer_id, "object": "customer", **customer})
        return _error(404, "invalid_request_error", f"Unrecognized request URL ({request.method}: {request.path})")


def _error(status: int, kind: str, message: str) -> Reply:
    return Reply.json(status, {"error": {"type": kind, "message": message}})
