"""The front's HAProxy configuration: the serve Service's behaviour in service mode, an Ingress's in
ingress mode, and the readiness probe's period and threshold for both."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from raybuild import kuberay
from raybuild.local.front import Backend, haproxy_config

BACKENDS = [Backend("w-1", "172.29.213.20:8000"), Backend("w-2", "172.29.213.21:8000")]


def lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


@pytest.mark.parametrize("mode", ["service", "ingress"])
def test_every_worker_is_checked_like_the_readiness_probe(mode: str) -> None:
    config = lines(haproxy_config(mode, BACKENDS))  # type: ignore[arg-type]
    assert "option httpchk GET /-/healthz" in config
    assert "http-check expect status 200" in config
    period, threshold = kuberay.READINESS_PERIOD_S, kuberay.READINESS_FAILURE_THRESHOLD
    assert f"default-server check inter {period}s fall {threshold} rise 1" in config
    assert [line for line in config if line.startswith("server ")] == [
        "server w-1 172.29.213.20:8000",
        "server w-2 172.29.213.21:8000",
    ]
    assert "bind :8000" in config  # inside the container; published on 127.0.0.1 only


def test_service_mode_forwards_tcp_once_like_kube_proxy() -> None:
    config = lines(haproxy_config("service", BACKENDS))
    assert "mode tcp" in config and "retries 0" in config
    assert not [line for line in config if line.startswith(("retry-on", "option redispatch", "mode http"))]


def test_ingress_mode_retries_idempotent_requests_on_another_worker() -> None:
    config = lines(haproxy_config("ingress", BACKENDS))
    assert "mode http" in config
    assert "retry-on conn-failure empty-response 502 503" in config
    assert "option redispatch 1" in config
    assert "retries 2" in config
    assert "http-request disable-l7-retry if METH_POST || { method PATCH }" in config


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown front mode 'gateway'"):
        haproxy_config("gateway", BACKENDS)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["service", "ingress"])
def test_haproxy_accepts_the_configuration(mode: str, tmp_path: Path) -> None:
    """`haproxy -c` on the host (Debian's, which scripts/setup installs) checks what the front image runs."""
    binary = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("haproxy is not installed, and CI=true requires it: run scripts/setup")
        pytest.skip("haproxy is not installed (scripts/setup installs Debian's)")
    config = tmp_path / "haproxy.cfg"
    config.write_text(haproxy_config(mode, BACKENDS))  # type: ignore[arg-type]
    result = subprocess.run([binary, "-c", "-f", str(config)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
