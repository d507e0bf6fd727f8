"""Sandboxes for worker processes: what keeps one function from reading or signalling another.

Under ``isolation = "process"`` every worker is its own OS process. ``[edge_runtime] sandbox``
decides what else stands between it, the other functions' workers and the server:

``bwrap``
    bubblewrap: the worker has its own PID namespace (it sees and can signal only its own
    processes), a read-only view of the filesystem in which the other functions' directories and
    the server's own files (its jobs store, config.toml, signing keys) are hidden, and a private
    /tmp no larger than its memory limit. As root, each function's workers also run under a uid
    of their own (as ``uid``); otherwise bubblewrap puts them in a user namespace.
``uid``
    (the server runs as root) each function's workers run under their own uid and gid from
    ``worker_uid_range``, with no supplementary groups: they cannot read or signal other
    functions' workers or the server, and can read only the files other users may read.
``basic``
    the workers run as the server's user, non-dumpable and without the server's environment:
    another worker cannot read their memory or environment (unless the server runs as root), but
    it can signal them and read every file the server can.
``none``
    no sandbox: the workers run as the server's user with its whole environment, as before
    sandboxes existed; only non-dumpable.

``auto`` (the default) is ``bwrap`` where bubblewrap works, else ``uid`` where the server runs
as root, else ``basic``; the server says which one it picked and why.

In every mode but ``none`` a worker's environment is its function's env (``Deno.env``) without
the server's own environment, plus what Python needs to run (``PATH``, locale, ``PYTHON*``...),
and the function's env reaches the worker over its channel, not through ``exec``: the worker's
``/proc/<pid>/environ`` holds no secret even for the moments before it is non-dumpable.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import os
import stat
import sys
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from edgeruntime.config.env import runtime_environ
from edgeruntime.config.project import DEFAULT_UID_RANGE, SANDBOX_MODES
from edgeruntime.config.settings import Settings
from edgeruntime.exceptions import ConfigError
from edgeruntime.workers.process.forking import WorkerTemplate, forking_problem

if TYPE_CHECKING:
    import ctypes

__all__ = [
    "BWRAP_INSTALL",
    "Sandbox",
    "WorkerLauncher",
    "function_env",
    "readable_by_others",
    "resolve_sandbox",
    "sandbox_for",
    "set_dumpable",
    "set_parent_death_signal",
]

logger = logging.getLogger("edgeruntime")

#: How a user gets bubblewrap (Debian and Ubuntu; the binary is `bwrap`).
BWRAP_INSTALL = "apt-get install bubblewrap"
#: The module a worker process runs (``python -m``).
CHILD_MODULE = "edgeruntime.workers.process.child"
#: The module a function's template runs (``python -m``), the process its workers are forked from.
TEMPLATE_MODULE = "edgeruntime.workers.process.template"
#: The uids that exist in this process's user namespace.
UID_MAP = Path("/proc/self/uid_map")
_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4


@functools.cache
def _libc() -> ctypes.CDLL:
    import ctypes  # only where a process is made non-dumpable, not in every server's start

    return ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, value: int) -> None:
    import ctypes

    if _libc().prctl(option, value, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def set_dumpable(dumpable: bool) -> None:
    """PR_SET_DUMPABLE: a non-dumpable process's memory, environ and ptrace are refused to
    other processes of its uid (not to root). Raises OSError where it cannot be set."""
    _prctl(_PR_SET_DUMPABLE, int(dumpable))


def set_parent_death_signal(signum: int) -> None:
    """PR_SET_PDEATHSIG: be sent `signum` when the parent dies (cleared by a change of uid)."""
    _prctl(_PR_SET_PDEATHSIG, signum)


@dataclass(frozen=True)
class Sandbox:
    """What the worker processes of one server run in (see :func:`resolve_sandbox`)."""

    mode: Literal["bwrap", "uid", "basic", "none"]
    #: The bubblewrap binary (mode bwrap).
    bwrap: str | None = None
    #: The uids (and gids) the functions' workers run under, when the server runs as root.
    uid_range: tuple[int, int] | None = None
    #: Why `auto` did not pick a stronger mode, or what this mode leaves open (logged at start-up).
    warning: str | None = None

    @property
    def withholds_server_env(self) -> bool:
        """The worker's environment is the function's env, not the server's."""
        return self.mode != "none"

    @property
    def shares_server_view(self) -> bool:
        """The workers run as the server's user and see its processes (so it must be non-dumpable)."""
        return self.mode in ("basic", "none")

    def describe(self) -> str:
        """What protects the workers, in a few words (the start-up line)."""
        uids = f", own uid per function ({self.uid_range[0]}-{self.uid_range[1]})" if self.uid_range else ""
        if self.mode == "bwrap":
            return f"bwrap: own PID namespace, read-only filesystem, private /tmp{uids}"
        if self.mode == "uid":
            return f"uid: own uid per function ({self.uid_range[0]}-{self.uid_range[1]})" if self.uid_range else "uid"
        if self.mode == "basic":
            return "basic: non-dumpable workers without the server's environment, as the server's user"
        return "none: workers run as the server's user with its environment (non-dumpable only)"


def _uid_map_covers(first: int, last: int) -> bool:
    """True if uids first..last exist in this process's user namespace."""
    try:
        lines = UID_MAP.read_text().splitlines()
    except OSError:
        return False
    for line in lines:
        inside, _, count = (int(part) for part in line.split())
        if inside <= first and last < inside + count:
            return True
    return False


def _unreadable_by_others(path: Path) -> Path | None:
    """The first component of `path` a process of another uid (no groups) cannot get through."""
    current = Path("/")
    parts = path.parts[1:]
    for index, part in enumerate(parts):
        current = current / part
        try:
            mode = os.stat(current).st_mode
        except OSError:
            return None  # gone: nothing to read there
        last = index == len(parts) - 1
        if stat.S_ISDIR(mode):
            need = stat.S_IXOTH | (stat.S_IROTH if last else 0)
        else:
            need = stat.S_IROTH
        if mode & need != need:
            return current
    return None


def readable_by_others(path: Path) -> tuple[Path, int] | None:
    """Whether a process of another uid, in none of the server's groups (a function's under
    ``--sandbox uid``), can read the file at `path`, or a file in the directory at `path`: then
    `path` and its mode (a ``chmod`` of `path` closes it), else None (also when `path` is gone)."""
    path = path.absolute()
    try:
        mode = os.stat(path).st_mode
        files = [Path(entry.path) for entry in os.scandir(path) if entry.is_file()] if stat.S_ISDIR(mode) else [path]
    except OSError:
        return None
    if all(_unreadable_by_others(file) is not None for file in files):
        return None
    return path, stat.S_IMODE(mode)


def package_root() -> Path | None:
    """The directory edgeruntime was imported from when only the working directory put it on the
    path (a source checkout): a worker process (started with ``-P``) needs it on PYTHONPATH."""
    import edgeruntime

    parent = Path(edgeruntime.__file__).resolve().parent.parent
    return parent if str(parent) not in _installed_path() else None


@functools.cache
def _installed_path() -> tuple[str, ...]:
    """`sys.path` of a fresh interpreter like this one, without the working directory."""
    import subprocess

    probe = subprocess.run(
        [sys.executable, "-P", "-c", "import sys; print('\\n'.join(sys.path))"],
        capture_output=True,
        text=True,
        timeout=30,
        env=runtime_environ(os.environ),
        cwd="/",
    )
    return tuple(str(Path(p).resolve()) for p in probe.stdout.splitlines() if p)


@functools.cache
def interpreter_paths() -> tuple[Path, ...]:
    """What a worker process reads to run Python and import edgeruntime and its dependencies."""
    root = package_root()
    found = [
        Path(os.path.abspath(sys.executable)).parent,
        Path(sys.executable).resolve(),
        *(Path(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)),
        *(Path(p) for p in _installed_path()),
        *([root] if root is not None else []),
    ]
    return tuple(dict.fromkeys(p.resolve() for p in found if p.exists()))


@functools.cache
def _bwrap_problem(path: str | None, root: bool) -> str | None:
    """None if bubblewrap at `path` can create a sandbox here, else why not (one line)."""
    if path is None:
        return f"bubblewrap (bwrap) is not installed; install it: {BWRAP_INSTALL}"
    import subprocess

    args = [path, "--ro-bind", "/", "/", "--unshare-pid", "--unshare-ipc", "--die-with-parent"]
    if not root:
        args += ["--unshare-user", "--disable-userns"]
    try:
        probe = subprocess.run(
            [*args, "--", sys.executable, "-S", "-c", ""], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{path} cannot create a sandbox here: {exc}"
    if probe.returncode == 0:
        return None
    lines = probe.stderr.strip().splitlines()
    return f"{path} cannot create a sandbox here: {lines[-1] if lines else f'exit status {probe.returncode}'}"


def resolve_sandbox(
    requested: str,
    uid_range: tuple[int, int] | None = None,
    *,
    origin: str = "[edge_runtime] sandbox",
    uid_origin: str = "[edge_runtime] worker_uid_range",
    functions_dir: Path | None = None,
) -> Sandbox:
    """The sandbox `requested` ("auto", "bwrap", "uid", "basic" or "none") resolves to here.

    An explicit mode that cannot work here is a ConfigError naming `origin` (the config key or
    flag); `auto` never fails, it takes the strongest mode that works and says why in `warning`.
    """
    if requested not in SANDBOX_MODES:
        raise ConfigError(f"{origin}: expected one of {', '.join(SANDBOX_MODES)}, got {requested!r}")
    if requested == "none":
        return Sandbox("none")
    linux = sys.platform.startswith("linux")
    if not linux:
        if requested in ("bwrap", "uid"):
            raise ConfigError(f"{origin}: {requested!r} needs Linux (this is {sys.platform})")
        return Sandbox(
            "basic",
            warning=f"workers are not sandboxed on {sys.platform}: they can read and signal one another",
        )
    root = os.geteuid() == 0
    uids = uid_range or DEFAULT_UID_RANGE
    uid_problem = None
    if root and not _uid_map_covers(*uids):
        uid_problem = f"uids {uids[0]}-{uids[1]} do not exist in this user namespace (see /proc/self/uid_map)"
    import shutil

    bwrap = shutil.which("bwrap")
    if requested in ("bwrap", "auto"):
        bwrap_problem = _bwrap_problem(bwrap, root)
        if requested == "bwrap":
            if bwrap_problem is not None:
                raise ConfigError(f"{origin}: {bwrap_problem}")
            if uid_problem is not None:
                raise ConfigError(f"{uid_origin}: {uid_problem}")
        if bwrap_problem is None and uid_problem is None:
            return Sandbox("bwrap", bwrap=bwrap, uid_range=uids if root else None)
    else:
        bwrap_problem = None
    if requested == "basic":
        warning = "the server runs as root, which reads any worker's memory: basic protects nothing" if root else None
        return Sandbox("basic", warning=warning)
    if not root:
        if requested == "uid":
            raise ConfigError(f"{origin}: 'uid' needs the server to run as root")
        return Sandbox(
            "basic",
            warning=f"{bwrap_problem}; without it workers run as the server's user: they can signal one "
            "another and read its files",
        )
    unreadable = None
    if uid_problem is None:
        for path in [*interpreter_paths(), *([functions_dir] if functions_dir else [])]:
            blocked = _unreadable_by_others(path)
            if blocked is not None:
                unreadable = f"other uids cannot read {blocked} (needed for {path})"
                break
    if requested == "uid":
        if uid_problem is not None:
            raise ConfigError(f"{uid_origin}: {uid_problem}")
        if unreadable is not None:
            raise ConfigError(f"{origin}: 'uid': {unreadable}; make it readable by other users, or use bwrap")
        return Sandbox("uid", uid_range=uids)
    if uid_problem is None and unreadable is None:
        return Sandbox("uid", uid_range=uids, warning=f"{bwrap_problem}; functions share /tmp and see each other")
    return Sandbox(
        "basic",
        warning=f"{bwrap_problem}; {uid_problem or unreadable}: "
        "workers run as root and are NOT isolated from one another",
    )


def sandbox_for(settings: Settings) -> Sandbox:
    """The sandbox the worker processes of `settings`' server run in (ConfigError if the one
    asked for, by ``--sandbox`` or config.toml, cannot work here)."""
    where = f"{settings.config.path}: " if settings.config.path else ""
    origin = "--sandbox" if settings.sandbox_flag else f"{where}[edge_runtime] sandbox"
    return resolve_sandbox(
        settings.sandbox,
        settings.config.worker_uid_range,
        origin=origin,
        uid_origin=f"{where}[edge_runtime] worker_uid_range",
        functions_dir=settings.functions_dir,
    )


def function_env(settings: Settings, sandbox: Sandbox) -> Mapping[str, str]:
    """The function env a worker process in `sandbox` gets (`Deno.env` there): without the
    server's own environment unless the sandbox is ``none``."""
    return settings.isolated_env if sandbox.withholds_server_env else settings.env


class WorkerLauncher:
    """Starts the worker processes of one server: their command and environment, and the
    functions' templates they are forked from (see :mod:`edgeruntime.workers.process.forking`).

    With `templates` False (or where forking is not available) every worker process is a fresh
    interpreter the server starts itself.
    """

    def __init__(
        self, sandbox: Sandbox, functions_dir: Path, private_paths: Iterable[Path] = (), *, templates: bool = True
    ) -> None:
        self.sandbox = sandbox
        self.functions_dir = functions_dir.resolve()
        #: Files and directories of the server that workers must not see (hidden under bwrap).
        self.private_paths: list[Path] = [p.resolve() for p in private_paths]
        #: Worker processes are forked from their function's template.
        self.forks = templates and forking_problem() is None
        self._templates: dict[str, WorkerTemplate] = {}
        self._views: dict[Path, tuple[Hashable, tuple[str, ...]]] = {}
        self._uids: dict[str, int] = {}
        self._interpreter = interpreter_paths() if sandbox.mode == "bwrap" else ()
        self._package_root = package_root()

    def template(self, function: str) -> WorkerTemplate | None:
        """The template `function`'s worker processes are forked from; None: they are spawned."""
        if not self.forks:
            return None
        template = self._templates.get(function)
        if template is None:
            template = self._templates[function] = WorkerTemplate(self, function)
        return template

    async def close(self) -> None:
        """End every template (after the workers: a worker forked from a template ends with it)."""
        templates, self._templates = list(self._templates.values()), {}
        await asyncio.gather(*(t.close() for t in templates))

    def hide(self, path: Path) -> None:
        """Hide `path` (a file or directory of the server) from workers booted from now on."""
        resolved = path.resolve()
        if resolved not in self.private_paths:
            self.private_paths.append(resolved)

    def uid_for(self, function: str) -> int | None:
        """The uid (and gid) of `function`'s workers: stable for a function of a functions directory
        (the same in every serving process and every server of it), distinct within this server."""
        if self.sandbox.uid_range is None:
            return None
        if function in self._uids:
            return self._uids[function]
        first, last = self.sandbox.uid_range
        size = last - first + 1
        taken = set(self._uids.values())
        if len(taken) >= size:
            raise ConfigError(f"[edge_runtime] worker_uid_range: all {size} uids are taken; widen the range")
        # A hash of the functions directory and the name: the serving processes of one server (and
        # servers of the same functions) agree on it, and another server's function of the same name
        # (another tenant's `hello`) does not get it, which would read its /tmp files and signal it.
        key = f"{self.functions_dir}\0{function}".encode()
        slot = int.from_bytes(hashlib.sha256(key).digest()[:8], "big") % size
        while first + slot in taken:
            slot = (slot + 1) % size
        self._uids[function] = first + slot
        return first + slot

    def command(
        self, function: str, directory: Path, fd: int, server_pid: int, tmp_size_mb: float, *, template: bool = False
    ) -> tuple[list[str], Path | None]:
        """The argv of a worker process (or with `template`, of the template) of `function`
        talking on `fd`, and its working directory.

        The worker (``python -m edgeruntime.workers.process.child FD PARENT NAME [UID:GID]``, or
        ``...template`` with the same arguments) checks that PARENT is its parent, unless it is 0:
        under bwrap the server is outside the worker's PID namespace and bubblewrap
        (``--die-with-parent``) ties the worker's life to the server's instead.
        """
        bwrap = self.sandbox.mode == "bwrap"
        uid = self.uid_for(function)
        module = TEMPLATE_MODULE if template else CHILD_MODULE
        # -P: the server's working directory is not on the worker's import path.
        child = [sys.executable, "-P", "-m", module, str(fd), "0" if bwrap else str(server_pid), function]
        if uid is not None:
            child.append(f"{uid}:{uid}")
        if bwrap:
            assert self.sandbox.bwrap is not None
            return [self.sandbox.bwrap, *self.bwrap_args(directory, tmp_size_mb), "--", *child], None
        # The server's working directory may be closed to the worker's uid.
        return child, directory if uid is not None else None

    def bwrap_args(self, directory: Path, tmp_size_mb: float) -> list[str]:
        """The bubblewrap options for a worker of the function in `directory` (see the module docstring)."""
        root = self.sandbox.uid_range is not None
        args = ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
        masked: list[Path] = [Path("/tmp")]
        tmp_bytes = str(max(1, int(tmp_size_mb * 1024 * 1024)))
        args += ["--perms", "1777", "--size", tmp_bytes, "--tmpfs", "/tmp"]
        args += ["--perms", "1777", "--size", tmp_bytes, "--tmpfs", "/dev/shm"]
        needed = [*self._interpreter, self.functions_dir]
        if root:  # a directory other uids cannot pass (e.g. /root holding pyenv) is masked, its needed parts bound back
            for path in needed:
                blocked = _unreadable_by_others(path)
                if blocked is not None and blocked != path and not any(_within(blocked, m) for m in masked):
                    masked.append(blocked)
                    args += ["--tmpfs", str(blocked)]
        # Directories bubblewrap makes on the way to a bound path are root's, mode 0700: they
        # would close the path to the worker's uid. They are made first, 0755.
        made: set[Path] = set()
        for path in needed:
            for mask in masked:
                if path == mask or not _within(path, mask):
                    continue
                for ancestor in reversed(path.parents):
                    if ancestor not in made and ancestor != mask and _within(ancestor, mask):
                        made.add(ancestor)
                        args += ["--perms", "0755", "--dir", str(ancestor)]
                break
        for path in self._interpreter:
            if any(_within(path, m) for m in masked):
                args += ["--ro-bind", str(path), str(path)]
        # The functions directory: this function's own directory, `_shared` and other `_` entries,
        # top-level files; the other functions' directories and dot-files (.env) stay hidden.
        args += ["--tmpfs", str(self.functions_dir)]
        bound: list[Path] = []
        with contextlib.suppress(OSError):
            for entry in sorted(os.scandir(self.functions_dir), key=lambda e: e.name):
                if entry.name.startswith("."):
                    continue
                if entry.is_dir() and not entry.name.startswith("_") and Path(entry.path).resolve() != directory:
                    continue
                args += ["--ro-bind", entry.path, entry.path]
                bound.append(Path(entry.path))
        # The server's own files last: one inside the functions directory (config.toml or the
        # SQLite store among the functions, or in `_shared`) would be bound back by the lines above.
        for private in self.private_paths:
            if any(_within(n, private) for n in needed) or not private.exists():
                continue  # never hide what the worker needs (a directory holding the functions, say)
            if _within(private, self.functions_dir) and not any(_within(private, b) for b in bound):
                continue  # hidden with the other functions (a mount would show its name)
            if private.is_dir():
                args += ["--tmpfs", str(private)]
            else:
                args += ["--ro-bind", "/dev/null", str(private)]
        args += ["--chdir", str(directory)]
        args += ["--unshare-pid", "--unshare-ipc", "--unshare-cgroup-try", "--die-with-parent"]
        if not root:
            args += ["--unshare-user", "--disable-userns"]
        return args

    def environ(self, function_env: Mapping[str, str], server_environ: Mapping[str, str]) -> dict[str, str]:
        """The environment a worker process starts with. Its function's env comes later, over the
        channel: this is what Python needs to run, or under sandbox none the function's whole env."""
        if self.sandbox.withholds_server_env:
            return self.template_environ(server_environ)
        return self._with_package(dict(function_env))

    def template_environ(self, server_environ: Mapping[str, str]) -> dict[str, str]:
        """The environment a template starts with, whatever the sandbox: what Python needs to run,
        no secret (each worker it forks gets its function's env over its channel)."""
        env = runtime_environ(server_environ)
        if self.sandbox.mode in ("bwrap", "uid"):
            env["HOME"] = "/tmp"  # the server's home is hidden from the worker, or closed to its uid
        elif "HOME" in server_environ:
            env["HOME"] = server_environ["HOME"]
        return self._with_package(env)

    def _with_package(self, env: dict[str, str]) -> dict[str, str]:
        if self._package_root is not None:
            env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(self._package_root)) if p)
        return env

    def view(self, directory: Path, tmp_size_mb: float) -> Hashable:
        """What a template of the function in `directory` started now would see: the identity of the
        function's directory and, under bwrap, of each entry of the functions directory it binds,
        and the sandbox's options. A template started in another view (an entry added, removed or
        replaced since, which its bubblewrap would not show) forks no more workers."""
        bwrap = self.sandbox.mode == "bwrap"
        bound: list[tuple[str, int]] = []
        try:
            with os.scandir(self.functions_dir) as entries:
                for entry in entries:
                    if entry.path == str(directory) or (
                        bwrap and not entry.name.startswith(".") and (entry.name.startswith("_") or not entry.is_dir())
                    ):
                        bound.append((entry.name, entry.inode()))
        except OSError:
            pass
        key = (str(directory), tmp_size_mb, len(self.private_paths), tuple(sorted(bound)))
        if not bwrap:
            return key
        cached = self._views.get(directory)
        if cached is None or cached[0] != key:  # the options take ~1 ms to build: built again when they may differ
            cached = self._views[directory] = (key, tuple(self.bwrap_args(directory, tmp_size_mb)))
        return cached


def _within(path: Path, parent: Path) -> bool:
    return path == parent or parent in path.parents
