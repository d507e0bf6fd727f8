"""compose.yaml: its services reference each other and the Dockerfile (`docker compose config` is not here)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.deploy.image import REPO, Dockerfile

COMPOSE = REPO / "compose.yaml"
# The server's default `--graceful-exit-timeout` (docs/cli.md).
GRACEFUL_EXIT_DEFAULT_SEC = 15.0
_VARIABLE = re.compile(r"\$(?:(?P<escaped>\$)|(?P<plain>[A-Za-z_]\w*)|\{(?P<braced>[^}]*)\})")


class UnsetVariable(Exception):
    """A `${NAME:?message}` whose variable is unset: compose refuses to start."""


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's variable substitution: `$$`, `$NAME`, `${NAME}`, `${NAME:-default}`, `${NAME:?error}`."""

    def substitute(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        if match.group("plain"):
            return env.get(match.group("plain"), "")
        expression = match.group("braced")
        parts = re.fullmatch(r"([A-Za-z_]\w*)(?:(:?[-?])(.*))?", expression, re.S)
        if parts is None:
            raise ValueError(f"invalid interpolation: ${{{expression}}}")
        name, operator, argument = parts.groups()
        value = env.get(name)
        unset = value is None or (operator is not None and operator.startswith(":") and value == "")
        if operator in ("-", ":-"):
            return argument if unset else str(value)
        if operator in ("?", ":?"):
            if unset:
                raise UnsetVariable(f"{name}: {argument}")
            return str(value)
        return value or ""

    return _VARIABLE.sub(substitute, value)


def resolved(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [resolved(item, env) for item in node]
    if isinstance(node, dict):
        return {key: resolved(value, env) for key, value in node.items()}
    return node


def load(env: Mapping[str, str]) -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    result: dict[str, Any] = resolved(data, env)
    return result


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's `environment`, as a mapping or a list of NAME=value."""
    raw = service.get("environment", {})
    if isinstance(raw, list):
        return dict(item.split("=", 1) for item in raw)
    return {key: str(value) for key, value in raw.items()}


def seconds(duration: str) -> float:
    """A compose duration (`1m30s`, `45s`, `500ms`) in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


ENV = {"POSTGRES_PASSWORD": "0123456789abcdef"}


def test_the_database_password_has_no_default() -> None:
    env = {"A": "1", "EMPTY": ""}
    assert interpolate("$A ${A} $$A ${B:-x} ${EMPTY:-y} ${EMPTY-z} ${A:?no}", env) == "1 1 $A x y  1"
    with pytest.raises(UnsetVariable, match="B: set B"):
        interpolate("${B:?set B}", env)
    # A published compose file with a default password would run that password in production.
    with pytest.raises(UnsetVariable, match="POSTGRES_PASSWORD"):
        load({})
    with pytest.raises(UnsetVariable, match="POSTGRES_PASSWORD"):
        load({"POSTGRES_PASSWORD": ""})


def test_edgeruntime_waits_for_a_healthy_database_it_can_log_in_to() -> None:
    compose = load(ENV)
    services = compose["services"]
    edge = services["edgeruntime"]
    url = urlsplit(environment(edge)["EDGERUNTIME_DATABASE_URL"])
    assert url.scheme in ("postgresql", "postgres")
    db_name = url.hostname
    assert db_name in services, f"{url.hostname} is not a service"
    db = services[db_name]
    assert edge["depends_on"][db_name]["condition"] == "service_healthy"
    db_env = environment(db)
    assert url.username == db_env["POSTGRES_USER"]
    assert url.password == db_env["POSTGRES_PASSWORD"] == ENV["POSTGRES_PASSWORD"]
    assert url.path.lstrip("/") == db_env.get("POSTGRES_DB", db_env["POSTGRES_USER"])
    assert url.port in (None, 5432)
    test = db["healthcheck"]["test"]
    assert test[0] in ("CMD", "CMD-SHELL")
    command = " ".join(test[1:])
    assert "pg_isready" in command
    assert f"-U {db_env['POSTGRES_USER']}" in command and f"-d {url.path.lstrip('/')}" in command
    assert not db.get("ports"), "the database is published outside the compose network"


def test_named_volumes_are_declared() -> None:
    compose = load(ENV)
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source", "")
            if source and not source.startswith((".", "/", "~")):
                assert source in declared, f"{name}: volume {source} is not declared"


def test_edgeruntime_is_the_repositorys_image_on_its_port() -> None:
    service = load(ENV)["services"]["edgeruntime"]
    build = service["build"]
    context = COMPOSE.parent / (build if isinstance(build, str) else build.get("context", "."))
    dockerfile = context / ("Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile"))
    assert dockerfile.resolve() == (REPO / "Dockerfile").resolve()
    final = Dockerfile.parse(dockerfile).final
    expose = final.last("EXPOSE")
    cmd = final.last("CMD")
    assert expose is not None and cmd is not None
    for mapping in service["ports"]:
        host, published, target = str(mapping).rsplit(":", 2)
        # Loopback only: a proxy on the host faces the network, as docs/deployment.md advises.
        assert host == "127.0.0.1", mapping
        assert target == expose.args[0], mapping
        assert published.isdigit()
    # Reaps what the server's children leave behind; the server as PID 1 does not.
    assert service.get("init") is True
    timeout = GRACEFUL_EXIT_DEFAULT_SEC
    if "--graceful-exit-timeout" in cmd.args:
        timeout = float(cmd.args[cmd.args.index("--graceful-exit-timeout") + 1])
    # Docker's default 10 s would SIGKILL the server while it still drains `wait_until` work.
    assert seconds(service["stop_grace_period"]) > timeout


def test_the_file_is_found_where_compose_looks() -> None:
    # `docker compose up` in the repository reads compose.yaml; a second file would be ambiguous.
    names = ("compose.yaml", "compose.yml", "docker-compose.yaml", "docker-compose.yml")
    assert [n for n in names if (REPO / n).exists()] == ["compose.yaml"]
