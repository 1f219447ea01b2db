"""Network address rules shared by the gRPC service and the ZeroMQ links.

`is_loopback` decides when a port may go without authentication: the reward service refuses a
non-loopback bind without a token (`critique.security`), the ZeroMQ links without CURVE
(`stream.sockets`). Left out: resolving host names (a name other than localhost may point anywhere,
so it counts as exposed).
"""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """True for localhost and loopback IPs, IPv6 in brackets included ("[::1]")."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name other than localhost may resolve anywhere
        return False
