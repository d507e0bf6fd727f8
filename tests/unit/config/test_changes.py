"""Comparing two settings by name: what applies live, what needs a restart, which functions reload."""

from __future__ import annotations

from pathlib import Path

from edgeruntime.config.changes import SettingsChange, compare_settings
from edgeruntime.config.settings import Settings


def settings(project: Path, config: str, env: str = "") -> Settings:
    functions = project / "functions"
    for name in ("hello", "other"):
        (functions / name).mkdir(parents=True, exist_ok=True)
        (functions / name / "index.py").write_text("")
    (project / "config.toml").write_text(config)
    (functions / ".env").write_text(env)
    return Settings.build(functions, environ={}, warn_env=False)


def test_nothing_changed_is_no_change(tmp_path: Path) -> None:
    before = settings(tmp_path, "[functions.hello]\nverify_jwt = false\n", "A=1\n")
    assert not compare_settings(before, settings(tmp_path, "[functions.hello]\nverify_jwt = false\n", "A=1\n"))


def test_verify_jwt_and_enabled_apply_at_the_next_request_without_reloading(tmp_path: Path) -> None:
    before = settings(tmp_path, "")
    after = settings(tmp_path, "[functions.hello]\nverify_jwt = false\n[functions.other]\nenabled = false\n")
    assert compare_settings(before, after) == SettingsChange(
        applied=("functions.hello.verify_jwt", "functions.other.enabled"), reload=frozenset()
    )


def test_a_function_limit_reloads_that_function_and_a_global_one_or_the_env_every_function(tmp_path: Path) -> None:
    before = settings(tmp_path, "", "SECRET=one\n")
    own = settings(tmp_path, "[functions.hello]\nwall_clock_limit_sec = 60\n", "SECRET=one\n")
    assert compare_settings(before, own) == SettingsChange(
        applied=("functions.hello.wall_clock_limit_sec",), reload=frozenset({"hello"})
    )
    env = settings(tmp_path, "", "SECRET=two\nNEW=1\n")
    assert compare_settings(before, env) == SettingsChange(applied=("env.NEW", "env.SECRET"), reload=None)
    limit = settings(tmp_path, "[edge_runtime]\ncpu_soft_limit_ms = 500\n", "SECRET=one\n")
    assert compare_settings(before, limit).reload is None
    secret = settings(tmp_path, '[auth]\njwt_secret = "another-secret-with-at-least-32-characters"\n', "SECRET=one\n")
    change = compare_settings(before, secret)
    # The keys signed with the secret are in every function's env: it reloads them all.
    assert "auth.jwt_secret" in change.applied and "env.SUPABASE_ANON_KEY" in change.applied
    assert change.reload is None


def test_what_the_running_server_cannot_change_needs_a_restart(tmp_path: Path) -> None:
    before = settings(tmp_path, "")
    after = settings(
        tmp_path,
        '[edge_runtime]\nisolation = "process"\nkeep_alive_timeout_sec = 3\n'
        '[cron.nightly]\nfunction = "hello"\nschedule = "@daily"\n[functions.hello]\nverify_jwt = false\n',
    )
    change = compare_settings(before, after)
    assert change.restart == ("cron.nightly", "edge_runtime.isolation", "edge_runtime.keep_alive_timeout_sec")
    assert change.applied == ("functions.hello.verify_jwt",)
