"""functions/retry: `with_retry` (tenacity) retries a failing email send with a growing delay."""

from __future__ import annotations

import pytest

from edgeruntime.testing import EdgeClient
from tests.examples.conftest import examples_client
from tests.fakes import FakeSendGrid

MAIL = {"recipient": "ada@example.com", "subject": "Hi", "body": "Hello Ada"}


async def test_two_failures_then_success(
    client: EdgeClient, sendgrid: FakeSendGrid, caplog: pytest.LogCaptureFixture
) -> None:
    sendgrid.fail_next(2)
    r = await client.invoke("retry", json=MAIL)
    assert r.status_code == 202
    await client.drain()
    assert len(sendgrid.sent) == 3
    assert "Attempt 1 failed" in caplog.text
    assert "Attempt 2 failed" in caplog.text
    assert "Attempt 3 failed" not in caplog.text


async def test_gives_up_after_three_attempts_and_the_runtime_reports_it(
    client: EdgeClient, sendgrid: FakeSendGrid, caplog: pytest.LogCaptureFixture
) -> None:
    sendgrid.fail_next(5)
    r = await client.invoke("retry", json=MAIL)
    execution_id = r.headers["x-edgeruntime-execution-id"]
    with pytest.raises(ExceptionGroup) as raised:
        await client.drain()
    assert "500 Internal Server Error" in str(raised.value.exceptions[0])
    assert len(sendgrid.sent) == 3
    assert "Attempt 3 failed" in caplog.text
    assert f"background task with_retry of function retry failed (execution {execution_id})" in caplog.text


async def test_delay_grows_with_the_attempt(example_env: dict[str, str], sendgrid: FakeSendGrid) -> None:
    sendgrid.fail_next(2)
    async with examples_client(example_env, RETRY_DELAY_MS="100") as client:
        await client.invoke("retry", json=MAIL)
        await client.drain()
    first, second, third = (r.received_at for r in sendgrid.sent)
    # delay_ms * attempt: about 100 ms, then about 200 ms (lower bounds only: the machine is shared).
    assert second - first >= 0.09
    assert third - second >= 0.19
