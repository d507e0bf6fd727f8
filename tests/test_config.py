"""config.toml: where it is found, what it holds, and the one-line errors for bad files."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

import pytest

from edgeruntime.config.project import DEFAULT_JWT_SECRET, find_config, load_config
from edgeruntime.config.settings import Settings, public_keys_warning
from edgeruntime.exceptions import ConfigError
from edgeruntime.testing import EdgeClient
from tests.helpers import HELLO, ServerProcess, run_cli, wait_until, write_function

SUPABASE_CONFIG = """
project_id = "demo"

[api]
enabled = true
port = 54321

[db]
port = 54322
major_version = 15

[db.pooler]
enabled = false

[auth]
enabled = true
site_url = "http://127.0.0.1:3000"
jwt_expiry = 3600
jwt_secret = "a-custom-secret-that-is-long-enough-to-sign"

[auth.email]
enable_signup = true

[edge_runtime]
enabled = true
policy = "oneshot"
inspector_port = 8083
deno_version = 2

[edge_runtime.secrets]
STRIPE_KEY = "sk_test_123"

[functions.stripe-webhook]
verify_jwt = false
import_map = "./functions/stripe-webhook/deno.json"
entrypoint = "./functions/stripe-webhook/index.ts"
static_files = ["./functions/stripe-webhook/*.html"]

[analytics]
enabled = false

[storage]
file_size_limit = "50MiB"
"""


def write_config(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_a_file() -> None:
    config = load_config(None)
    assert config.path is None
    assert config.policy == "per_worker"
    assert config.isolation == "inline"
    assert config.jwt_secret == DEFAULT_JWT_SECRET
    assert config.function("anything").verify_jwt is True
    assert config.function("anything").enabled is True


def test_a_supabase_project_config_is_accepted(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path / "config.toml", SUPABASE_CONFIG), environ={})
    assert config.policy == "per_request"  # the CLI's "oneshot"
    assert config.jwt_secret == "a-custom-secret-that-is-long-enough-to-sign"
    assert config.secrets == {"STRIPE_KEY": "sk_test_123"}
    assert config.function("stripe-webhook").verify_jwt is False
    assert config.function("stripe-webhook").enabled is True


def test_full_edgeruntime_config(tmp_path: Path) -> None:
    text = """
    [edge_runtime]
    policy = "per_worker"
    isolation = "process"
    wall_clock_limit_sec = 120
    cpu_soft_limit_ms = 500
    cpu_hard_limit_ms = 900
    memory_limit_mb = 128
    request_idle_timeout_sec = 30
    max_request_body_mb = 5

    [functions.slow]
    wall_clock_limit_sec = 300
    description = "a slow one"

    [cron.nightly]
    function = "slow"
    schedule = "0 10 * * *"
    body = { source = "cron" }
    overlap = "allow"
    timezone = "Europe/Paris"
    """
    config = load_config(write_config(tmp_path / "config.toml", text.replace("\n    ", "\n")), environ={})
    assert config.isolation == "process"
    assert config.limits.wall_clock_limit_sec == 120
    assert config.limits.cpu_soft_limit_ms == 500
    assert config.limits.max_request_body_mb == 5
    assert config.limits_for("slow").wall_clock_limit_sec == 300
    assert config.limits_for("slow").cpu_soft_limit_ms == 500
    assert config.limits_for("other").wall_clock_limit_sec == 120
    cron = config.cron["nightly"]
    assert (cron.function, cron.schedule, cron.overlap, cron.timezone) == (
        "slow",
        "0 10 * * *",
        "allow",
        "Europe/Paris",
    )
    assert cron.body == {"source": "cron"}


def test_found_next_to_the_functions_directory(tmp_path: Path) -> None:
    functions = tmp_path / "supabase" / "functions"
    functions.mkdir(parents=True)
    assert find_config(functions, None) is None
    config = write_config(tmp_path / "supabase" / "config.toml", "")
    assert find_config(functions, None) == config
    explicit = write_config(tmp_path / "other.toml", "")
    assert find_config(functions, explicit) == explicit


async def test_supabase_layout_is_served_with_its_config(tmp_path: Path) -> None:
    functions = tmp_path / "supabase" / "functions"
    write_function(functions, "hello", HELLO)
    write_config(tmp_path / "supabase" / "config.toml", "[functions.hello]\nverify_jwt = false\n")
    async with EdgeClient(functions) as client:
        assert (await client.invoke("hello", auth=None)).status_code == 200


async def test_explicit_config_wins_over_the_one_beside(hello_dir: Path, tmp_path: Path) -> None:
    write_config(hello_dir.parent / "config.toml", "[functions.hello]\nverify_jwt = false\n")
    other = write_config(tmp_path / "strict.toml", "[functions.hello]\nverify_jwt = true\n")
    async with EdgeClient(hello_dir, config_path=other) as client:
        assert (await client.invoke("hello", auth=None)).status_code == 401


async def test_enabled_false_hides_a_function(hello_dir: Path) -> None:
    write_function(hello_dir, "other", HELLO)
    write_config(hello_dir.parent / "config.toml", "[functions.hello]\nenabled = false\n")
    async with EdgeClient(hello_dir) as client:
        r = await client.invoke("hello")
        assert r.status_code == 404
        assert r.text == "Function not found"
        assert (await client.invoke("other")).status_code == 200
    listing = run_cli("list", str(hello_dir))
    assert listing.returncode == 0
    assert "hello" in listing.stdout and "disabled" in listing.stdout


# -- errors ----------------------------------------------------------------------------------------

ERRORS = [
    # (config text, what the message must name)
    ("[edge_runtime]\nwall_clock_limit = 10\n", ["[edge_runtime] wall_clock_limit", "unknown key"]),
    ('[functions.hello]\nverify_jwt = "no"\n', ["[functions.hello] verify_jwt", "expected true or false"]),
    ("[functions.hello]\nverifyjwt = false\n", ["[functions.hello] verifyjwt", "unknown key"]),
    ("[functions.hello]\nenabled = 1\n", ["[functions.hello] enabled", "expected true or false"]),
    ('[functions.hello]\nwall_clock_limit_sec = "60"\n', ["[functions.hello] wall_clock_limit_sec", "number"]),
    ('[edge_runtime]\npolicy = "fast"\n', ["[edge_runtime] policy", "per_worker, per_request", "'fast'"]),
    ('[edge_runtime]\nisolation = "thread"\n', ["[edge_runtime] isolation", "inline, process"]),
    ("[edge_runtime]\nmemory_limit_mb = -1\n", ["[edge_runtime] memory_limit_mb", "greater than 0"]),
    ("[edge_runtime.secrets]\nPORT = 8000\n", ["[edge_runtime.secrets] PORT", "expected a string"]),
    ('[auth]\njwt_secret = "short"\n', ["[auth] jwt_secret", "at least 16 characters"]),
    ("[auth]\njwt_secret = 42\n", ["[auth] jwt_secret", "expected a string"]),
    ('[auth]\njwt_secret = "env(ER_TEST_UNSET_SECRET)"\n', ["[auth] jwt_secret", "ER_TEST_UNSET_SECRET", "not set"]),
    ("[functions.1bad]\nenabled = true\n", ["[functions.1bad]", "invalid function name"]),
    ("functions = 3\n", ["[functions]", "expected a table"]),
    ("[fucntions.hello]\nverify_jwt = false\n", ["fucntions", "unknown key"]),
    ('[cron.daily]\nschedule = "@daily"\n', ["[cron.daily] function", "is required"]),
    ('[cron.daily]\nfunction = "hello"\nschedule = "@daily"\noverlap = "queue"\n', ["[cron.daily] overlap"]),
    ('[cron.daily]\nfunction = "hello"\nschedule = "@daily"\nevery = 1\n', ["[cron.daily] every", "unknown key"]),
    ("[edge_runtime\npolicy = 1\n", ["not valid TOML", "line 1"]),
    ('[dashboard]\nallowed_hosts = "dash.example.com"\n', ["[dashboard] allowed_hosts", "expected an array"]),
    ("[dashboard]\nallowed_hosts = [8443]\n", ["[dashboard] allowed_hosts", "expected host names"]),
    ('[dashboard]\nallowed_hosts = ["https://dash.example.com"]\n', ["[dashboard] allowed_hosts", "no scheme"]),
    ('[dashboard]\nallowed_hosts = ["dash.example.com/admin"]\n', ["[dashboard] allowed_hosts", "no path"]),
    (
        '[dashboard]\nallowed_hosts = ["dash.example.com:http"]\n',
        ["[dashboard] allowed_hosts", "'dash.example.com:http'"],
    ),
    (
        '[dashboard]\nallowed_hosts = ["*"]\n',
        ["[dashboard] allowed_hosts", "'*' would serve the dashboard to any Host"],
    ),
    ('[dashboard]\nallowed_hosts = ["a b"]\n', ["[dashboard] allowed_hosts", "'a b'"]),
    ('[dashboard]\nallowed_host = ["dash.example.com"]\n', ["[dashboard] allowed_host", "unknown key"]),
    ("[edge_runtime]\nkeep_alive_timeout_sec = 0\n", ["[edge_runtime] keep_alive_timeout_sec", "greater than 0"]),
    ("[edge_runtime]\nkeep_alive_timeout_sec = -5\n", ["[edge_runtime] keep_alive_timeout_sec", "got -5"]),
    ("[edge_runtime]\nkeep_alive_timeout_sec = nan\n", ["[edge_runtime] keep_alive_timeout_sec", "got nan"]),
    ("[edge_runtime]\nkeep_alive_timeout_sec = inf\n", ["[edge_runtime] keep_alive_timeout_sec", "at most 3600"]),
    ("[edge_runtime]\nkeep_alive_timeout_sec = 86400\n", ["[edge_runtime] keep_alive_timeout_sec", "at most 3600"]),
    ('[edge_runtime]\nkeep_alive_timeout_sec = "5"\n', ["[edge_runtime] keep_alive_timeout_sec", "got '5'"]),
    ("[edge_runtime]\nkeep_alive_timeout_sec = true\n", ["[edge_runtime] keep_alive_timeout_sec", "got true"]),
    ('[edge_runtime]\ncors_origins = "*"\n', ["[edge_runtime] cors_origins", "expected an array of origins"]),
    ("[edge_runtime]\ncors_origins = [443]\n", ["[edge_runtime] cors_origins", "expected origins (strings)"]),
    ('[edge_runtime]\ncors_origins = ["app.example.com"]\n', ["[edge_runtime] cors_origins", "'app.example.com'"]),
    ('[edge_runtime]\ncors_origins = ["https://a.example/app"]\n', ["[edge_runtime] cors_origins", "no path"]),
    ('[edge_runtime]\ncors_origins = ["null"]\n', ["[edge_runtime] cors_origins", "'null'"]),
    ('[edge_runtime]\ncors_origins = ["ftp://a.example"]\n', ["[edge_runtime] cors_origins", "'ftp://a.example'"]),
    ("[edge_runtime]\nmax_websocket_message_mb = 0\n", ["[edge_runtime] max_websocket_message_mb", "greater than 0"]),
    ("[edge_runtime]\nworkers = 0\n", ["[edge_runtime] workers", "from 1 to 256, or auto, got 0"]),
    ("[edge_runtime]\nworkers = -1\n", ["[edge_runtime] workers", "got -1"]),
    ("[edge_runtime]\nworkers = 257\n", ["[edge_runtime] workers", "got 257"]),
    ('[edge_runtime]\nworkers = "lots"\n', ["[edge_runtime] workers", "got 'lots'"]),
    ('[edge_runtime]\nworkers = "4"\n', ["[edge_runtime] workers", "got '4'"]),
    ("[edge_runtime]\nworkers = 1.5\n", ["[edge_runtime] workers", "got 1.5"]),
    ("[edge_runtime]\nworkers = true\n", ["[edge_runtime] workers", "got true"]),
]


UNUSABLE = [
    # env names and values (a traceback in apply_env, or every request 503 under process isolation)
    ('[edge_runtime.secrets]\n"A=B" = "x"\n', ['[edge_runtime.secrets] "A=B"', "must not contain '='"]),
    ('[edge_runtime.secrets]\n"" = "x"\n', ['[edge_runtime.secrets] ""', "must not be empty"]),
    ('[edge_runtime.secrets]\n"A\\u0000B" = "x"\n', ['[edge_runtime.secrets] "A\\u0000B"', "NUL"]),
    ('[edge_runtime.secrets]\nKEY = "a\\u0000b"\n', ["[edge_runtime.secrets] KEY", "value must not contain a NUL"]),
    # nan, inf and numbers too large to use
    ("[edge_runtime]\nmemory_limit_mb = nan\n", ["[edge_runtime] memory_limit_mb", "got nan"]),
    ("[edge_runtime]\nwall_clock_limit_sec = inf\n", ["[edge_runtime] wall_clock_limit_sec", "got inf"]),
    ("[edge_runtime]\nmemory_limit_mb = 1e300\n", ["[edge_runtime] memory_limit_mb", "at most 1048576", "1e+300"]),
    ("[edge_runtime]\ncpu_hard_limit_ms = -inf\n", ["[edge_runtime] cpu_hard_limit_ms", "got -inf"]),
    (
        "[edge_runtime]\nrequest_idle_timeout_sec = 99999999999999999999\n",
        ["[edge_runtime] request_idle_timeout_sec", "at most 31536000", "got 99999999999999999999"],
    ),
    ("[functions.hello]\nmax_request_body_mb = inf\n", ["[functions.hello] max_request_body_mb", "got inf"]),
    ("[functions.hello]\ncpu_soft_limit_ms = nan\n", ["[functions.hello] cpu_soft_limit_ms", "got nan"]),
    # a cron body JSON cannot hold (it would jam the cron at its first tick)
    (
        '[cron.daily]\nfunction = "hello"\nschedule = "@daily"\nbody = { when = 1979-05-27T07:32:00Z }\n',
        ["[cron.daily] body.when = 1979-05-27T07:32:00+00:00", "JSON has no dates or times"],
    ),
    (
        '[cron.daily]\nfunction = "hello"\nschedule = "@daily"\n[cron.daily.body]\nat = [1, { t = 07:32:00 }]\n',
        ["[cron.daily] body.at[1].t = 07:32:00", "JSON"],
    ),
    (
        '[cron.daily]\nfunction = "hello"\nschedule = "@daily"\nbody = { "a b" = nan }\n',
        ['[cron.daily] body."a b" = nan', "JSON has no nan or inf"],
    ),
    # an empty JWT secret is a mistake, not the demo secret
    ('[auth]\njwt_secret = ""\n', ["[auth] jwt_secret", "is empty"]),
]


@pytest.mark.parametrize(("text", "expected"), ERRORS + UNUSABLE, ids=[e[1][0] for e in ERRORS + UNUSABLE])
def test_errors_name_file_and_key(tmp_path: Path, text: str, expected: list[str]) -> None:
    path = write_config(tmp_path / "config.toml", text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert "\n" not in message
    for part in expected:
        assert part in message


def test_keep_alive_timeout_defaults_to_the_servers_5_s_and_the_flag_wins_over_the_config(hello_dir: Path) -> None:
    assert Settings.build(hello_dir).keep_alive_timeout_sec == 5.0
    write_config(hello_dir.parent / "config.toml", "[edge_runtime]\nkeep_alive_timeout_sec = 2.5\n")
    assert Settings.build(hello_dir).keep_alive_timeout_sec == 2.5
    assert Settings.build(hello_dir, keep_alive_timeout_sec=30).keep_alive_timeout_sec == 30
    with pytest.raises(ConfigError, match=r"^--keep-alive-timeout: expected a number of seconds greater than 0"):
        Settings.build(hello_dir, keep_alive_timeout_sec=0)


def test_workers_default_to_one_and_the_flag_wins_over_the_config(
    hello_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert Settings.build(hello_dir).serving_processes == 1
    write_config(hello_dir.parent / "config.toml", "[edge_runtime]\nworkers = 3\n")
    assert Settings.build(hello_dir).serving_processes == 3
    assert Settings.build(hello_dir, workers="2").serving_processes == 2
    assert Settings.build(hello_dir, workers=" 5 ").serving_processes == 5
    # auto: the CPUs this process may run on (a container's cpuset, taskset), not the machine's.
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 2, 5}, raising=False)
    assert Settings.build(hello_dir, workers="auto").serving_processes == 3
    write_config(hello_dir.parent / "config.toml", '[edge_runtime]\nworkers = "auto"\n')
    assert Settings.build(hello_dir).serving_processes == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(1000)), raising=False)
    assert Settings.build(hello_dir).serving_processes == 256
    expected = "--workers: expected a whole number from 1 to 256, or auto, got "
    for bad in ("0", "-1", "lots", "1.5", "+2", "257", "", "0x10", "1e3"):
        with pytest.raises(ConfigError, match=f"^{re.escape(expected + repr(bad))}$"):
            Settings.build(hello_dir, workers=bad)


def test_missing_explicit_config_is_an_error(hello_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^--config: config file .*nowhere\.toml does not exist$"):
        Settings.build(hello_dir, config_path=tmp_path / "nowhere.toml")


def test_cors_origins(tmp_path: Path) -> None:
    assert load_config(None).cors_origins == ("*",)
    text = '[edge_runtime]\ncors_origins = ["https://App.Example.com:443/", "http://localhost:3000", "*"]\n'
    config = load_config(write_config(tmp_path / "config.toml", text), environ={})
    assert config.cors_origins == ("https://app.example.com", "http://localhost:3000", "*")
    config = load_config(write_config(tmp_path / "config.toml", "[edge_runtime]\ncors_origins = []\n"), environ={})
    assert config.cors_origins == ()


def test_the_server_reads_websocket_messages_as_large_as_any_function_allows(hello_dir: Path) -> None:
    assert Settings.build(hello_dir).websocket_max_message_bytes == 1024 * 1024
    write_config(
        hello_dir.parent / "config.toml",
        "[edge_runtime]\nmax_websocket_message_mb = 2\n[functions.hello]\nmax_websocket_message_mb = 8\n",
    )
    settings = Settings.build(hello_dir)
    assert settings.websocket_max_message_bytes == 8 * 1024 * 1024
    assert settings.limits_for("other").max_websocket_message_bytes == 2 * 1024 * 1024


def test_dashboard_allowed_hosts(tmp_path: Path) -> None:
    text = '[dashboard]\nallowed_hosts = ["Dash.Example.com", "*.corp.example:8443", "[::1]:9000", "10.0.0.7"]\n'
    config = load_config(write_config(tmp_path / "config.toml", text), environ={})
    assert config.dashboard.allowed_hosts == ("dash.example.com", "*.corp.example:8443", "[::1]:9000", "10.0.0.7")
    assert load_config(None).dashboard.allowed_hosts == ()


SERVE_ERRORS = [
    ('[functions.hello]\nverify_jwt = "no"\n', "[functions.hello] verify_jwt"),
    ('[dashboard]\nallowed_hosts = ["http://x"]\n', "[dashboard] allowed_hosts"),
    ("[edge_runtime]\nwall_clock = 1\n", "[edge_runtime] wall_clock"),
    ("[edge_runtime\n", "not valid TOML"),
]


def assert_serve_refuses(hello_dir: Path, path: Path, key: str) -> None:
    """`serve` exits 2 with one line naming the config file `path` and `key`, and no traceback."""
    result = run_cli("serve", str(hello_dir), "--port", "1", "--no-watch", timeout=30)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("edgeruntime: error: ")
    assert str(path) in lines[0] and key in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.e2e
@pytest.mark.parametrize(("text", "key"), SERVE_ERRORS, ids=[e[1] for e in SERVE_ERRORS])
def test_serve_exits_2_with_one_line(hello_dir: Path, text: str, key: str) -> None:
    path = write_config(hello_dir.parent / "config.toml", text)
    assert_serve_refuses(hello_dir, path, key)


@pytest.mark.e2e
def test_serve_with_missing_config_or_env_file(hello_dir: Path, tmp_path: Path) -> None:
    for option, expected in (("--config", "--config: config file"), ("--env-file", "env file")):
        missing = tmp_path / f"missing{option}"
        result = run_cli("serve", str(hello_dir), option, str(missing), "--no-watch", timeout=30)
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert lines == [f"edgeruntime: error: {expected} {missing} does not exist"]


def test_env_reference_in_secret_reads_the_given_environ(tmp_path: Path) -> None:
    path = write_config(tmp_path / "config.toml", '[edge_runtime.secrets]\nKEY = "env(ER_TEST_K)"\nRAW = "env(x"\n')
    config = load_config(path, environ={"ER_TEST_K": "v"})
    assert config.secrets == {"KEY": "v", "RAW": "env(x"}
    assert load_config(path, environ=dict(os.environ, ER_TEST_K="w")).secrets["KEY"] == "w"


# -- values no process, number or JSON body can hold, refused at load ------------------------------


def test_the_demo_jwt_secret_only_when_the_key_is_absent(tmp_path: Path) -> None:
    assert load_config(write_config(tmp_path / "config.toml", "[auth]\n"), environ={}).jwt_secret == DEFAULT_JWT_SECRET
    with pytest.raises(ConfigError, match=r"\[auth\] jwt_secret: is empty"):
        load_config(write_config(tmp_path / "config.toml", '[auth]\njwt_secret = ""\n'), environ={})


def test_json_values_of_a_cron_body_are_kept(tmp_path: Path) -> None:
    text = '[cron.daily]\nfunction = "hello"\nschedule = "@daily"\nbody = { a = [1, 2.5, "x", true], b = {} }\n'
    config = load_config(write_config(tmp_path / "config.toml", text), environ={})
    assert config.cron["daily"].body == {"a": [1, 2.5, "x", True], "b": {}}


@pytest.mark.parametrize(
    "raw",
    [b'[edge_runtime]\npolicy = "per_worker"\n# caf\xe9 (latin-1)\n', b"\x00\x01\xff\xfe\x80binary"],
    ids=["latin-1", "binary"],
)
def test_a_config_that_is_not_utf8_is_one_line_naming_the_file(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(raw)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    message = str(info.value)
    assert message.startswith(f"{path}: not valid TOML: not UTF-8")
    assert "\n" not in message


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("raw", "key"),
    [
        (b"# caf\xe9\n", "not UTF-8"),
        (b'[edge_runtime.secrets]\n"A=B" = "x"\n', '[edge_runtime.secrets] "A=B"'),
        (b"[edge_runtime]\nmax_request_body_mb = inf\n", "[edge_runtime] max_request_body_mb"),
        (b'[auth]\njwt_secret = ""\n', "[auth] jwt_secret"),
        (b'[cron.d]\nfunction = "hello"\nschedule = "@daily"\nbody = { at = 2024-01-01 }\n', "[cron.d] body.at"),
    ],
    ids=["not-utf8", "secret-name", "inf", "empty-jwt-secret", "cron-body"],
)
def test_serve_refuses_unusable_values_with_one_line(hello_dir: Path, raw: bytes, key: str) -> None:
    path = hello_dir.parent / "config.toml"
    path.write_bytes(raw)
    assert_serve_refuses(hello_dir, path, key)


# -- what is wrong but not refused: one warning line at start ---------------------------------------


@pytest.mark.e2e
def test_serve_warns_once_about_a_functions_block_with_no_function(hello_dir: Path) -> None:
    # A warning, not an error: the function may be added while serving.
    write_function(hello_dir, "contact", HELLO)
    config = write_config(
        hello_dir.parent / "config.toml",
        "[functions.contcat]\nverify_jwt = false\n"
        "[functions.hello]\nverify_jwt = false\n"
        "[functions.gone]\nenabled = false\n",
    )
    expected = [
        f"{config}: [functions.contcat]: no function 'contcat' in {hello_dir.resolve()}; did you mean 'contact'?",
        f"{config}: [functions.gone]: no function 'gone' in {hello_dir.resolve()}",
    ]
    with socket.socket() as taken:  # one serving process, which then stops: its port is taken
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = run_cli("serve", str(hello_dir), "--port", str(taken.getsockname()[1]), timeout=30)
    assert result.returncode == 2 and "is already in use" in result.stderr, result.stderr
    assert [line for line in expected if result.stderr.count(line) == 1] == expected, result.stderr
    # Several serving processes: the supervisor says it once, they do not repeat it.
    server = ServerProcess(hello_dir, "--workers", "2", "--no-watch")
    try:
        wait_until(lambda: "Using edgeruntime" in server.output or server.proc.poll() is not None, 90, "the banner")
        assert server.proc.poll() is None, server.output
    finally:
        server.stop()
    assert [line for line in expected if server.output.count(line) == 1] == expected, server.output
    assert "Traceback" not in server.output


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("0.0.0.0", "http://127.0.0.1:54321"),
        ("::", "http://[::1]:54321"),
        ("[::]", "http://[::1]:54321"),
        ("::1", "http://[::1]:54321"),
        ("127.0.0.2", "http://127.0.0.2:54321"),
    ],
)
def test_a_server_on_every_interface_is_reached_and_announced_on_loopback(hello_dir: Path, host: str, url: str) -> None:
    settings = Settings.build(hello_dir, host=host, port=54321)
    assert settings.base_url == url
    assert settings.env["SUPABASE_URL"] == url


@pytest.mark.parametrize(
    ("host", "own_secret", "warned"),
    [
        ("0.0.0.0", False, True),
        ("::", False, True),
        ("example.test", False, True),
        ("127.0.0.1", False, False),
        ("localhost", False, False),
        ("::1", False, False),
        ("0.0.0.0", True, False),
    ],
)
def test_serving_off_loopback_with_the_demo_jwt_secret_is_warned_about(
    hello_dir: Path, host: str, own_secret: bool, warned: bool
) -> None:
    """With the demo secret every key is public: off loopback, anyone who reaches the port can sign
    a service-role key. Not an error (a trusted network, a container behind a proxy), but said."""
    if own_secret:
        write_config(
            hello_dir.parent / "config.toml", '[auth]\njwt_secret = "a-secret-of-this-project-only-0123456789"\n'
        )
    line = public_keys_warning(Settings.build(hello_dir, host=host, port=54321))
    if warned:
        assert line is not None and "\n" not in line
        assert f"--host {host}" in line and "[auth] jwt_secret" in line
    else:
        assert line is None
