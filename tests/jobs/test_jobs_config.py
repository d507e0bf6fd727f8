"""`[jobs]` values no queue can use (nan, inf, numbers past their bounds) are refused at load."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from edgeruntime.exceptions import ConfigError
from edgeruntime.jobs.config import MAXIMUMS, JobsConfig
from tests.helpers import HELLO, run_cli, write_function

BAD = [
    # (value in config.toml, what the message must say)
    ("max_attempts = 99999999999999999999", "[jobs] max_attempts: must be at most 1000, got 99999999999999999999"),
    ("max_attempts = 1001", "[jobs] max_attempts: must be at most 1000, got 1001"),
    ("lease_sec = nan", "[jobs] lease_sec: must be a finite number, got nan"),
    ("lease_sec = inf", "[jobs] lease_sec: must be a finite number, got inf"),
    ("poll_interval_ms = nan", "[jobs] poll_interval_ms: must be a finite number, got nan"),
    ("poll_interval_ms = 1e300", "[jobs] poll_interval_ms: must be at most 3600000, got 1e+300"),
    ("retention_max_mb = nan", "[jobs] retention_max_mb: must be a finite number, got nan"),
    ("retention_max_mb = inf", "[jobs] retention_max_mb: must be a finite number, got inf"),
    ("retention_days = inf", "[jobs] retention_days: must be a finite number, got inf"),
    ("backoff_base_sec = nan", "[jobs] backoff_base_sec: must be a finite number, got nan"),
    ("backoff_cap_sec = 1e300", "[jobs] backoff_cap_sec: must be at most 31536000, got 1e+300"),
    ("concurrency = 99999999999999999999", "[jobs] concurrency: must be at most 10000"),
    ("retention_max_rows = 9223372036854775808", "[jobs] retention_max_rows: must be at most 9223372036854775807"),
]


@pytest.mark.parametrize(("line", "message"), BAD, ids=[b[0] for b in BAD])
def test_unusable_jobs_values_are_refused_naming_file_and_key(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "config.toml"
    table = tomllib.loads(line)
    with pytest.raises(ConfigError) as info:
        JobsConfig.from_table(table, path)
    assert str(info.value).startswith(f"{path}: {message}")


def test_the_largest_values_are_accepted() -> None:
    config = JobsConfig.from_table(dict(MAXIMUMS, backoff_jitter=0.5))
    assert config.max_attempts == 1000
    assert config.retention_max_rows == 2**63 - 1


def test_serve_refuses_a_max_attempts_sqlite_cannot_store(functions_dir: Path) -> None:
    write_function(functions_dir, "hello", HELLO)
    config = functions_dir.parent / "config.toml"
    config.write_text("[jobs]\nmax_attempts = 99999999999999999999\n", encoding="utf-8")
    result = run_cli("serve", str(functions_dir), "--port", "1", "--no-watch", timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"edgeruntime: error: {config}: [jobs] max_attempts: must be at most 1000, got 99999999999999999999"
    ]
