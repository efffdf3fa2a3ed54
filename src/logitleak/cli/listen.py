"""Where a server listens: refused in one sentence before anything loads, and whether it is loopback only."""

from __future__ import annotations

import ipaddress

from logitleak.errors import LogitleakError


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (``localhost`` or a loopback address)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_listen(host: str, port: int) -> None:
    """Fail in one sentence when ``host:port`` cannot be listened on (before loading anything)."""
    import socket

    if not 1 <= port <= 65535:
        raise LogitleakError(f"Port {port} is not valid; pass a number between 1 and 65535.")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as err:
        raise LogitleakError(f"Cannot listen on --host {host!r} ({err}); pass an address of this machine, "
                             "e.g. 127.0.0.1.") from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
        except OSError as err:
            raise LogitleakError(f"Cannot listen on {host}:{port} ({err.strerror or err}); choose another --port "
                                 "or stop what is using it.") from None
