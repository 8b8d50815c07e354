"""Small socket helpers shared by the simulator, its tests and benchmarks (standard library only)."""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if a TCP connect to host:port succeeds now."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    """Poll `check` until it is true or `timeout` seconds pass; returns the last result."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def wait_port(host: str, port: int, timeout: float = 10.0) -> bool:
    """Wait until host:port accepts TCP connections."""
    return wait_until(lambda: port_open(host, port), timeout)


def http_ok(url: str, timeout: float = 1.0) -> bool:
    """True if GET url answers 2xx (used to wait for a control API)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return 200 <= resp.status < 300
    except OSError:
        return False


def port_free(host: str, port: int, udp: bool = False) -> bool:
    """True if a server could listen on host:port now: a bind test (SO_REUSEADDR, as servers set it, so a
    port left in TIME_WAIT counts as free), which also sees a listener on another address or 0.0.0.0."""
    kind = socket.SOCK_DGRAM if udp else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as s:
        if not udp:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            if not udp:
                s.listen(1)
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now (tests use it to avoid clashes between runs)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """`n` distinct free TCP ports, held open together so they cannot repeat."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind((host, 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port_block(n: int, host: str = "127.0.0.1", start: int = 20000, stop: int = 60000) -> int:
    """First port of `n` consecutive free TCP ports (ONVIF gives each camera base + index)."""
    for base in range(start, stop - n, max(n, 1) + 7):
        socks: list[socket.socket] = []
        try:
            for port in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind((host, port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise OSError(f"no block of {n} free ports on {host}")


def send_json(handler: BaseHTTPRequestHandler, status: int, body: Any) -> None:
    """Answer a request of the simulator's fault control with a JSON body."""
    data = json.dumps(body, ensure_ascii=False).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)
