"""``edgeruntime serve --inspect``: a debugpy listener in the serving process, for VS Code and any
client of the Debug Adapter Protocol.

Under ``isolation = "inline"`` every function runs in the serving process, so a breakpoint in a
handler stops there (and, while it is stopped, the whole server waits: every request of every
function runs on the one event loop). Under ``isolation = "process"`` the functions run in worker
processes the debugger is not attached to, so ``--inspect`` is refused there with a line saying
to serve with ``--isolation inline`` while debugging.

A debugger runs any code it is asked to in the process it is attached to: whoever can reach its
port can do anything the server can. It listens on loopback unless an address is named.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
from dataclasses import dataclass
from typing import Any

from edgeruntime.config.project import DEFAULT_INSPECTOR_PORT
from edgeruntime.exceptions import UsageError

__all__ = ["DEFAULT_INSPECTOR_HOST", "InspectorAddress", "parse_inspect", "start_inspector"]

logger = logging.getLogger("edgeruntime")

DEFAULT_INSPECTOR_HOST = "127.0.0.1"
INSTALL_HINT = "pip install 'edgeruntime[debug]'"


@dataclass(frozen=True)
class InspectorAddress:
    """Where the debugger listens."""

    host: str
    port: int

    @property
    def loopback(self) -> bool:
        host = self.host.strip("[]")
        if host.lower() == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_inspect(value: str | None, default_port: int = DEFAULT_INSPECTOR_PORT) -> InspectorAddress:
    """`--inspect`'s value: ``HOST:PORT``, ``PORT``, ``HOST`` or nothing (None or ""); raises UsageError."""
    if not value:
        return InspectorAddress(DEFAULT_INSPECTOR_HOST, default_port)
    host, port_text = DEFAULT_INSPECTOR_HOST, str(default_port)
    if value.startswith("["):  # [::1]:9229
        end = value.find("]")
        if end < 0 or (value[end + 1 :] and not value[end + 1 :].startswith(":")):
            raise UsageError(f"--inspect={value}: expected HOST:PORT, e.g. 127.0.0.1:{default_port}")
        host, port_text = value[1:end], value[end + 2 :] or port_text
    elif value.isdigit():
        port_text = value
    elif value.count(":") == 1:
        host, port_text = value.split(":")
        host = host or DEFAULT_INSPECTOR_HOST
    elif ":" in value:
        raise UsageError(f"--inspect={value}: write an IPv6 address in brackets, e.g. [::1]:{default_port}")
    else:
        host = value
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise UsageError(f"--inspect={value}: {port_text!r} is not a TCP port")
    if not host or any(c.isspace() for c in host):
        raise UsageError(f"--inspect={value}: expected HOST:PORT, e.g. 127.0.0.1:{default_port}")
    return InspectorAddress(host, int(port_text))


def _debugpy() -> Any:
    # pydevd warns on stderr, in plain text, that breakpoints in frozen modules (the standard
    # library's) may be missed; functions are never frozen, and a JSON log stream must stay JSON.
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    try:
        import debugpy
    except ImportError:
        raise UsageError(f"--inspect needs debugpy, which is not installed: {INSTALL_HINT}") from None
    return debugpy


def _check_address(address: InspectorAddress) -> None:
    """Raise UsageError naming `address` if the debugger could not listen there.

    debugpy binds its socket on a thread of its own: a bind that fails there is printed as that
    thread's traceback while `debugpy.listen` waits for ever. So the socket it would bind (IPv4,
    SO_REUSEADDR, as pydevd's) is bound here first, and closed.
    """
    host = address.host.strip("[]")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, address.port))
        except socket.gaierror as exc:
            if ":" in host:
                ipv4 = f"127.0.0.1:{address.port}"
                raise UsageError(
                    f"--inspect: cannot listen on {address}: debugpy takes IPv4 addresses, e.g. {ipv4}"
                ) from None
            raise UsageError(
                f"--inspect: cannot listen on {address}: cannot resolve {host!r} ({exc.strerror})"
            ) from None
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UsageError(
                    f"--inspect: cannot listen on {address}: port {address.port} is already in use"
                ) from None
            raise UsageError(f"--inspect: cannot listen on {address}: {exc.strerror or exc}") from None


def start_inspector(address: InspectorAddress, *, wait: bool, isolation: str) -> None:
    """Listen for a debugger at `address`; with `wait`, block until one has attached.

    Raises UsageError under process isolation, without debugpy, or when the address cannot be listened on.
    """
    if isolation != "inline":
        raise UsageError(
            "--inspect: functions run in worker processes under isolation process, where the debugger "
            "cannot stop them; serve with --isolation inline while debugging"
        )
    debugpy = _debugpy()
    _check_address(address)
    if not address.loopback:
        logger.warning(
            "the debugger listens on %s, off loopback: anyone who can reach it can run any code in this "
            "server; bind it to 127.0.0.1 and use an SSH tunnel instead",
            address,
        )
    try:
        # In this process: no adapter process to start, reap or keep out of a sandbox.
        debugpy.listen((address.host, address.port), in_process_debug_adapter=True)
    except (OSError, RuntimeError) as exc:
        raise UsageError(f"--inspect: cannot listen on {address}: {exc}") from None
    logger.info("Debugger listening on %s (debugpy): attach a client, e.g. VS Code (docs/debugging.md)", address)
    if wait:
        logger.info("waiting for a debugger to attach before serving (--inspect-wait)")
        debugpy.wait_for_client()
        logger.info("debugger attached")
