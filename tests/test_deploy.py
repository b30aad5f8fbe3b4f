"""The deployment examples in deploy/ and the LICENSE agree with the code they deploy.

Nothing is built or started here (no Docker on the test machines): each file is read as its
tool would read it, and every path, flag, timeout and port it names is checked against the
route table, the CLI parser and `Config`'s defaults, so a change to either side that leaves
the other behind fails here.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path

from trio_gateway.api.routes import ROUTES
from trio_gateway.runtime.cli import build_parser
from trio_gateway.runtime.config import Config
from trio_gateway.runtime.workers import KILL_GRACE

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DEFAULTS = Config()


def dockerfile() -> dict[str, list[str]]:
    """Instruction -> its arguments, one entry per occurrence (continuations joined)."""
    text = re.sub(r"\\\n\s*", " ", (DEPLOY / "Dockerfile").read_text())
    instructions: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, rest = line.strip().partition(" ")
            instructions.setdefault(name.upper(), []).append(rest.strip())
    return instructions


def unit() -> dict[str, list[str]]:
    """Directive -> its values, across every section of the systemd unit."""
    directives: dict[str, list[str]] = {}
    for line in (DEPLOY / "trio-gateway.service").read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            name, _, value = line.partition("=")
            directives.setdefault(name.strip(), []).append(value.strip())
    return directives


def nginx() -> str:
    # Comments out: they may name directives that are not in force.
    lines = (DEPLOY / "nginx.conf").read_text().splitlines()
    return "\n".join(line.partition("#")[0] for line in lines)


def assert_serve_arguments(argv: list[str]) -> None:
    """`argv` (after the program name) is a `serve` command the real parser accepts."""
    assert argv[0] == "serve"
    build_parser().parse_args(argv)


def test_the_image_runs_the_console_script_as_a_non_root_user_on_the_default_port() -> None:
    docker = dockerfile()
    assert docker["FROM"] == ["python:3.11-slim"]
    (cmd,) = docker["CMD"]
    program, *argv = json.loads(cmd)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert program in pyproject["project"]["scripts"]
    assert argv == ["serve", "--host", "0.0.0.0"]
    assert_serve_arguments(argv)
    assert docker["EXPOSE"] == [str(DEFAULTS.port)]
    assert docker["ENV"][-1] == f"TRIO_GATEWAY_PORT={DEFAULTS.port}"
    (user,) = docker["USER"]
    assert user not in ("root", "0")
    # Everything the package build reads is copied in.
    copied = " ".join(docker["COPY"]).split()
    assert {"pyproject.toml", "README.md", "LICENSE", "trio_gateway"} <= set(copied)


def test_the_image_healthcheck_asks_a_real_public_route_without_curl() -> None:
    (healthcheck,) = dockerfile()["HEALTHCHECK"]
    assert "curl" not in healthcheck
    assert "urllib.request" in healthcheck
    (path,) = re.findall(r"'(/api/[a-z/]+)'", healthcheck)
    assert "GET" in ROUTES[path]


def test_systemd_stops_with_sigterm_and_waits_longer_than_the_gateway_drains() -> None:
    directives = unit()
    assert directives["KillSignal"] == ["SIGTERM"]
    # The supervisor of --workers forwards the signal itself; the whole cgroup would make
    # it a second signal for every worker.
    assert directives["KillMode"] == ["mixed"]
    (timeout,) = directives["TimeoutStopSec"]
    # The longest a graceful stop may take: a worker's drain and close, then the
    # supervisor's grace before it kills that worker.
    assert float(timeout) > DEFAULTS.drain_timeout + DEFAULTS.close_timeout + KILL_GRACE
    assert directives["Restart"] == ["on-failure"]


def test_systemd_runs_a_valid_command_unprivileged_with_secrets_from_a_file() -> None:
    directives = unit()
    (exec_start,) = directives["ExecStart"]
    program, *argv = shlex.split(exec_start)
    assert program.endswith("/trio-gateway")
    assert_serve_arguments(argv)
    # Secrets never on the command line, where `ps` shows them.
    assert not {"--api-key", "--jwt-secret", "--redis-url", "--metrics-token"} & set(argv)
    assert directives["EnvironmentFile"]
    assert directives.get("DynamicUser") == ["yes"] or directives.get("User", ["root"]) != ["root"]
    assert directives["NoNewPrivileges"] == ["yes"]
    assert directives["ProtectSystem"] == ["strict"]


def test_nginx_keeps_idle_websockets_longer_than_the_gateway_does() -> None:
    config = nginx()
    timeouts = [int(seconds) for seconds in re.findall(r"proxy_read_timeout\s+(\d+)s;", config)]
    assert timeouts
    assert all(seconds > DEFAULTS.ping_interval + DEFAULTS.pong_timeout for seconds in timeouts)
    assert re.search(r"^\s*proxy_http_version 1\.1;", config, re.MULTILINE)
    assert re.search(r"map \$http_upgrade \$connection_upgrade", config)
    assert "proxy_set_header Upgrade $http_upgrade;" in config
    assert "proxy_set_header Connection $connection_upgrade;" in config
    assert "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;" in config
    for path in DEFAULTS.ws_paths:
        assert f"location = {path} {{" in config


def test_nginx_restricts_metrics_and_admits_every_body_the_gateway_does() -> None:
    config = nginx()
    metrics = config[config.index("location = /metrics {") :]
    metrics = metrics[: metrics.index("}")]
    assert "deny all;" in metrics
    (size,) = re.findall(r"client_max_body_size\s+(\d+)m;", config)
    assert int(size) * 1024 * 1024 >= DEFAULTS.max_body_size


def test_the_license_file_is_the_license_pyproject_declares() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["license"] == "MIT"
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n")
    assert "Copyright (c) 2026 trio_gateway contributors" in text


def test_operations_guide_references_every_deploy_file() -> None:
    guide = (ROOT / "docs" / "OPERATIONS.md").read_text()
    for path in sorted(DEPLOY.iterdir()):
        assert f"deploy/{path.name}" in guide, path.name
