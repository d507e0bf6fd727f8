"""The env a function sees: injected variables, precedence, reserved names, os.environ."""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import socket
from pathlib import Path

import httpx
import pytest

from edgeruntime.config.env import applied_env, build_env
from edgeruntime.config.keys import PUBLISHABLE_KEY, SECRET_KEY
from edgeruntime.config.settings import Settings
from edgeruntime.exceptions import ConfigError
from edgeruntime.limits import Isolation
from edgeruntime.serving.build import process_environ
from edgeruntime.serving.cli import main
from edgeruntime.testing import EdgeClient, load_function
from tests.helpers import KEYS, SERVICE_ROLE, ServerProcess, free_port, run_cli, write_function

ENV = """
import os
from starlette.requests import Request
from starlette.responses import JSONResponse
from edgeruntime import Deno, serve

async def handler(req: Request) -> JSONResponse:
    names = req.query_params.get("names", "").split(",")
    return JSONResponse({
        "deno": {n: Deno.env.get(n) for n in names},
        "os": {n: os.environ.get(n) for n in names},
    })

serve(handler)
"""

INJECTED = [
    "SUPABASE_URL",
    "SUPABASE_ANON_KEY",
    "SUPABASE_SERVICE_ROLE_KEY",
    "SUPABASE_JWKS",
    "SUPABASE_PUBLISHABLE_KEYS",
    "SUPABASE_SECRET_KEYS",
]


@pytest.fixture
def env_dir(functions_dir: Path) -> Path:
    write_function(functions_dir, "env", ENV)
    return functions_dir


def clean_environ(**extra: str) -> dict[str, str]:
    """The test process's env without any SUPABASE_ or test variables that could leak in."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SUPABASE_", "ER_TEST_"))}
    return {**base, **extra}


async def read_env(client: EdgeClient, *names: str) -> dict[str, str | None]:
    r = await client.invoke("env", method="GET", params={"names": ",".join(names)})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["deno"] == body["os"], "os.environ and Deno.env disagree"
    deno: dict[str, str | None] = body["deno"]
    return deno


async def test_injected_variables(env_dir: Path) -> None:
    async with EdgeClient(env_dir, environ=clean_environ()) as client:
        env = await read_env(client, *INJECTED, "SUPABASE_DB_URL")
    assert env["SUPABASE_URL"] == "http://127.0.0.1:54321"
    assert env["SUPABASE_ANON_KEY"] == KEYS.anon_key
    assert env["SUPABASE_SERVICE_ROLE_KEY"] == KEYS.service_role_key
    assert json.loads(env["SUPABASE_PUBLISHABLE_KEYS"] or "") == {"default": PUBLISHABLE_KEY}
    assert json.loads(env["SUPABASE_SECRET_KEYS"] or "") == {"default": SECRET_KEY}
    assert json.loads(env["SUPABASE_JWKS"] or "")["keys"][0]["kty"] == "oct"
    assert env["SUPABASE_DB_URL"] is None  # only when configured


async def test_injected_values_set_in_the_server_env_win(env_dir: Path) -> None:
    environ = clean_environ(SUPABASE_URL="http://127.0.0.1:9", SUPABASE_DB_URL="postgresql://db/x")
    async with EdgeClient(env_dir, environ=environ) as client:
        env = await read_env(client, "SUPABASE_URL", "SUPABASE_DB_URL")
    assert env == {"SUPABASE_URL": "http://127.0.0.1:9", "SUPABASE_DB_URL": "postgresql://db/x"}


def write_project(env_dir: Path, *, secrets: str = "", dotenv: str | None = None) -> None:
    if secrets:
        (env_dir.parent / "config.toml").write_text(f"[edge_runtime.secrets]\n{secrets}\n")
    if dotenv is not None:
        (env_dir / ".env").write_text(dotenv)


async def test_secrets_override_process_env(env_dir: Path) -> None:
    write_project(env_dir, secrets='ER_TEST_A = "from-secrets"')
    async with EdgeClient(env_dir, environ=clean_environ(ER_TEST_A="from-process")) as client:
        assert await read_env(client, "ER_TEST_A") == {"ER_TEST_A": "from-secrets"}


async def test_env_file_overrides_secrets(env_dir: Path) -> None:
    write_project(
        env_dir, secrets='ER_TEST_A = "from-secrets"\nER_TEST_B = "only-secrets"', dotenv="ER_TEST_A=dotenv\n"
    )
    async with EdgeClient(env_dir, environ=clean_environ(ER_TEST_A="process", ER_TEST_B="process")) as client:
        assert await read_env(client, "ER_TEST_A", "ER_TEST_B") == {"ER_TEST_A": "dotenv", "ER_TEST_B": "only-secrets"}


async def test_secret_env_references(env_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_project(env_dir, secrets='er_test_lower = "env(ER_TEST_SOURCE)"\nER_TEST_UNSET = "env(ER_TEST_NOPE)"')
    async with EdgeClient(env_dir, environ=clean_environ(ER_TEST_SOURCE="resolved")) as client:
        # Names are upper-cased (as the CLI does); an unset reference leaves the secret unset.
        env = await read_env(client, "ER_TEST_LOWER", "ER_TEST_UNSET")
    assert env == {"ER_TEST_LOWER": "resolved", "ER_TEST_UNSET": None}
    assert "ER_TEST_UNSET: env(ER_TEST_NOPE) is not set, skipping" in caplog.text


async def test_env_file_loaded_automatically(env_dir: Path) -> None:
    write_project(env_dir, dotenv="ER_TEST_A=1\n# a comment\nexport ER_TEST_B='quoted value'\n")
    async with EdgeClient(env_dir, environ=clean_environ()) as client:
        assert await read_env(client, "ER_TEST_A", "ER_TEST_B") == {"ER_TEST_A": "1", "ER_TEST_B": "quoted value"}


async def test_env_file_option_replaces_dotenv(env_dir: Path, tmp_path: Path) -> None:
    write_project(env_dir, dotenv="ER_TEST_A=dotenv\nER_TEST_B=dotenv-only\n")
    other = tmp_path / "prod.env"
    other.write_text("ER_TEST_A=env-file\n")
    async with EdgeClient(env_dir, environ=clean_environ(), env_file=other) as client:
        # --env-file replaces functions/.env (the Supabase CLI reads one or the other).
        assert await read_env(client, "ER_TEST_A", "ER_TEST_B") == {"ER_TEST_A": "env-file", "ER_TEST_B": None}


def test_missing_env_file_is_an_error(env_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"env file .*missing\.env does not exist"):
        Settings.build(env_dir, env_file=tmp_path / "missing.env")


async def test_supabase_names_dropped_with_one_warning_each(env_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_project(
        env_dir,
        secrets='SUPABASE_URL = "http://evil"\nSUPABASE_FOO = "x"',
        dotenv="SUPABASE_ANON_KEY=mine\nSUPABASE_FOO=y\nER_TEST_OK=1\n",
    )
    caplog.set_level(logging.WARNING, "edgeruntime")
    async with EdgeClient(env_dir, environ=clean_environ()) as client:
        env = await read_env(client, "SUPABASE_URL", "SUPABASE_ANON_KEY", "SUPABASE_FOO", "ER_TEST_OK")
    assert env == {
        "SUPABASE_URL": "http://127.0.0.1:54321",
        "SUPABASE_ANON_KEY": KEYS.anon_key,
        "SUPABASE_FOO": None,
        "ER_TEST_OK": "1",
    }
    warnings = [r.getMessage() for r in caplog.records if "Env name cannot start with" in r.getMessage()]
    assert sorted(warnings) == [
        "Env name cannot start with SUPABASE_, skipping: SUPABASE_ANON_KEY",
        "Env name cannot start with SUPABASE_, skipping: SUPABASE_FOO",
        "Env name cannot start with SUPABASE_, skipping: SUPABASE_URL",
    ]


@pytest.mark.parametrize("isolation", ["inline", "process"])
def test_a_statement_the_env_file_cannot_parse_is_one_warning_naming_the_file_and_line(
    env_dir: Path, caplog: pytest.LogCaptureFixture, isolation: Isolation
) -> None:
    env_file = env_dir / ".env"
    env_file.write_text(
        "ER_TEST_A=1\n\n\nER_TEST_TYPO value\nER_TEST_B=2\n# a comment\nER_TEST_C='not closed\nER_TEST_D=4\n"
    )
    caplog.set_level(logging.WARNING)  # every logger's: python-dotenv's own line would be one of them
    settings = Settings.build(env_dir, environ=clean_environ(), isolation=isolation)
    # Once each, with the line the statement is on (the file is read twice under process isolation).
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        f"{env_file}: line 4: cannot be parsed (expected NAME=VALUE), skipping it",
        f"{env_file}: line 7: cannot be parsed (expected NAME=VALUE), skipping it",
    ]
    # The rest of the file is loaded.
    names = ("ER_TEST_A", "ER_TEST_B", "ER_TEST_C", "ER_TEST_D")
    assert {name: settings.env.get(name) for name in names} == {
        "ER_TEST_A": "1",
        "ER_TEST_B": "2",
        "ER_TEST_C": None,
        "ER_TEST_D": "4",
    }
    # Commands that only read the keys or the function list say nothing about the env.
    caplog.clear()
    Settings.build(env_dir, environ=clean_environ(), isolation=isolation, warn_env=False)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_internal_names_never_forwarded(tmp_path: Path) -> None:
    env = build_env(
        environ={"SUPABASE_INTERNAL_DEBUG": "true", "PATH": "/bin"},
        functions_dir=tmp_path,
        keys=KEYS,
        base_url="http://127.0.0.1:1",
    )
    assert "SUPABASE_INTERNAL_DEBUG" not in env
    assert env["PATH"] == "/bin"


# -- os.environ -----------------------------------------------------------------------------------


async def test_edge_client_applies_and_restores_os_environ(env_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ER_TEST_PROCESS", "kept")
    monkeypatch.delenv("SUPABASE_URL", raising=False)
    write_project(env_dir, dotenv="ER_TEST_DOTENV=from-dotenv\nER_TEST_PROCESS=overridden\n")
    before = dict(os.environ)
    async with EdgeClient(env_dir) as client:
        assert os.environ["ER_TEST_DOTENV"] == "from-dotenv"
        assert os.environ["ER_TEST_PROCESS"] == "overridden"
        assert os.environ["SUPABASE_URL"] == "http://127.0.0.1:54321"
        env = await read_env(client, "ER_TEST_DOTENV", "SUPABASE_ANON_KEY")
        assert env["ER_TEST_DOTENV"] == "from-dotenv"
    assert dict(os.environ) == before


async def test_edge_client_restores_os_environ_after_an_error(env_dir: Path) -> None:
    write_project(env_dir, dotenv="ER_TEST_LEAK=1\n")
    before = dict(os.environ)
    with pytest.raises(RuntimeError, match="boom"):
        async with EdgeClient(env_dir):
            assert os.environ["ER_TEST_LEAK"] == "1"
            raise RuntimeError("boom")
    assert dict(os.environ) == before


def client_project(root: Path, name: str) -> Path:
    """A functions directory whose .env says which client it is (`ER_TEST_WHO`) and has a name of its own."""
    functions = root / name / "functions"
    write_function(functions, "env", ENV)
    (functions / ".env").write_text(f"ER_TEST_WHO={name}\nER_TEST_ONLY_{name.upper()}=1\n")
    return functions


@pytest.mark.parametrize("exit_order", list(itertools.permutations(range(3))), ids=str)
async def test_edge_clients_exited_in_any_order_leave_os_environ_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exit_order: tuple[int, ...]
) -> None:
    """Open together (two fixtures, exit stacks, concurrent tasks), the one entered last that is
    still open sets os.environ; when all have exited it is what it was, with the test's own edits."""
    monkeypatch.delenv("SUPABASE_URL", raising=False)
    before = dict(os.environ)
    clients: list[EdgeClient] = []
    stacks: list[contextlib.AsyncExitStack] = []
    try:
        for index, name in enumerate("abc"):
            # Built while the others are open: from the process's environment, not their functions' env.
            client = EdgeClient(client_project(tmp_path, name), port=54000 + index)
            assert client.settings.env["SUPABASE_URL"] == f"http://127.0.0.1:{54000 + index}"
            assert {n for n in client.settings.env if n.startswith("ER_TEST_ONLY_")} == {f"ER_TEST_ONLY_{name.upper()}"}
            stack = contextlib.AsyncExitStack()
            stacks.append(stack)
            await stack.enter_async_context(client)
            clients.append(client)
            assert dict(os.environ) == client.settings.env
        monkeypatch.setenv("ER_TEST_MINE", "mine")  # the test's own, a name no client sets
        still_open = [0, 1, 2]
        for index in exit_order:
            await stacks[index].aclose()
            still_open.remove(index)
            if still_open:
                top = clients[still_open[-1]]
                assert dict(os.environ) == {**top.settings.env, "ER_TEST_MINE": "mine"}
                env = await read_env(top, "ER_TEST_WHO", "SUPABASE_URL")  # os.environ agrees with Deno.env
                assert env == {"ER_TEST_WHO": "abc"[still_open[-1]], "SUPABASE_URL": top.settings.base_url}
    finally:
        for stack in stacks:
            await stack.aclose()
    assert dict(os.environ) == {**before, "ER_TEST_MINE": "mine"}


@pytest.mark.parametrize("first_out", ["reconfigured", "later"])
async def test_an_app_reconfigured_under_a_later_one_gets_its_new_env_when_that_one_exits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, first_out: str
) -> None:
    monkeypatch.delenv("SUPABASE_URL", raising=False)
    before = dict(os.environ)
    functions = client_project(tmp_path, "a")
    async with contextlib.AsyncExitStack() as outer, contextlib.AsyncExitStack() as inner:
        a = await outer.enter_async_context(EdgeClient(functions, port=54000))
        b = await inner.enter_async_context(EdgeClient(client_project(tmp_path, "b"), port=54001))
        (functions / ".env").write_text("ER_TEST_WHO=a2\n")  # .env edited while serving
        a.app.reconfigure(Settings.build(functions, port=54000, environ=process_environ()))
        assert a.app.settings.env["ER_TEST_WHO"] == "a2"
        assert dict(os.environ) == b.settings.env
        if first_out == "later":
            await inner.aclose()
            assert dict(os.environ) == a.app.settings.env
        else:
            await outer.aclose()
            assert dict(os.environ) == b.settings.env
    assert dict(os.environ) == before


async def test_load_function_while_a_client_is_open_gets_the_process_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SUPABASE_URL", raising=False)
    before = dict(os.environ)
    async with EdgeClient(client_project(tmp_path, "a"), port=54001) as client:
        fn = load_function(client_project(tmp_path, "b") / "env")
        assert fn.worker.env["ER_TEST_WHO"] == "b" and "ER_TEST_ONLY_A" not in fn.worker.env
        assert fn.worker.env["SUPABASE_URL"] == "http://127.0.0.1:54321"  # not the open client's
        assert dict(os.environ) == client.settings.env
    assert dict(os.environ) == before


async def test_edge_client_that_fails_to_open_leaves_os_environ_as_it_was(env_dir: Path) -> None:
    write_project(env_dir, dotenv="ER_TEST_LEAK=1\n")
    before = dict(os.environ)
    refused = f"postgresql://postgres@127.0.0.1:{free_port()}/none"  # nothing listens there
    with pytest.raises(ConfigError, match="connection failed"):
        async with EdgeClient(env_dir, database_url=refused):
            pass
    assert dict(os.environ) == before


def test_applied_env_is_exact() -> None:
    target = {"KEEP": "1", "CHANGE": "old", "DROP": "x"}
    with applied_env({"KEEP": "1", "CHANGE": "new", "ADD": "y"}, target):
        assert target == {"KEEP": "1", "CHANGE": "new", "ADD": "y"}
    assert target == {"KEEP": "1", "CHANGE": "old", "DROP": "x"}


def test_load_function_sees_the_serve_env(env_dir: Path) -> None:
    write_project(env_dir, dotenv="ER_TEST_A=from-dotenv\n")
    fn = load_function(env_dir / "env")
    assert fn.worker.env["ER_TEST_A"] == "from-dotenv"
    assert fn.worker.env["SUPABASE_ANON_KEY"] == KEYS.anon_key


@pytest.mark.e2e
def test_serve_gives_os_environ_the_function_env(env_dir: Path) -> None:
    write_project(env_dir, secrets='ER_TEST_SECRET = "s"', dotenv="ER_TEST_DOTENV=d\nSUPABASE_X=dropped\n")
    env = {"ER_TEST_PROCESS": "p"}
    with ServerProcess(env_dir, "--no-watch", env=env) as server:
        names = "ER_TEST_SECRET,ER_TEST_DOTENV,ER_TEST_PROCESS,SUPABASE_URL,SUPABASE_X"
        r = httpx.get(server.url("env"), params={"names": names}, headers=SERVICE_ROLE, timeout=10)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["deno"] == body["os"]
        assert body["os"] == {
            "ER_TEST_SECRET": "s",
            "ER_TEST_DOTENV": "d",
            "ER_TEST_PROCESS": "p",
            "SUPABASE_URL": server.base_url if "SUPABASE_URL" not in os.environ else os.environ["SUPABASE_URL"],
            "SUPABASE_X": None,
        }
        server.terminate()
    assert "Env name cannot start with SUPABASE_, skipping: SUPABASE_X" in server.output


DUMP = """
from starlette.requests import Request
from starlette.responses import JSONResponse
from edgeruntime import Deno, serve

async def handler(req: Request) -> JSONResponse:
    return JSONResponse(Deno.env.to_object())

serve(handler)
"""


@pytest.mark.e2e
async def test_edge_client_sees_exactly_the_env_serve_gives(functions_dir: Path) -> None:
    write_function(functions_dir, "dump", DUMP)
    write_project(functions_dir, secrets='ER_TEST_SECRET = "s"', dotenv="ER_TEST_DOTENV=d\n")
    extra = {"PYTHONUNBUFFERED": "1", "ER_TEST_PROCESS": "p"}
    with ServerProcess(functions_dir, "--no-watch", env=extra) as server:
        async with httpx.AsyncClient(timeout=10) as http:
            served = (await http.get(server.url("dump"), headers=SERVICE_ROLE)).json()
        server.terminate()
    async with EdgeClient(functions_dir, port=server.port, environ={**os.environ, **extra}) as client:
        tested = (await client.invoke("dump", method="GET")).json()
    assert tested == served
    assert served["ER_TEST_DOTENV"] == "d" and served["ER_TEST_SECRET"] == "s"


def test_serve_restores_os_environ_when_it_ends(env_dir: Path) -> None:
    write_project(env_dir, dotenv="ER_TEST_SERVE_LEAK=1\n")
    before = dict(os.environ)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # In-process: the server starts, applies the function env, fails to bind and returns.
        assert main(["serve", str(env_dir), "--port", str(port), "--no-watch"]) == 2
    assert dict(os.environ) == before


@pytest.mark.parametrize(
    ("database_url", "expected"),
    [
        ("postgresql://postgres@127.0.0.1:5432/test", "postgresql://postgres@127.0.0.1:5432/test"),
        ("sqlite:///tmp/x.db", None),
        (None, None),
    ],
)
def test_supabase_db_url_from_a_postgres_database_url(
    env_dir: Path, database_url: str | None, expected: str | None
) -> None:
    # Settings only (no app): the jobs store never connects here.
    settings = Settings.build(env_dir, environ=clean_environ(), database_url=database_url)
    assert settings.env.get("SUPABASE_DB_URL") == expected
    explicit = Settings.build(
        env_dir, environ=clean_environ(SUPABASE_DB_URL="postgresql://mine"), database_url=database_url
    )
    assert explicit.env["SUPABASE_DB_URL"] == "postgresql://mine"


@pytest.mark.parametrize(
    ("dotenv", "expected"),
    [
        (b"'A=B'=x\n", "'A=B': an env name must not contain '='"),
        (b'ER_TEST_NUL="a\x00b"\n', "'ER_TEST_NUL': an env value must not contain a NUL character"),
    ],
    ids=["equals-in-name", "nul-in-value"],
)
def test_env_file_names_and_values_no_environment_holds_are_refused(
    env_dir: Path, dotenv: bytes, expected: str
) -> None:
    """Refused at load, naming the file and the key (not a traceback in apply_env, nor every
    request 503 under process isolation)."""
    env_file = env_dir / ".env"
    env_file.write_bytes(dotenv)
    isolations: tuple[Isolation, ...] = ("inline", "process")
    for isolation in isolations:
        with pytest.raises(ConfigError) as info:
            Settings.build(env_dir, environ=clean_environ(), isolation=isolation)
        assert str(info.value) == f"env file {env_file}: {expected}"


def test_serve_refuses_an_env_file_name_with_equals_in_one_line(env_dir: Path) -> None:
    (env_dir / ".env").write_text("'A=B'=x\n")
    result = run_cli("serve", str(env_dir), "--port", "1", "--no-watch", timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"edgeruntime: error: env file {env_dir / '.env'}: 'A=B': an env name must not contain '='"
    ]
