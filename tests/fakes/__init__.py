"""Local stand-ins for the third-party services the examples call: real HTTP servers on 127.0.0.1.

Each fake listens on a free loopback port, records every request it receives, and answers the
way the real service does for the calls the examples make. Point a function at one through the
service's base-URL env variable (``SUPABASE_URL``, ``SENDGRID_API_URL``, ``POSTHOG_HOST``, ``STRIPE_API_BASE``).
"""

from __future__ import annotations

from tests.fakes.posthog import FakePostHog
from tests.fakes.sendgrid import FakeSendGrid
from tests.fakes.server import FakeServer, RecordedRequest, Reply
from tests.fakes.stripe_api import FakeStripe
from tests.fakes.supabase_rest import FakeSupabase

__all__ = ["FakePostHog", "FakeSendGrid", "FakeServer", "FakeStripe", "FakeSupabase", "RecordedRequest", "Reply"]
