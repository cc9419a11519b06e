"""TCP ports on this machine: one free to listen on, whether one is taken."""

from __future__ import annotations

import random
import socket

_QUIET_PORTS = range(20_000, 32_768)
"""Below Linux's default ephemeral range (32768-60999): a port the kernel hands out for port 0
is also what it picks for outgoing connections, so between choosing it and a server binding it
a busy machine's client sockets took it (a stack failed with 'address already in use')."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now, outside the ephemeral range if possible."""
    for _ in range(50):
        port = random.choice(_QUIET_PORTS)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
