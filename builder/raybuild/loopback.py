"""Talking to what raybuild serves on this host: HTTP on 127.0.0.1 only, and bounded waits.

Every URL raybuild requests itself is on 127.0.0.1 (published container ports, the local registry), so an
HTTP(S)_PROXY in the environment must never see it: corporate proxies either refuse loopback or, worse,
answer for it.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

LOOPBACK = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http(method: str, url: str, payload: Any = None, timeout: float = 5.0) -> tuple[int, str]:
    """(status, body); status 0 when nothing answered."""
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with LOOPBACK.open(request, timeout=timeout) as response:
            return int(response.status), response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as exc:
        return 0, str(exc)


def wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.25) -> bool:
    """Poll ``check`` until it is true or ``timeout`` seconds have passed; every wait has a deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return False


def free_port() -> int:
    """A free port on 127.0.0.1, chosen up front: Docker gives an ephemeral port a new number on restart."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
