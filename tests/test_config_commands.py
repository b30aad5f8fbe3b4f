"""`trio-gateway genconfig` and `check-config FILE`, run as a user runs them (subprocesses)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import attrs
import pytest

from trio_gateway import Config
from trio_gateway.runtime.config import LogSettings

from .test_cli import run_command

EVERY_SETTING = [*attrs.fields_dict(Config), *attrs.fields_dict(LogSettings)]


async def _genconfig() -> str:
    result = await run_command("genconfig")
    assert result.returncode == 0
    assert result.stderr == b""
    return result.stdout.decode()


async def test_genconfig_prints_every_setting_at_its_default() -> None:
    text = await _genconfig()
    document = tomllib.loads(text)
    # Commented out: the settings whose default is no value, each with an example.
    commented = re.findall(r"^# (\w+) = ", text, re.MULTILINE)
    assert sorted([*document, *commented]) == sorted(EVERY_SETTING)
    assert set(commented) == {
        "api_keys",
        "jwt_secret",
        "jwt_public_key",
        "jwt_audience",
        "jwt_issuer",
        "auth_cookie",
        "allowed_origins",
        "redis_url",
        "command_url",
        "connect_url",
        "presence_topics",
        "metrics_token",
        "log_format",
    }
    defaults = {**attrs.asdict(Config()), **attrs.asdict(LogSettings())}
    assert {key: defaults[key] for key in document} == {
        key: tuple(value) if isinstance(value, list) else value for key, value in document.items()
    }
    # Each setting comes with its variable, and the alias of api_keys is named.
    assert "# flag --queue-depth, env TRIO_GATEWAY_QUEUE_DEPTH\nqueue_depth = 256\n" in text
    assert "env TRIO_GATEWAY_API_KEYS (or TRIO_GATEWAY_API_KEY)" in text
    assert '# redis_url = "redis://127.0.0.1:6379/0"' in text


async def test_genconfig_output_passes_check_config(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(await _genconfig())
    result = await run_command("check-config", str(path))
    assert (result.returncode, result.stdout, result.stderr) == (0, f"{path}: ok\n".encode(), b"")


async def test_genconfig_output_with_its_examples_uncommented_passes_too(tmp_path: Path) -> None:
    text = re.sub(r"^# (\w+ = )", r"\1", await _genconfig(), flags=re.MULTILINE)
    # Either JWT key, not both; the example public key file does not exist here.
    text = re.sub(r"^jwt_public_key = .*$", "", text, flags=re.MULTILINE)
    path = tmp_path / "gw.toml"
    path.write_text(text)
    result = await run_command("check-config", str(path))
    assert (result.returncode, result.stderr) == (0, b"")


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        pytest.param(
            "prot = 1\n", "prot: unknown setting; did you mean 'port'? (from gw.toml)", id="key"
        ),
        pytest.param(
            "queue_depth = 2\n", "queue_depth: must be at least 4 frames", id="queue-depth"
        ),
        pytest.param(
            'redis_url = "redis://:secret@h:port/0"\n',
            "redis_url: the port must be a number from 0 to 65535 (from gw.toml)",
            id="redis-url",
        ),
        pytest.param(
            'jwt_public_key = "gw.toml"\n',
            "jwt_public_key: gw.toml: not a PEM public key",
            id="jwt-key-file",
        ),
        pytest.param(
            "port = 8000\nport = 8001\n", "config: gw.toml is not valid TOML: ", id="syntax"
        ),
        pytest.param(
            None,
            "config: cannot read gw.toml: No such file or directory (from check-config)",
            id="missing",
        ),
    ],
)
async def test_check_config_refuses_a_bad_file_with_one_line(
    tmp_path: Path, toml: str | None, message: str
) -> None:
    if toml is not None:
        (tmp_path / "gw.toml").write_text(toml)
    result = await run_command("check-config", "gw.toml", cwd=tmp_path)
    stderr = result.stderr.decode()
    assert result.returncode == 2
    assert stderr.startswith(f"trio-gateway: invalid configuration: {message}")
    assert stderr.count("\n") == 1
    assert "secret" not in stderr
    assert result.stdout == b""


async def test_check_config_reads_the_file_alone(tmp_path: Path) -> None:
    (tmp_path / "gw.toml").write_text("port = 9000\n")
    # Variables that `serve` would read (and refuse) change nothing here.
    env = {"TRIO_GATEWAY_PORT": "http", "TRIO_GATEWAY_CONFIG": "absent.toml"}
    result = await run_command("check-config", "gw.toml", cwd=tmp_path, **env)
    assert (result.returncode, result.stdout, result.stderr) == (0, b"gw.toml: ok\n", b"")
