"""Limits: the value object, tiers, and where limits are set (config.toml, CLI, per test)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edgeruntime.config.settings import Settings, parse_limit_options
from edgeruntime.exceptions import ConfigError
from edgeruntime.limits import DEFAULT_LIMITS, FREE_TIER, LIMIT_MAXIMUMS, PRO_TIER, Limits
from edgeruntime.testing import EdgeClient
from tests.helpers import run_cli


def test_defaults_are_the_local_runtime_s() -> None:
    assert DEFAULT_LIMITS == Limits(
        wall_clock_limit_sec=400,
        cpu_soft_limit_ms=1000,
        cpu_hard_limit_ms=2000,
        memory_limit_mb=256,
        request_idle_timeout_sec=150,
        max_request_body_mb=20,
        max_websocket_message_mb=1,
    )
    assert FREE_TIER.wall_clock_limit_sec == 150
    assert PRO_TIER.wall_clock_limit_sec == 400
    assert DEFAULT_LIMITS.max_request_body_bytes == 20 * 1024 * 1024
    assert DEFAULT_LIMITS.max_websocket_message_bytes == 1024 * 1024


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"wall_clock_limit_sec": 0}, "wall_clock_limit_sec must be greater than 0"),
        ({"memory_limit_mb": "lots"}, "memory_limit_mb must be a number"),
        ({"cpu_soft_limit_ms": 3000}, "must not exceed cpu_hard_limit_ms"),
    ],
)
def test_invalid_limits_are_refused(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DEFAULT_LIMITS.replace(**changes)


def test_tier_and_per_function_config(hello_dir: Path) -> None:
    (hello_dir.parent / "config.toml").write_text(
        "[edge_runtime]\ncpu_hard_limit_ms = 3000\n[functions.hello]\nwall_clock_limit_sec = 60\n"
    )
    settings = Settings.build(hello_dir, tier="free")
    assert settings.limits.wall_clock_limit_sec == 150
    assert settings.limits.cpu_hard_limit_ms == 3000
    assert settings.limits_for("hello").wall_clock_limit_sec == 60
    assert settings.limits_for("other").wall_clock_limit_sec == 150


async def test_per_test_limits(hello_dir: Path) -> None:
    async with EdgeClient(hello_dir, limits={"wall_clock_limit_sec": 2}) as client:
        assert client.app.functions["hello"].limits.wall_clock_limit_sec == 2
    async with EdgeClient(hello_dir, limits=Limits(cpu_soft_limit_ms=10, cpu_hard_limit_ms=20)) as client:
        assert client.app.functions["hello"].limits.cpu_hard_limit_ms == 20


def test_limit_options() -> None:
    assert parse_limit_options(["wall_clock_limit_sec=60", "memory_limit_mb=128"]) == {
        "wall_clock_limit_sec": 60.0,
        "memory_limit_mb": 128.0,
    }
    with pytest.raises(ConfigError, match="unknown limit 'wall'"):
        parse_limit_options(["wall=1"])
    with pytest.raises(ConfigError, match="'x' is not a number"):
        parse_limit_options(["memory_limit_mb=x"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_limit_options(["memory_limit_mb"])


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("wall=1", "unknown limit 'wall'"),
        ("memory_limit_mb=lots", "'lots' is not a number"),
        ("wall_clock_limit_sec=-1", "wall_clock_limit_sec must be greater than 0"),
    ],
)
def test_bad_limit_flag_is_one_line_and_exit_2(hello_dir: Path, option: str, message: str) -> None:
    result = run_cli("serve", str(hello_dir), "--port", "1", "--limit", option)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"memory_limit_mb": float("nan")}, "memory_limit_mb must be a finite number, got nan"),
        ({"max_request_body_mb": float("inf")}, "max_request_body_mb must be a finite number, got inf"),
        ({"memory_limit_mb": 1e300}, "memory_limit_mb must be at most 1048576, got 1e+300"),
        ({"wall_clock_limit_sec": 10**20}, "wall_clock_limit_sec must be at most 31536000"),
        ({"cpu_hard_limit_ms": 1e12}, "cpu_hard_limit_ms must be at most 31536000000"),
    ],
)
def test_nan_inf_and_too_large_limits_are_refused(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        DEFAULT_LIMITS.replace(**changes)


def test_the_largest_limits_are_accepted() -> None:
    limits = Limits(
        wall_clock_limit_sec=LIMIT_MAXIMUMS["wall_clock_limit_sec"],
        cpu_soft_limit_ms=LIMIT_MAXIMUMS["cpu_soft_limit_ms"],
        cpu_hard_limit_ms=LIMIT_MAXIMUMS["cpu_hard_limit_ms"],
        memory_limit_mb=LIMIT_MAXIMUMS["memory_limit_mb"],
        max_request_body_mb=LIMIT_MAXIMUMS["max_request_body_mb"],
    )
    assert limits.max_request_body_bytes == 1024**4


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("memory_limit_mb=nan", "--limit memory_limit_mb=nan: memory_limit_mb must be a finite number, got nan"),
        ("max_request_body_mb=inf", "--limit max_request_body_mb=inf: max_request_body_mb must be a finite number"),
        (
            "wall_clock_limit_sec=-Infinity",
            "--limit wall_clock_limit_sec=-Infinity: wall_clock_limit_sec must be a finite",
        ),
        ("memory_limit_mb=1e300", "--limit memory_limit_mb=1e300: memory_limit_mb must be at most 1048576, got 1e300"),
    ],
)
def test_limit_options_refuse_nan_inf_and_too_large(option: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}"):
        parse_limit_options([option])


def test_a_nan_limit_flag_is_one_line_and_exit_2(hello_dir: Path) -> None:
    result = run_cli("serve", str(hello_dir), "--port", "1", "--no-watch", "--limit", "memory_limit_mb=nan")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "edgeruntime: error: --limit memory_limit_mb=nan: memory_limit_mb must be a finite number, got nan"
    ]
