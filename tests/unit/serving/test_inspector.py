"""`--inspect`'s address: loopback unless one is named, config.toml's inspector_port, bad values refused."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from edgeruntime.config.project import load_config
from edgeruntime.exceptions import ConfigError, UsageError
from edgeruntime.serving.inspector import InspectorAddress, parse_inspect, start_inspector


def test_the_default_is_loopback_on_deno_s_port_or_the_configured_one() -> None:
    assert parse_inspect(None) == InspectorAddress("127.0.0.1", 9229)
    assert parse_inspect("") == InspectorAddress("127.0.0.1", 9229)
    assert parse_inspect(None, 8083) == InspectorAddress("127.0.0.1", 8083)
    assert parse_inspect("5678", 8083) == InspectorAddress("127.0.0.1", 5678)
    assert parse_inspect(":5678") == InspectorAddress("127.0.0.1", 5678)


def test_a_named_host_is_used_and_said_to_be_off_loopback() -> None:
    named = parse_inspect("0.0.0.0:9230")
    assert named == InspectorAddress("0.0.0.0", 9230) and not named.loopback
    assert parse_inspect("localhost").loopback
    ipv6 = parse_inspect("[::1]:9231")
    assert ipv6 == InspectorAddress("::1", 9231) and ipv6.loopback and str(ipv6) == "[::1]:9231"


@pytest.mark.parametrize(
    "value", ["127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:port", "[::1", "[::1]x", "a b:1", "1:2:3:4:5"]
)
def test_bad_addresses_are_refused(value: str) -> None:
    with pytest.raises(UsageError, match="--inspect="):
        parse_inspect(value)


def test_inspector_port_in_config_toml_is_read_and_checked(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[edge_runtime]\ninspector_port = 8083\n")
    assert load_config(config, {}).inspector_port == 8083
    assert load_config(None, {}).inspector_port == 9229
    config.write_text('[edge_runtime]\ninspector_port = "8083"\n')
    with pytest.raises(ConfigError, match=r"config.toml: \[edge_runtime\] inspector_port: expected a TCP port"):
        load_config(config, {})


def test_without_debugpy_the_error_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "debugpy", None)  # import debugpy raises ImportError
    with pytest.raises(UsageError) as raised:
        start_inspector(InspectorAddress("127.0.0.1", 9229), wait=False, isolation="inline")
    assert str(raised.value) == "--inspect needs debugpy, which is not installed: pip install 'edgeruntime[debug]'"


def test_process_isolation_is_refused_before_anything_listens() -> None:
    with pytest.raises(UsageError, match="serve with --isolation inline while debugging"):
        start_inspector(InspectorAddress("127.0.0.1", 9229), wait=False, isolation="process")
