"""The gateway configuration the in-process measurements share (idle_memory.py,
publish_latency.py). Owns nothing else.

Loopback only, one API key, no keepalive cycle inside a measurement, and no per-IP or
handshake cap: every client of a measurement comes from 127.0.0.1 at once.
"""

from __future__ import annotations

from trio_gateway import Config


def measuring_config(token: str) -> Config:
    return Config(
        host="127.0.0.1",
        port=0,
        api_keys=(token,),
        ping_interval=3600.0,
        max_connections_per_ip=0,
        max_handshakes=0,
    )
