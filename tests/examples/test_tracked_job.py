"""functions/tracked-job: start, duration and failure of a named background job are logged."""

from __future__ import annotations

import re

import pytest

from edgeruntime.testing import EdgeClient
from tests.fakes import FakeSendGrid


async def test_completed_job_logs_start_and_duration(
    client: EdgeClient, sendgrid: FakeSendGrid, caplog: pytest.LogCaptureFixture
) -> None:
    r = await client.invoke("tracked-job", json={"recipient": "ada@example.com", "body": "Hello"})
    assert r.status_code == 202
    await client.drain()
    assert sendgrid.recipients() == ["ada@example.com"]
    assert "[send-email] Starting background job" in caplog.text
    assert re.search(r"\[send-email\] Completed in \d+ms", caplog.text)


async def test_failed_job_logs_and_reraises_to_the_runtime(
    client: EdgeClient, sendgrid: FakeSendGrid, caplog: pytest.LogCaptureFixture
) -> None:
    sendgrid.fail_next(1, status=502)
    r = await client.invoke("tracked-job", json={"recipient": "ada@example.com", "body": "Hello"})
    with pytest.raises(ExceptionGroup):
        await client.drain()
    assert re.search(r"\[send-email\] Failed after \d+ms: .*502", caplog.text)
    execution_id = r.headers["x-edgeruntime-execution-id"]
    assert f"background task tracked_background_job of function tracked-job failed (execution {execution_id})" in (
        caplog.text
    )
