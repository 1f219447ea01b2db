"""Network address rules shared by the gRPC service and the ZeroMQ links, and free loopback ports.

`is_loopback` decides when a port may go without authentication: the reward service refuses a
non-loopback bind without a token (`critique.security`), the ZeroMQ links without CURVE
(`stream.sockets`). Left out: resolving host names (a name other than localhost may point anywhere,
so it counts as exposed).
"""

from __future__ import annotations

import ipaddress
import os
import random
import socket


def is_loopback(host: str) -> bool:
    """True for localhost and loopback IPs, IPv6 in brackets included ("[::1]")."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name other than localhost may resolve anywhere
        return False


_HANDED_OUT: set[int] = set()
_PICK = random.Random(os.getpid())


def free_port(host: str = "127.0.0.1") -> int:
    """A port that binds now, for a process started next to bind. Picked below the kernel's
    ephemeral range (32768+): a port bind(0) hands out can be taken by any outgoing connection (a
    ZeroMQ or gRPC reconnect) before its service binds it (seen in CI: torchrun's store, EADDRINUSE).
    Never the same port twice in one process."""
    while True:
        port = _PICK.randrange(20000, 32000)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
