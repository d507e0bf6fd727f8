"""The `[jobs]` section of config.toml: retries, leases, polling and retention.

```toml
[jobs]
max_attempts = 4            # default for enqueue(); each attempt is one delivery
backoff_base_sec = 1.0      # retry n waits min(cap, base * 2**(n-1)) ± jitter
backoff_cap_sec = 3600.0
backoff_jitter = 0.2        # ± 20 %
lease_sec = 30.0            # a claimed job is re-delivered if its instance stops heartbeating
poll_interval_ms = 200      # how often an idle instance looks for due jobs
concurrency = 32            # jobs one instance delivers at once
retention_days = 7          # run history, succeeded jobs and cron ticks older than this are pruned
retention_max_mb = 500      # optional: the oldest run history goes to keep the store under this size
retention_max_rows = 1000000  # optional: ... or to keep at most this many run records
```

Every value is a finite number with an upper bound (:data:`MAXIMUMS`): at most 1000 attempts,
times of at most a year (the poll interval at most an hour), retention of at most 100 years or
1 PiB, at most 10000 concurrent jobs, and a row count a 64-bit integer holds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from edgeruntime.exceptions import ConfigError

__all__ = ["CATCHUP_WINDOW_SEC", "MAXIMUMS", "JobsConfig"]

#: After downtime only the latest missed tick runs, and only if it is at most this old.
CATCHUP_WINDOW_SEC = 600.0
_YEAR_SEC = 365 * 24 * 3600
#: The largest value of each `[jobs]` key. More is a typo, and breaks what it reaches: the backoff
#: (2 ** attempt overflows a float past 1024 attempts), timers, SQLite's 64-bit integers.
MAXIMUMS: Mapping[str, int] = {
    "max_attempts": 1000,
    "backoff_base_sec": _YEAR_SEC,
    "backoff_cap_sec": _YEAR_SEC,
    "backoff_jitter": 1,
    "lease_sec": _YEAR_SEC,
    "poll_interval_ms": 3600 * 1000,
    "concurrency": 10_000,
    "retention_days": 36_500,
    "retention_max_mb": 1024**3,
    "retention_max_rows": 2**63 - 1,
}


@dataclass(frozen=True)
class JobsConfig:
    """Queue and retention settings (see the module docstring for the keys)."""

    max_attempts: int = 4
    backoff_base_sec: float = 1.0
    backoff_cap_sec: float = 3600.0
    backoff_jitter: float = 0.2
    lease_sec: float = 30.0
    poll_interval_ms: float = 200.0
    concurrency: int = 32
    retention_days: float = 7.0
    #: Size cap of the history: SQLite, the database file; Postgres, the history table's rows
    #: (estimated). None: no cap (age only).
    retention_max_mb: float | None = None
    #: Run records kept at most (None: no cap).
    retention_max_rows: int | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{f.name}: must be a finite number, got {value!r}")
        if self.max_attempts < 1:
            raise ValueError("max_attempts: must be at least 1")
        if not 0 <= self.backoff_jitter < 1:
            raise ValueError("backoff_jitter: must be in [0, 1)")
        for name in ("backoff_base_sec", "backoff_cap_sec", "lease_sec", "poll_interval_ms", "retention_days"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be positive")
        if self.concurrency < 1:
            raise ValueError("concurrency: must be at least 1")
        if self.retention_max_mb is not None and self.retention_max_mb <= 0:
            raise ValueError("retention_max_mb: must be positive")
        if self.retention_max_rows is not None and self.retention_max_rows < 1:
            raise ValueError("retention_max_rows: must be at least 1")
        for name, maximum in MAXIMUMS.items():
            value = getattr(self, name)
            if value is not None and value > maximum:
                raise ValueError(f"{name}: must be at most {maximum}, got {value!r}")

    @classmethod
    def from_table(cls, table: Mapping[str, Any], path: Path | None = None) -> JobsConfig:
        """Validate the raw `[jobs]` table; ConfigError naming the file and key when wrong."""
        where = f"{path}: " if path else ""
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in table.items():
            if key not in known:
                raise ConfigError(f"{where}[jobs] {key}: unknown key; expected one of {', '.join(sorted(known))}")
            integral = str(known[key].type).startswith("int")
            if isinstance(value, bool) or not isinstance(value, int | float) or (integral and isinstance(value, float)):
                kind = "an integer" if integral else "a number"
                raise ConfigError(f"{where}[jobs] {key}: expected {kind}, got {value!r}")
            values[key] = value
        try:
            return cls(**values)
        except ValueError as exc:
            raise ConfigError(f"{where}[jobs] {exc}") from None
