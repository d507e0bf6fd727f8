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
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from edgeruntime.exceptions import ConfigError

__all__ = ["CATCHUP_WINDOW_SEC", "JobsConfig"]

#: After downtime only the latest missed tick runs, and only if it is at most this old.
CATCHUP_WINDOW_SEC = 600.0


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
