"""The client library stands alone: importing it loads none of the server."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# What a client process may load of our package: the client itself and what it shares with
# the server (the sans-IO protocol and the pure helpers).
ALLOWED = ("trio_gateway.client", "trio_gateway.protocol", "trio_gateway.common")
FORBIDDEN_LIBRARIES = ("coredis", "jwt", "cryptography")


@pytest.mark.parametrize("module", ["trio_gateway.client", "trio_gateway.client.http"])
def test_the_client_imports_nothing_of_the_server(module: str) -> None:
    probe = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = json.loads(done.stdout)
    ours = [name for name in loaded if name.split(".")[0] == "trio_gateway"]
    assert [
        name
        for name in ours
        if name not in ("trio_gateway", "trio_gateway._version") and not name.startswith(ALLOWED)
    ] == []
    assert [name for name in loaded if name.split(".")[0] in FORBIDDEN_LIBRARIES] == []
