"""The one way a shared-port TCP socket is made: SO_REUSEADDR + SO_REUSEPORT, IPv6-only.

`serve --workers N` works only if the supervisor's reserving sockets and every worker's
listening sockets carry exactly the same options, so both come from here.
"""

from __future__ import annotations

import trio


def reuse_port_socket(family: int, type_: int, proto: int) -> trio.socket.SocketType:
    """A socket other processes (same user, same options) may bind to the same port."""
    sock = trio.socket.socket(family, type_, proto)
    try:
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEPORT, 1)
        if family == trio.socket.AF_INET6:
            sock.setsockopt(trio.socket.IPPROTO_IPV6, trio.socket.IPV6_V6ONLY, 1)
    except OSError:
        sock.close()
        raise
    return sock
