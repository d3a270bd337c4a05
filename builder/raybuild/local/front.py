"""The front of `raybuild up`: HAProxy in a container, doing what a RayService's serve Service does.

KubeRay's serve Service selects the worker pods whose readiness probe passes, and that probe includes the
Serve proxy's `/-/healthz`; clients usually reach it through an Ingress or a Gateway. The front does the
same for the local cluster. Its backends are the workers' Serve ports on the cluster network, each in
rotation only while its proxy answers `/-/healthz`, checked at the readiness probe's period and failure
threshold (kuberay.py). Two modes, since Kubernetes users have both:

- ``service``: plain TCP forwarding with no retry, like kube-proxy. A request in flight on a worker that
  dies fails, and so does a new one sent there before the next health check sees the worker gone.
- ``ingress``: HTTP, with retries on another worker for idempotent requests whose connection failed or
  that got a 502/503 (a surviving proxy whose replica died), like common ingress controllers.

It listens on 127.0.0.1 only (a published port), and carries the cluster's labels, so `down` removes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from raybuild import kuberay
from raybuild.templating import BUNDLED_TEMPLATES, template_environment

FrontMode = Literal["service", "ingress"]
FRONT_MODES: tuple[str, ...] = get_args(FrontMode)
FRONT_PORT = 8000  # inside the container; published on an ephemeral port of 127.0.0.1
CONFIG_ENV = "HAPROXY_CFG"  # the front image's command writes this variable to HAProxy's config file
_TEMPLATE = "haproxy.cfg.j2"

# A connection to a worker that is gone (its IP no longer answers ARP) fails only at this timeout; kept
# short so that the ingress mode's retry goes to a live worker while the client still waits.
CONNECT_TIMEOUT_S = 2
# Longer than any request of the bundled apps, and than the drill client's own timeout (5 s).
REQUEST_TIMEOUT_S = 30
# Two more tries: with two workers per app, one of them reaches a live one.
RETRIES = 2


@dataclass(frozen=True)
class Backend:
    name: str  # HAProxy's server name: the worker container's name
    address: str  # IP:port on the cluster network


def haproxy_config(mode: FrontMode, backends: list[Backend]) -> str:
    """HAProxy's configuration for ``mode`` over ``backends`` (rendered from templates/front/)."""
    if mode not in FRONT_MODES:
        raise ValueError(f"unknown front mode {mode!r}")
    environment = template_environment([BUNDLED_TEMPLATES / "front"], {})
    return environment.get_template(_TEMPLATE).render(
        mode=mode,
        port=FRONT_PORT,
        connect_timeout_s=CONNECT_TIMEOUT_S,
        request_timeout_s=REQUEST_TIMEOUT_S,
        check_timeout_s=kuberay.PROBE_TIMEOUT_S,
        retries=RETRIES,
        health_path=kuberay.SERVE_HEALTH_PATH,
        period_s=kuberay.READINESS_PERIOD_S,
        failure_threshold=kuberay.READINESS_FAILURE_THRESHOLD,
        servers=backends,
    )
