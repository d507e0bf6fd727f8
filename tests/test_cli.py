"""The edgeruntime command: bad input gets one line and exit status 2; new, list, keys, invoke."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from edgeruntime.serving.cli import hang_timeout_sec, main
from tests.helpers import HELLO, KEYS, SERVICE_ROLE, ServerProcess, free_port, reap, run_cli, wait_until, write_function


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_serve_missing_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", str(tmp_path / "nope")]) == 2
    assert "does not exist" in _one_line_error(capsys)


def test_serve_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "file.py"
    target.write_text("")
    assert main(["serve", str(target)]) == 2
    assert "is a file" in _one_line_error(capsys)


def test_serve_directory_without_functions(functions_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", str(functions_dir)]) == 2
    assert "no functions in" in _one_line_error(capsys)


def test_serve_port_in_use(hello_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", str(hello_dir), "--port", str(port), "--no-watch"]) == 2
    assert f"port {port} on 127.0.0.1 is already in use" in _one_line_error(capsys)


@pytest.mark.parametrize("host", ["", " ", "\t"], ids=["empty", "space", "tab"])
def test_serve_refuses_an_empty_host_naming_the_flag(
    hello_dir: Path, capsys: pytest.CaptureFixture[str], host: str
) -> None:
    # An empty host would bind every interface: every interface is asked for by name. (The port is
    # taken on loopback, so even the code before this check binds nothing.)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", str(hello_dir), "--host", host, "--port", str(port), "--no-watch"]) == 2
    assert _one_line_error(capsys) == (
        f"edgeruntime: error: --host: expected an address or host name to listen on, got {host!r}; "
        "to listen on every interface, pass --host 0.0.0.0 (or --host :: for IPv6 too)\n"
    )


@pytest.mark.parametrize(
    ("host", "line"),
    [
        ("[foo]", "--host '[foo]': brackets go around an IPv6 address only, like [::1]; for a name, leave them out"),
        (
            "[127.0.0.1]",
            "--host '[127.0.0.1]': brackets go around an IPv6 address only, like [::1]; "
            "for an IPv4 address, leave them out: --host 127.0.0.1",
        ),
        ("[::1", "--host '[::1': a bracket is not closed; an IPv6 address is written ::1 or [::1]"),
        ("::1]", "--host '::1]': a bracket is not opened; an IPv6 address is written ::1 or [::1]"),
        ("[]", "--host '[]': brackets go around an IPv6 address only, like [::1]; got nothing inside"),
        ("[::1]:8080", "--host '[::1]:8080': the port is not part of the host: --host [::1] --port 8080"),
        ("localhost:3000", "--host 'localhost:3000': the port is not part of the host: --host localhost --port 3000"),
        ("no-such-host.invalid", "--host 'no-such-host.invalid': the name does not resolve to an address"),
        ("127.0.0.300", "--host '127.0.0.300': not an IP address (each of the 4 numbers of an IPv4 address is"),
        ("192.0.2.1", "--host '192.0.2.1': not an address of this machine (Cannot assign requested address)"),
        (
            "[::ffff:127.0.0.1]",
            "--host '[::ffff:127.0.0.1]': cannot listen on it (Invalid argument); an IPv4-mapped address: "
            "pass the IPv4 address, --host 127.0.0.1",
        ),
    ],
    ids=[
        "name",
        "ipv4",
        "unclosed",
        "unopened",
        "empty",
        "with-port",
        "name-with-port",
        "unresolved",
        "bad-ipv4",
        "elsewhere",
        "ipv4-mapped",
    ],
)
@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_refuses_a_host_it_cannot_listen_on_with_one_line_naming_the_flag(
    hello_dir: Path, capsys: pytest.CaptureFixture[str], host: str, line: str, workers: str
) -> None:
    # Nothing is bound: an address of another machine (192.0.2.1, TEST-NET-1) fails to bind, and
    # .invalid never resolves. The port is taken on loopback, so not even a probe binds there.
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        argv = ["serve", str(hello_dir), "--host", host, "--port", str(port), "--no-watch", "--workers", workers]
        assert main(argv) == 2
    assert _one_line_error(capsys).startswith(f"edgeruntime: error: {line}")


@pytest.mark.parametrize("host", ["192.0.2.1", "no-such-host.invalid", "[foo]"])
def test_serve_on_a_bad_host_in_a_subprocess_says_only_the_error(hello_dir: Path, host: str) -> None:
    # Not first a warning that the demo keys are public on that host: nothing is served there.
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        result = run_cli("serve", str(hello_dir), "--host", host, "--port", str(busy.getsockname()[1]), "--no-watch")
    assert result.returncode == 2
    assert result.stderr.startswith(f"edgeruntime: error: --host {host!r}: ") and result.stderr.count("\n") == 1, (
        result.stderr
    )


@pytest.mark.e2e
@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_on_a_bracketed_ipv6_literal_as_copied_from_a_url(hello_dir: Path, workers: str) -> None:
    server = ServerProcess(hello_dir, "--host", "[::1]", "--no-watch", "--workers", workers)
    server.base_url = f"http://[::1]:{server.port}"
    banner = f"Serving functions on http://[::1]:{server.port}/functions/v1/<function-name>"
    with server:
        r = httpx.get(server.url("hello"), headers=SERVICE_ROLE, timeout=10)
        assert r.status_code == 200 and r.json()["message"] == "hello"
        # With --workers 2 one serving process answers before the other is ready, and the
        # supervisor's banner says they all are.
        wait_until(lambda: banner in server.output, 30, "the banner")
    assert f" - http://[::1]:{server.port}/functions/v1/hello" in server.output
    assert "--host" not in server.output  # no warning: ::1 is loopback


def test_serve_bad_config_key(hello_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = hello_dir.parent / "config.toml"
    config.write_text("[edge_runtime]\nwall_clock_limit = 3\n")
    assert main(["serve", str(hello_dir)]) == 2
    err = _one_line_error(capsys)
    assert str(config) in err and "wall_clock_limit" in err


@pytest.mark.parametrize("value", ["0", "-1", "nan", "7200", "soon"])
def test_serve_bad_keep_alive_timeout_is_one_line(
    hello_dir: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    try:
        status = main(["serve", str(hello_dir), "--no-watch", "--keep-alive-timeout", value])
    except SystemExit as exit:  # argparse: not a number at all
        status = exit.code  # type: ignore[assignment]
    assert status == 2
    err = _one_line_error(capsys)
    assert "--keep-alive-timeout" in err and value in err
    if value == "soon":
        assert "invalid float value" in err
    else:
        assert "expected a number of seconds greater than 0 and at most 3600" in err


@pytest.mark.parametrize("value", ["0", "-1", "lots", "2.5", "9999"])
def test_serve_bad_workers_is_one_line(hello_dir: Path, capsys: pytest.CaptureFixture[str], value: str) -> None:
    assert main(["serve", str(hello_dir), "--no-watch", "--workers", value]) == 2
    err = _one_line_error(capsys)
    assert err == f"edgeruntime: error: --workers: expected a whole number from 1 to 256, or auto, got {value!r}\n"


@pytest.mark.parametrize("value", ["soon", "-1", "nan", "inf"])
def test_serve_bad_hang_timeout_is_one_line(
    hello_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("EDGERUNTIME_HANG_TIMEOUT_SEC", value)
    assert main(["serve", str(hello_dir), "--no-watch", "--workers", "2"]) == 2
    assert _one_line_error(capsys) == (
        f"edgeruntime: error: EDGERUNTIME_HANG_TIMEOUT_SEC={value!r}: expected seconds (0 or more; 0 turns the"
        " check off)\n"
    )


def test_the_hang_timeout_defaults_to_30_s_and_0_turns_it_off() -> None:
    assert hang_timeout_sec({}) == 30.0
    assert hang_timeout_sec({"EDGERUNTIME_HANG_TIMEOUT_SEC": " 0 "}) == 0.0
    assert hang_timeout_sec({"EDGERUNTIME_HANG_TIMEOUT_SEC": "2.5"}) == 2.5


def test_serve_bad_workers_in_config_names_the_file_and_key(
    hello_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = hello_dir.parent / "config.toml"
    config.write_text("[edge_runtime]\nworkers = 0\n")
    assert main(["serve", str(hello_dir), "--no-watch"]) == 2
    assert _one_line_error(capsys) == (
        f"edgeruntime: error: {config}: [edge_runtime] workers: expected a whole number from 1 to 256, or auto, got 0\n"
    )


def test_serve_bad_workers_in_a_subprocess_exits_2_without_traceback(hello_dir: Path) -> None:
    for value in ("0", "-1", "lots"):
        result = run_cli("serve", str(hello_dir), "--no-watch", "--workers", value)
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
        assert "--workers" in result.stderr and value in result.stderr


@pytest.mark.parametrize("value", ["x", "3", "3,", ",4", "0,1", "1,2"])
def test_a_serving_process_refuses_descriptors_that_are_not_its_sockets(
    hello_dir: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    # Run by hand (or given stdin and stdout), the internal option is one line and exit status 2.
    assert main(["serve", str(hello_dir), "--no-watch", "--serving-process", value]) == 2
    assert _one_line_error(capsys).startswith("edgeruntime: error: --serving-process: ")


def test_bad_flag_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["serve", "--port", "not-a-number"])
    assert info.value.code == 2
    assert "--port" in _one_line_error(capsys)


def test_serve_in_a_subprocess_exits_2_without_traceback(tmp_path: Path) -> None:
    result = run_cli("serve", str(tmp_path / "missing"))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "Traceback" not in result.stderr


def test_new_creates_a_function_that_serves(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    functions = tmp_path / "functions"
    assert main(["new", "greet-me", "--dir", str(functions)]) == 0
    assert (functions / "greet-me" / "index.py").is_file()
    assert main(["new", "greet-me", "--dir", str(functions)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["new", "_bad", "--dir", str(functions)]) == 2


async def test_new_function_answers(tmp_path: Path) -> None:
    from edgeruntime.testing import EdgeClient

    functions = tmp_path / "functions"
    assert main(["new", "greet-me", "--dir", str(functions)]) == 0
    async with EdgeClient(functions) as client:
        r = await client.invoke("greet-me", json={"name": "Ada"})
        assert r.json() == {"message": "Hello Ada!"}


def test_list(hello_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_function(hello_dir, "second", HELLO)
    (hello_dir.parent / "config.toml").write_text("[functions.second]\nverify_jwt = false\n")
    assert main(["list", str(hello_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("hello\thttp://127.0.0.1:54321/functions/v1/hello")
    assert "no verify_jwt" in lines[1]


def test_list_shows_a_function_with_a_syntax_error_as_not_serveable_with_its_line(
    hello_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ran = hello_dir.parent / "ran"
    broken = write_function(
        hello_dir, "broken", f"open({str(ran)!r}, 'w').close()\n\nasync def handler(req)\n    pass\n"
    )
    write_function(hello_dir, "imports", f"open({str(ran)!r}, 'w').close()\nimport does_not_exist\n")
    assert main(["list", str(hello_dir)]) == 0
    lines = dict(line.split("\t", 1) for line in capsys.readouterr().out.splitlines())
    assert lines["broken"] == (
        "http://127.0.0.1:54321/functions/v1/broken\tenabled, verify_jwt\t"
        f"not serveable: SyntaxError: expected ':' ({broken}, line 3)"
    )
    assert lines["hello"] == "http://127.0.0.1:54321/functions/v1/hello\tenabled, verify_jwt"
    # Only importing finds an import error, and listing imports nothing (no function code runs).
    assert lines["imports"] == "http://127.0.0.1:54321/functions/v1/imports\tenabled, verify_jwt"
    assert not ran.exists()


@pytest.mark.e2e
def test_list_and_serve_skip_a_symlink_loop_with_a_warning_naming_it(hello_dir: Path) -> None:
    (hello_dir / "loop1").symlink_to("loop1")  # `ln -s loop1 functions/loop1`
    warning = f"skipping function directory {hello_dir.resolve() / 'loop1'}: cannot be read"
    listed = run_cli("list", str(hello_dir))
    assert listed.returncode == 0, listed.stderr
    assert [line.split("\t")[0] for line in listed.stdout.splitlines()] == ["hello"]
    assert warning in listed.stderr and "Traceback" not in listed.stderr
    with ServerProcess(hello_dir, "--no-watch") as server:
        assert httpx.get(server.url("hello"), headers=SERVICE_ROLE).status_code == 200
    assert warning in server.output and "Traceback" not in server.output


def test_keys(hello_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", str(hello_dir), "--anon"]) == 0
    assert capsys.readouterr().out.strip() == KEYS.anon_key
    assert main(["keys", str(hello_dir)]) == 0
    out = capsys.readouterr().out
    assert KEYS.service_role_key in out and "sb_publishable_" in out and KEYS.jwt_secret in out


def test_keys_list_and_invoke_do_not_repeat_env_warnings(hello_dir: Path) -> None:
    # A .env name the runtime drops, a .env line it cannot parse and a secret whose variable is
    # unset: `serve` warns about all three.
    (hello_dir / ".env").write_text("SUPABASE_FOO=1\nOTHER=2\nNOT A STATEMENT\n")
    (hello_dir.parent / "config.toml").write_text('[edge_runtime.secrets]\nAPI_KEY = "env(ER_TEST_UNSET_VAR)"\n')
    env: dict[str, str] = {}  # ER_TEST_UNSET_VAR stays unset
    for _ in range(2):  # e.g. `$(edgeruntime keys --anon)` in every curl of a script
        r = run_cli("keys", str(hello_dir), "--anon", env=env)
        assert (r.returncode, r.stdout.strip(), r.stderr) == (0, KEYS.anon_key, "")
    r = run_cli("keys", str(hello_dir), "--json", env=env)
    assert r.returncode == 0 and r.stderr == ""
    r = run_cli("list", str(hello_dir), env=env)
    assert r.returncode == 0 and r.stderr == "" and r.stdout.startswith("hello\t")
    r = run_cli("invoke", "hello", "--directory", str(hello_dir), "--url", f"http://127.0.0.1:{free_port()}", env=env)
    assert r.returncode == 2 and r.stderr.startswith("edgeruntime: error: cannot reach")
    assert "SUPABASE_FOO" not in r.stderr and "ER_TEST_UNSET_VAR" not in r.stderr
    # `serve` still reports them, once each (here it then stops: its port is taken).
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        r = run_cli("serve", str(hello_dir), "--port", str(taken.getsockname()[1]), env=env)
    assert r.returncode == 2 and "is already in use" in r.stderr
    assert r.stderr.count("Env name cannot start with SUPABASE_, skipping: SUPABASE_FOO") == 1
    assert r.stderr.count("[edge_runtime.secrets] API_KEY: env(ER_TEST_UNSET_VAR) is not set, skipping") == 1
    assert r.stderr.count(f"{hello_dir / '.env'}: line 3: cannot be parsed (expected NAME=VALUE), skipping it") == 1


@pytest.mark.e2e
def test_invoke_against_a_running_server(hello_dir: Path) -> None:
    with ServerProcess(hello_dir, "--no-watch") as server:
        ok = run_cli("invoke", "hello", "--data", '{"a": 1}', "--url", server.base_url, "--directory", str(hello_dir))
        assert ok.returncode == 0, ok.stderr
        assert '"path":"/hello"' in ok.stdout
        sub = run_cli("invoke", "hello", "--path", "sub", "--url", server.base_url, "--directory", str(hello_dir))
        assert sub.returncode == 0, sub.stderr
        assert '"path":"/hello/sub"' in sub.stdout
        unknown = run_cli("invoke", "nope", "--url", server.base_url, "--directory", str(hello_dir))
        assert unknown.returncode == 2
        assert "function nope not found" in unknown.stderr
        bad = run_cli("invoke", "hello", "--data", "{not json", "--url", server.base_url)
        assert bad.returncode == 2 and "--data is not valid JSON" in bad.stderr


@pytest.mark.parametrize(
    ("path", "sent"),
    [
        ("", "/functions/v1/hello"),
        ("/sub", "/functions/v1/hello/sub"),
        ("sub", "/functions/v1/hello/sub"),
        ("sub/deeper?a=1", "/functions/v1/hello/sub/deeper?a=1"),
        ("?a=1", "/functions/v1/hello?a=1"),
    ],
    ids=["none", "slash", "no-slash", "no-slash-query", "query"],
)
def test_invoke_path_is_below_the_function_with_or_without_a_leading_slash(
    hello_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, path: str, sent: str
) -> None:
    import httpx

    requested: list[str] = []

    def request(method: str, url: str, **options: object) -> httpx.Response:
        requested.append(url)
        return httpx.Response(200, text="ok")

    monkeypatch.setattr(httpx, "request", request)
    base = "http://127.0.0.1:1"
    assert main(["invoke", "hello", "--directory", str(hello_dir), "--url", base, "--path", path]) == 0
    assert requested == [f"{base}{sent}"]
    assert capsys.readouterr().out == "ok\n"


def test_invoke_without_a_server(hello_dir: Path) -> None:
    result = run_cli("invoke", "hello", "--url", f"http://127.0.0.1:{free_port()}", "--directory", str(hello_dir))
    assert result.returncode == 2
    assert "cannot reach" in result.stderr


@pytest.mark.parametrize(
    ("option", "value", "line"),
    [
        ("--url", "http://[::1", "--url 'http://[::1': Invalid port: ':1'"),
        ("--url", "ftp://x", "--url 'ftp://x': expected http://HOST:PORT or https://HOST:PORT"),
        ("--url", "http://127.0.0.1:99999", "--url 'http://127.0.0.1:99999': expected http://HOST:PORT or https://"),
        ("--header", "X-Ü:ü", "--header 'X-Ü:ü': 'X-Ü' is not a header name"),
        ("--header", "X-Ok:ü", "--header 'X-Ok:ü': the value must be printable ASCII"),
        ("--header", "X Y:1", "--header 'X Y:1': 'X Y' is not a header name"),
        ("--method", "GÉT", "--method 'GÉT': not an HTTP method"),
    ],
)
def test_invoke_with_a_bad_url_header_or_method_is_one_line_naming_it(
    hello_dir: Path, capsys: pytest.CaptureFixture[str], option: str, value: str, line: str
) -> None:
    url = ["--url", f"http://127.0.0.1:{free_port()}"] if option != "--url" else []
    assert main(["invoke", "hello", "--directory", str(hello_dir), *url, option, value]) == 2
    assert _one_line_error(capsys).startswith(f"edgeruntime: error: {line}")


def test_main_turns_the_collector_back_on(hello_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import gc

    gc.disable()  # as `python -m edgeruntime` does before importing the CLI
    try:
        assert main(["list", str(hello_dir)]) == 0
        assert gc.isenabled()
        gc.disable()
        assert main(["serve", str(tmp_path / "nope")]) == 2  # serve failing before it listens
        assert gc.isenabled()
    finally:
        gc.enable()


def test_a_command_parses_the_same_with_only_its_parser_built() -> None:
    from edgeruntime.serving.cli import build_parser

    for argv in (
        ["serve", "fns", "--port", "8000", "--server", "uvicorn", "--limit", "a=1", "--no-watch"],
        ["jobs", "retry", "7", "--json"],
        ["cron", "run", "nightly", "-d", "fns"],
        ["keys", "--anon"],
    ):
        assert vars(build_parser(argv[0]).parse_args(argv)) == vars(build_parser().parse_args(argv))
    with pytest.raises(SystemExit):  # the other commands were never built
        build_parser("serve").parse_args(["list"])


def test_serve_defaults_to_functions_on_127_0_0_1_port_54321_with_the_supabase_banner(hello_dir: Path) -> None:
    """DESIGN 3: `edgeruntime serve [DIR]` (default `functions`), default `--host 127.0.0.1 --port
    54321`, and the banner `Serving functions on http://127.0.0.1:54321/functions/v1/<function-name>`
    then ` - <url>` per function."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", 54321))
        except OSError:
            pytest.skip("port 54321 is taken on this machine")
    log = hello_dir.parent / "serve-default.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgeruntime", "serve", "--no-watch"],
            cwd=hello_dir.parent,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            deadline = time.monotonic() + 30
            health = None
            while time.monotonic() < deadline and proc.poll() is None and health is None:
                try:
                    health = httpx.get("http://127.0.0.1:54321/_internal/health", timeout=1)
                except httpx.HTTPError:
                    time.sleep(0.05)
            assert health is not None and health.json() == {"message": "ok"}, log.read_text()
            r = httpx.get("http://127.0.0.1:54321/functions/v1/hello", headers=SERVICE_ROLE, timeout=10)
            assert (r.status_code, r.json()["path"]) == (200, "/hello")
        finally:
            reap(proc)
    lines = log.read_text().splitlines()
    at = lines.index("Serving functions on http://127.0.0.1:54321/functions/v1/<function-name>")
    assert lines[at + 1] == " - http://127.0.0.1:54321/functions/v1/hello"
