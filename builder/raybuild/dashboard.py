"""The Ray dashboard's REST API as raybuild calls it: the seam between raybuild and a running Ray head.

The smoke test, the cold start and the local cluster deploy Serve and read its status through the dashboard,
as KubeRay's RayService controller does. The calls go through a ``Dashboard`` (the real one below, over
loopback HTTP; unit tests pass ``tests.unit.fakes.FakeDashboard``); ``raybuild.kuberay`` reads the answers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from raybuild.loopback import http

SERVE_APPLICATIONS_PATH = "/api/serve/applications/"
NODES_PATH = "/api/v0/nodes?limit=100"


class Dashboard(Protocol):
    """The dashboard's REST calls raybuild makes, the ones KubeRay's controllers make too.

    ``url`` is the dashboard's base URL (``http://127.0.0.1:PORT``). Each call answers ``(status, body)``,
    status 0 when nothing answered: reading the body is the callers' business (below), so a fake answers
    what a real dashboard would, bad bodies included.
    """

    def nodes(self, url: str) -> tuple[int, str]:
        """GET the state API's node list."""
        ...

    def applications(self, url: str) -> tuple[int, str]:
        """GET every Serve application's status."""
        ...

    def deploy_applications(self, url: str, config: Mapping[str, Any], timeout: float) -> tuple[int, str]:
        """PUT a whole Serve config (it replaces the running one)."""
        ...


class RayDashboard:
    """The real dashboard, over HTTP to 127.0.0.1 that no environment proxy sees."""

    def nodes(self, url: str) -> tuple[int, str]:
        return http("GET", f"{url}{NODES_PATH}", timeout=5)

    def applications(self, url: str) -> tuple[int, str]:
        return http("GET", f"{url}{SERVE_APPLICATIONS_PATH}")

    def deploy_applications(self, url: str, config: Mapping[str, Any], timeout: float) -> tuple[int, str]:
        return http("PUT", f"{url}{SERVE_APPLICATIONS_PATH}", dict(config), timeout=timeout)


RAY_DASHBOARD: Dashboard = RayDashboard()
