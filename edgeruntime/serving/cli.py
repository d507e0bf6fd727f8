"""The ``edgeruntime`` command."""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import json
import logging
import os
import re
import signal
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from edgeruntime import __version__
from edgeruntime.config.settings import DEFAULT_HOST, DEFAULT_PORT, Settings, listen_host, parse_limit_options
from edgeruntime.exceptions import EdgeRuntimeError, UsageError

if TYPE_CHECKING:
    from edgeruntime.serving.build import BuiltApp
    from edgeruntime.serving.config_reload import ConfigReloader

__all__ = ["main"]

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _add_project_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="config.toml (default: next to the functions directory)")
    p.add_argument("--env-file", metavar="FILE", help="env file (default: <functions dir>/.env)")


def _add_serve(sub: Any) -> None:
    serve = sub.add_parser("serve", help="serve every function of a directory")
    serve.add_argument("directory", nargs="?", default="functions", help="functions directory (default: functions)")
    serve.add_argument("--host", default=DEFAULT_HOST)
    serve.add_argument("--port", type=int, default=DEFAULT_PORT)
    serve.add_argument("--no-watch", action="store_true", help="do not reload functions when their files change")
    serve.add_argument("--no-verify-jwt", action="store_true", help="turn JWT verification off for every function")
    _add_project_options(serve)
    serve.add_argument("--database-url", metavar="URL", help="sqlite:///path or postgresql://... for jobs and runs")
    serve.add_argument("--policy", choices=("per_worker", "per_request"))
    serve.add_argument("--isolation", choices=("inline", "process"))
    serve.add_argument(
        "--sandbox",
        choices=("auto", "bwrap", "uid", "basic", "none"),
        help="what wraps each worker process under process isolation (default: auto)",
    )
    serve.add_argument("--tier", choices=("free", "pro"), help="hosted plan limits (free: 150 s wall clock)")
    serve.add_argument(
        "--limit",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set a limit for every function, e.g. --limit wall_clock_limit_sec=60 (repeatable)",
    )
    serve.add_argument("--log-format", choices=("text", "json"), default="text")
    serve.add_argument(
        "--graceful-exit-timeout",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="how long shutdown waits for background work (default 15)",
    )
    serve.add_argument(
        "--keep-alive-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="close an idle connection after this long (default 5, or [edge_runtime] keep_alive_timeout_sec)",
    )
    serve.add_argument(
        "--server",
        choices=("auto", "uvicorn", "hypercorn"),
        default="auto",
        help="auto (default): uvicorn with uvloop and httptools when installed, else hypercorn",
    )
    serve.add_argument(
        "--workers",
        metavar="N",
        default=None,
        help="serving processes behind the one port: a number, or auto (one per CPU); "
        "default 1, or [edge_runtime] workers",
    )
    # Internal: how the supervisor of --workers N starts each serving process (see serving/supervisor.py).
    serve.add_argument("--serving-process", metavar="LISTEN_FD,CONTROL_FD", help=argparse.SUPPRESS)
    serve.add_argument(
        "--inspect",
        nargs="?",
        const="",
        metavar="HOST:PORT",
        help="listen for a debugger (debugpy; default 127.0.0.1:9229, or [edge_runtime] inspector_port)",
    )
    serve.add_argument(
        "--inspect-wait", action="store_true", help="like --inspect, and wait for the debugger to attach before serving"
    )


def _add_new(sub: Any) -> None:
    new = sub.add_parser("new", help="create a function")
    new.add_argument("name")
    new.add_argument("--dir", default="functions", help="functions directory (default: functions)")
    new.add_argument(
        "--template",
        default="basic",
        help="basic (default), or job: a background job with a key check, a Supabase client and an audit log",
    )


def _add_list(sub: Any) -> None:
    ls = sub.add_parser("list", help="list the functions of a directory")
    ls.add_argument("directory", nargs="?", default="functions")
    _add_project_options(ls)


def _add_invoke(sub: Any) -> None:
    invoke = sub.add_parser("invoke", help="call a function on a running server")
    invoke.add_argument("name")
    invoke.add_argument("--data", default=None, help="JSON request body")
    invoke.add_argument("--method", default="POST")
    invoke.add_argument(
        "--path", default="", help="path below the function, e.g. /sub or sub (both: NAME/sub); ?k=v: a query"
    )
    invoke.add_argument("--header", action="append", default=[], metavar="NAME:VALUE")
    invoke.add_argument("--url", default=f"http://{DEFAULT_HOST}:{DEFAULT_PORT}", help="server base URL")
    invoke.add_argument("--key", choices=("service_role", "anon", "none"), default="service_role")
    invoke.add_argument("--directory", default="functions", help="functions directory (for its keys)")
    _add_project_options(invoke)


def _add_keys(sub: Any) -> None:
    keys = sub.add_parser("keys", help="print the keys and JWT secret in use")
    keys.add_argument("directory", nargs="?", default="functions")
    keys.add_argument("--anon", action="store_true", help="print only the anon key")
    keys.add_argument("--service-role", action="store_true", help="print only the service role key")
    keys.add_argument("--json", action="store_true")
    _add_project_options(keys)


def _add_jobs(sub: Any) -> None:
    from edgeruntime.serving import jobs_cli  # `jobs` and `cron` subcommands

    jobs_cli.add_commands(sub, _add_project_options)


#: Command → what adds its subparser (`jobs` and `cron` come together), in help order.
_SUBPARSERS: dict[str, Callable[[Any], None]] = {
    "serve": _add_serve,
    "new": _add_new,
    "list": _add_list,
    "invoke": _add_invoke,
    "keys": _add_keys,
    "jobs": _add_jobs,
    "cron": _add_jobs,
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or of `command` alone.

    Building a subparser costs more than parsing: `main` builds only the one it runs.
    """
    parser = _Parser(prog="edgeruntime", description="Run Supabase-style edge functions written in Python.")
    parser.add_argument("--version", action="version", version=f"edgeruntime {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    adders = [_SUBPARSERS[command]] if command in _SUBPARSERS else dict.fromkeys(_SUBPARSERS.values())
    for add in adders:
        add(sub)
    return parser


def _settings(args: argparse.Namespace, directory: str, **options: Any) -> Settings:
    """The project's settings. Only `serve` warns about the functions' env (it runs them, and says
    so once at start); `keys`, `list` and `invoke` pass ``warn_env=False``, so a `$(edgeruntime
    keys --anon)` in a script does not repeat those lines on every call."""
    return Settings.build(
        directory,
        config_path=getattr(args, "config", None),
        env_file=getattr(args, "env_file", None),
        **options,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from edgeruntime.core.logs import AccessLog, configure_logging
    from edgeruntime.serving.build import build_app
    from edgeruntime.serving.server import check_host, check_port, resolve_server

    if not 0 < args.port < 65536:
        raise UsageError(f"--port: {args.port} is not a TCP port")
    if not args.host.strip():  # the empty address binds every interface: that is asked for by name
        raise UsageError(
            f"--host: expected an address or host name to listen on, got {args.host!r}; "
            "to listen on every interface, pass --host 0.0.0.0 (or --host :: for IPv6 too)"
        )
    host = listen_host(args.host)
    if not args.serving_process:  # (one of several serves on its supervisor's socket: checked there)
        check_host(host, args.host)  # before anything says what serving there would mean (the demo keys' warning)
    inherited = _serving_process_sockets(args.serving_process) if args.serving_process else None
    server = resolve_server(args.server)
    # Before anything can log: resolving the settings warns about the env, in the chosen format.
    # Serving processes of several share the output: their lines are written whole.
    log_buffer = configure_logging(args.log_format, shared=inherited is not None)
    # The server's own environment: inline functions' env replaces os.environ while serving, and
    # an edit of config.toml or .env is resolved again against this one.
    server_environ = dict(os.environ)
    serve_options: dict[str, Any] = dict(
        environ=server_environ,
        host=host,
        port=args.port,
        no_verify_jwt=args.no_verify_jwt,
        database_url=args.database_url,
        policy=args.policy,
        isolation=args.isolation,
        sandbox=args.sandbox,
        tier=args.tier,
        limits=parse_limit_options(args.limit),
        watch=not args.no_watch,
        log_format=args.log_format,
        graceful_exit_timeout_sec=args.graceful_exit_timeout,
        keep_alive_timeout_sec=args.keep_alive_timeout,
        server=server,
        workers=args.workers,
        # The supervisor said what was wrong with the env once already.
        warn_env=inherited is None,
    )
    settings = _settings(args, args.directory, **serve_options)
    # `auto` is supervised even where it means one process: SIGHUP (a unit's ExecReload, say) then
    # rolls it over, as it would on a larger machine, rather than ending it.
    asked = args.workers if args.workers is not None else settings.config.workers
    supervised = inherited is None and (settings.serving_processes > 1 or asked == "auto")
    if args.inspect is not None or args.inspect_wait:
        from edgeruntime.serving.inspector import parse_inspect, start_inspector

        if supervised or inherited is not None:
            raise UsageError(
                "--inspect: the debugger stops one serving process; serve with --workers 1 while debugging"
            )

        check_port(settings.host, settings.port)  # not waiting for a debugger to then find the port taken
        address = parse_inspect(args.inspect, settings.config.inspector_port)
        start_inspector(address, wait=args.inspect_wait, isolation=settings.isolation)
    # A serving process of several leaves what holds for all of them to its supervisor.
    built = build_app(settings, access_log=AccessLog(log_buffer, settings.log_format), announce=inherited is None)
    app, jobs = built.app, built.jobs
    if app.launcher is not None and app.launcher.sandbox.shares_server_view:
        from edgeruntime.workers.process.sandbox import set_dumpable

        # Workers run as this user and see this process: they must not read its memory or environ.
        try:
            set_dumpable(False)
        except (OSError, AttributeError):  # not Linux: said at start-up (the sandbox's warning)
            pass
    if not app.functions:
        raise UsageError(f"no functions in {settings.functions_dir}: expected {settings.functions_dir}/<name>/index.py")
    if inherited is None:  # a serving process of several: its supervisor said it
        from edgeruntime.config.settings import missing_functions, public_keys_warning

        for line in [*missing_functions(settings), public_keys_warning(settings)]:
            if line is not None:
                logging.getLogger("edgeruntime").warning("%s", line)
    # The Supabase CLI's banner on stdout; with JSON logs, log lines like every other line.
    say: Callable[[str], None] = (
        functools.partial(logging.getLogger("edgeruntime").info, "%s") if settings.log_format == "json" else print
    )

    def banner() -> None:
        say(f"Serving functions on {settings.base_url}/functions/v1/<function-name>")
        for name in app.functions:
            say(f" - {settings.function_url(name)}")
        say(f"Dashboard: {settings.base_url}/_edgeruntime/")
        count = settings.serving_processes
        processes = f"{count} serving process{'es' if count > 1 else ''}"
        sandbox = f", sandbox {app.launcher.sandbox.mode}" if app.launcher is not None else ""
        say(
            f"Using edgeruntime {__version__} (server {settings.server}, {processes}, "
            f"policy {settings.policy}, isolation {settings.isolation}{sandbox})"
        )
        sys.stdout.flush()

    def config_reloader() -> ConfigReloader:
        from edgeruntime.serving.config_reload import ConfigReloader

        def rebuild(**overrides: Any) -> Settings:
            return _settings(args, args.directory, **{**serve_options, "warn_env": False, **overrides})

        return ConfigReloader(app, rebuild, _config_files(args, settings))

    async def watch_settings(stop: asyncio.Event) -> None:
        from edgeruntime.serving.config_reload import watch_config

        reloader = config_reloader()
        await watch_config(reloader.files, reloader.reload, stop)

    if inherited is not None:
        return _serve_as_one_of_several(settings, built, inherited, config_reloader if settings.watch else None)
    if settings.server == "hypercorn" and args.server == "auto":
        from edgeruntime.serving.server import missing_fast_server

        logging.getLogger("edgeruntime").info(
            "--server auto: serving with Hypercorn (%s not installed; pip install 'uvicorn[standard]')",
            ", ".join(missing_fast_server()),
        )
    if supervised:
        return _supervise(args, settings, built, banner)

    async def start() -> None:
        await jobs.prepare()  # a database that cannot be opened fails `serve` here, before it listens
        banner()

    async def watch(stop: asyncio.Event) -> None:
        from edgeruntime.functions.reload import watch_functions  # watchfiles: only when watching

        await watch_functions(settings.functions_dir, app.reload, stop)

    from edgeruntime.serving.server import run_server

    return run_server(
        settings,
        app,
        on_start=start,
        on_stop=app.close_websockets,
        background=[watch, watch_settings] if settings.watch else [],
    )


def _config_files(args: argparse.Namespace, settings: Settings) -> list[Path]:
    """The files whose edits `serve` applies while it runs (see `edgeruntime.serving.config_reload`)."""
    from edgeruntime.serving.config_reload import watched_files

    return watched_files(
        settings,
        Path(args.config) if args.config else None,
        Path(args.env_file) if args.env_file else None,
    )


def _serving_process_sockets(value: str) -> tuple[socket.socket, socket.socket]:
    """`--serving-process LISTEN_FD,CONTROL_FD`: the listening socket and the control channel a
    serving process is handed by its supervisor. UsageError when they are not what they should be."""
    from edgeruntime.serving.control import inherited_socket

    listen_fd, sep, control_fd = value.partition(",")
    if not (sep and listen_fd.isdigit() and control_fd.isdigit()):
        raise UsageError(f"--serving-process: expected LISTEN_FD,CONTROL_FD, got {value!r}")
    try:
        listener = inherited_socket(int(listen_fd), listening=True)
        try:
            control = inherited_socket(int(control_fd), listening=False)
        except ValueError:
            listener.detach()
            raise
    except ValueError as exc:
        raise UsageError(f"--serving-process: {exc}") from None
    # The supervisor replaces this process when it is told to: a hang-up is not for it (it may be
    # the terminal's, sent to the whole process group). Not SIG_IGN, which what it starts would inherit.
    signal.signal(signal.SIGHUP, lambda signum, frame: None)
    return listener, control


def _serve_as_one_of_several(
    settings: Settings,
    built: BuiltApp,
    inherited: tuple[socket.socket, socket.socket],
    config_reloader: Callable[[], ConfigReloader] | None,
) -> int:
    """Serve as one serving process of several: on the supervisor's socket, no banner, metrics and
    the dashboard's in-flight work gathered from all of them through the control channel, edits
    of the configuration files and of the functions' files applied when the supervisor, which
    watches them, says so (`config_reloader`: what applies the former; None: ``--no-watch``)."""
    from edgeruntime.serving.control import ControlChannel
    from edgeruntime.serving.server import run_server

    listener, control = inherited
    app, jobs, dashboard = built.app, built.jobs, built.dashboard
    channel = ControlChannel(control, {"metrics": dashboard.metrics.snapshot, "functions": dashboard.process_state})
    dashboard.siblings = channel.gather
    background = [channel.run]
    if config_reloader is not None:
        from edgeruntime.functions.reload import apply_told_edits
        from edgeruntime.serving.config_reload import apply_edit

        reloader = config_reloader()

        def edited(changed: list[str], report: bool) -> None:
            apply_edit(functools.partial(reloader.reload, report=report), {Path(path) for path in changed})

        # Reloaded in order, by one task: a reload may wait for descriptors (see functions.reload).
        function_edits: asyncio.Queue[tuple[set[str], bool]] = asyncio.Queue()

        async def reload_functions(stop: asyncio.Event) -> None:
            await apply_told_edits(function_edits, app.reload, stop)

        channel.on_reload = edited
        channel.on_functions_edited = lambda names, report: function_edits.put_nowait((set(names), report))
        background.append(reload_functions)

    async def start() -> None:
        await jobs.prepare()

    async def stopped() -> None:
        await channel.send_final("metrics", dashboard.metrics.snapshot())

    return run_server(
        settings,
        app,
        on_start=start,
        on_stop=app.close_websockets,
        background=background,
        sock=listener,
        on_listening=channel.ready,
        on_stopped=stopped,
    )


def hang_timeout_sec(environ: Mapping[str, str] = os.environ) -> float:
    """`EDGERUNTIME_HANG_TIMEOUT_SEC` (seconds, 0: off), else the supervisor's default; UsageError if not a number."""
    from edgeruntime.serving.supervisor import HANG_TIMEOUT_SEC

    value = environ.get("EDGERUNTIME_HANG_TIMEOUT_SEC", "").strip()
    if not value:
        return HANG_TIMEOUT_SEC
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise UsageError(f"EDGERUNTIME_HANG_TIMEOUT_SEC={value!r}: expected seconds (0 or more; 0 turns the check off)")
    return seconds


def _supervise(args: argparse.Namespace, settings: Settings, built: BuiltApp, banner: Callable[[], None]) -> int:
    """Bind the socket, then run `settings.serving_processes` serving processes on it (see
    :mod:`edgeruntime.serving.supervisor`) until SIGTERM or SIGINT."""
    from edgeruntime.serving.server import listening_socket
    from edgeruntime.serving.supervisor import ServingSupervisor

    hang_timeout = hang_timeout_sec()
    sock = listening_socket(settings.host, settings.port)
    gc.enable()  # the supervisor runs as long as the server: it collects as any process does
    argv: list[str] = list(args.argv)
    # Each serving process runs this same command (so a rolling restart reads config and env afresh),
    # as one process: the last --workers wins.
    split = argv.index("--") if "--" in argv else len(argv)
    command = [sys.executable, "-m", "edgeruntime", *argv[:split], "--workers", "1", *argv[split:]]

    async def run() -> int:
        # Migrated once here, not raced by every serving process; they find it up to date.
        try:
            await built.jobs.prepare()
        finally:
            await built.jobs.store.close()
        built.app.announce_sandbox()  # for every serving process: they leave it to this one
        supervisor = ServingSupervisor(
            command,
            settings.serving_processes,
            sock,
            graceful_exit_timeout_sec=settings.graceful_exit_timeout_sec,
            hang_timeout_sec=hang_timeout,
            on_ready=banner,
            watched=_config_files(args, settings) if settings.watch else (),
            functions_dir=settings.functions_dir if settings.watch else None,
        )
        return await supervisor.run()

    try:
        return asyncio.run(run())
    finally:
        sock.close()
        sys.stdout.flush()


def cmd_new(args: argparse.Namespace) -> int:
    from edgeruntime.serving.scaffold import create_function

    path = create_function(Path(args.dir), args.name, args.template)
    print(f"Created {path}")
    print(f"Serve it with: edgeruntime serve {args.dir}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from edgeruntime.functions.discovery import discover
    from edgeruntime.functions.source import check_source

    settings = _settings(args, args.directory, warn_env=False)
    for name, spec in discover(settings.functions_dir).items():
        fn = settings.config.function(name)
        state = "enabled" if fn.enabled else "disabled"
        jwt_state = "verify_jwt" if fn.verify_jwt else "no verify_jwt"
        line = f"{name}\t{settings.function_url(name)}\t{state}, {jwt_state}"
        error = check_source(spec)  # compiled, not imported: listing runs no function's code
        print(line if error is None else f"{line}\tnot serveable: {error}")
    return 0


def cmd_invoke(args: argparse.Namespace) -> int:
    import httpx

    headers: dict[str, str] = {}
    if args.key != "none":
        settings = _settings(args, args.directory, warn_env=False)
        key = settings.keys.service_role_key if args.key == "service_role" else settings.keys.anon_key
        headers["Authorization"] = f"Bearer {key}"
    for item in args.header:
        name, sep, value = item.partition(":")
        name, value = name.strip(), value.strip()
        if not sep:
            raise UsageError(f"--header {item!r}: expected NAME:VALUE")
        if not _TOKEN.fullmatch(name):
            raise UsageError(f"--header {item!r}: {name!r} is not a header name (ASCII letters, digits, '-'...)")
        if not _HEADER_VALUE.fullmatch(value):
            raise UsageError(f"--header {item!r}: the value must be printable ASCII")
        headers[name] = value
    content: bytes | None = None
    if args.data is not None:
        try:
            json.loads(args.data)
        except ValueError as exc:
            raise UsageError(f"--data is not valid JSON: {exc}") from None
        content = args.data.encode()
        headers.setdefault("Content-Type", "application/json")
    if not _TOKEN.fullmatch(args.method):
        raise UsageError(f"--method {args.method!r}: not an HTTP method")
    url = _invoke_url(args.url, f"/functions/v1/{args.name}{_below_function(args.path)}")
    try:
        response = httpx.request(args.method, url, content=content, headers=headers, timeout=None)
    except httpx.HTTPError as exc:
        raise UsageError(f"cannot reach {url}: {exc}") from None
    if response.status_code == 404 and response.text == "Function not found":
        raise UsageError(f"function {args.name} not found at {args.url}")
    print(f"HTTP {response.status_code}", file=sys.stderr)
    sys.stdout.write(response.text + ("" if response.text.endswith("\n") else "\n"))
    return 0 if response.is_success else 1


#: A method or header name (an RFC 9110 token), and a header value (printable ASCII: httpx sends nothing else).
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEADER_VALUE = re.compile(r"[\x20-\x7e\t]*")


def _below_function(path: str) -> str:
    """`--path`, as what follows the function's URL: `sub` is `/sub` (not a function `NAMEsub`);
    a path that starts with `?` is a query string."""
    return path if not path or path.startswith(("/", "?", "#")) else f"/{path}"


def _invoke_url(base: str, path: str) -> str:
    """`base` (--url) joined with `path`; UsageError naming --url (or --path) when it is not an HTTP URL."""
    import httpx

    try:
        parsed = httpx.URL(base)
    except httpx.InvalidURL as exc:
        raise UsageError(f"--url {base!r}: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host or not 0 < (parsed.port or 80) < 65536:
        raise UsageError(f"--url {base!r}: expected http://HOST:PORT or https://HOST:PORT")
    url = f"{base.rstrip('/')}{path}"
    try:
        httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise UsageError(f"--path: {url!r}: {exc}") from None
    return url


def cmd_keys(args: argparse.Namespace) -> int:
    if Path(args.directory).is_dir():
        keys = _settings(args, args.directory, warn_env=False).keys
    else:  # keys need no functions: --config, or the config.toml where the functions would be, decides
        from edgeruntime.config.keys import demo_keys
        from edgeruntime.config.project import find_config, load_config

        config = load_config(find_config(Path(args.directory), Path(args.config) if args.config else None), warn=False)
        keys = demo_keys(config.jwt_secret, config.signing_keys)
    if args.anon:
        print(keys.anon_key)
        return 0
    if args.service_role:
        print(keys.service_role_key)
        return 0
    table = {
        "anon_key": keys.anon_key,
        "service_role_key": keys.service_role_key,
        "publishable_key": keys.publishable_key,
        "secret_key": keys.secret_key,
        "jwt_secret": keys.jwt_secret,
    }
    if args.json:
        print(json.dumps(table, indent=2))
    else:
        width = max(len(k) for k in table)
        for name, value in table.items():
            print(f"{name.upper():<{width}}  {value}")
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    from edgeruntime.serving.jobs_cli import COMMANDS as JOBS_COMMANDS

    return JOBS_COMMANDS[args.command](args)


COMMANDS = {
    "serve": cmd_serve,
    "new": cmd_new,
    "list": cmd_list,
    "invoke": cmd_invoke,
    "keys": cmd_keys,
    "jobs": cmd_jobs,
    "cron": cmd_jobs,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (2 for bad input, with one line on stderr).

    The garbage collector is paused while the command starts and is on again when this returns.
    """
    # Start-up creates tens of thousands of objects that live as long as the process (modules,
    # classes, functions): the ~80 collections their creation triggers find next to nothing.
    # `serve` turns the collector on (tuned) once the server is ready to listen.
    gc.disable()
    args: argparse.Namespace | None = None
    try:
        argv = sys.argv[1:] if argv is None else list(argv)
        # `edgeruntime COMMAND ...`: only that command's parser; anything else (--help) gets them all.
        args = build_parser(argv[0] if argv else None).parse_args(argv)
        args.argv = argv  # `serve --workers N` starts each serving process with the same command
        if args.command != "serve":
            gc.enable()
        return COMMANDS[args.command](args)
    except EdgeRuntimeError as exc:
        _report_error(exc, json_logs=getattr(args, "log_format", "text") == "json")
        return EXIT_USAGE
    except KeyboardInterrupt:  # pragma: no cover - interactive
        return 130
    finally:
        gc.enable()


def _report_error(exc: EdgeRuntimeError, *, json_logs: bool) -> None:
    """The one error line on stderr, after the log lines written before it (as a JSON line under
    ``--log-format json``: every line of that stream parses)."""
    for handler in logging.getLogger("edgeruntime").handlers:
        handler.flush()
    if json_logs:
        from edgeruntime.core.logs import json_line

        print(json_line(f"edgeruntime: error: {exc}", logging.ERROR), file=sys.__stderr__ or sys.stderr, flush=True)
    else:
        print(f"edgeruntime: error: {exc}", file=sys.stderr)
