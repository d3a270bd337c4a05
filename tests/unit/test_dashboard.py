"""The real dashboard client against a tiny HTTP server on 127.0.0.1: the requests KubeRay's controllers
send (method, path, body), and the answers passed back as they came. The fake beside it is checked too:
it refuses a call its test did not set up."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from raybuild import kuberay
from raybuild.dashboard import RAY_DASHBOARD
from raybuild.errors import ClusterError
from raybuild.loopback import free_port
from tests.unit.fakes import FakeDashboard

Request = tuple[str, str, object]


@pytest.fixture
def ray_dashboard() -> Iterator[tuple[str, list[Request]]]:
    """A dashboard at a free port: GET answers 200 with a body naming the path, PUT answers 400."""
    requests: list[Request] = []

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, status: int, body: str) -> None:
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            requests.append(("GET", self.path, None))
            self._reply(200, json.dumps({"path": self.path}))

        def do_PUT(self) -> None:
            length = int(self.headers["Content-Length"])
            requests.append(("PUT", self.path, json.loads(self.rfile.read(length))))
            self._reply(400, "bad config")

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", requests
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_the_real_dashboard_sends_what_kuberay_sends(ray_dashboard: tuple[str, list[Request]]) -> None:
    url, requests = ray_dashboard
    assert RAY_DASHBOARD.nodes(url) == (200, json.dumps({"path": "/api/v0/nodes?limit=100"}))
    assert RAY_DASHBOARD.applications(url) == (200, json.dumps({"path": "/api/serve/applications/"}))
    config = {"applications": [{"name": "demo"}]}
    assert RAY_DASHBOARD.deploy_applications(url, config, timeout=5) == (400, "bad config")
    assert requests == [
        ("GET", "/api/v0/nodes?limit=100", None),
        ("GET", "/api/serve/applications/", None),
        ("PUT", "/api/serve/applications/", config),
    ]


def test_a_dashboard_that_does_not_answer_is_status_0() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    assert RAY_DASHBOARD.applications(url)[0] == 0
    assert kuberay.serve_status(url) == {}


def test_the_fake_refuses_a_call_it_was_not_set_up_for() -> None:
    dashboard = FakeDashboard(applications=(200, "{}"))
    with pytest.raises(AssertionError, match="unexpected dashboard call deploy on http://d"):
        kuberay.deploy("http://d", {}, ClusterError, api=dashboard)
    assert dashboard.calls == []


def test_the_fake_answers_a_list_in_turn_and_repeats_the_last() -> None:
    dashboard = FakeDashboard(nodes=[(0, "refused"), (200, "a"), (200, "b")])
    assert [dashboard.nodes("http://d") for _ in range(4)] == [
        (0, "refused"),
        (200, "a"),
        (200, "b"),
        (200, "b"),
    ]
