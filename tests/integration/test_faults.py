"""Faults on the Docker side, with the real daemon and `raybuild` run as a process, as CI runs it.

- Ownership: `down` with a broken Docker config, beside another checkout's objects of the same cluster name
  and unlabelled containers named like a word of the warning or like an ID; `down` with no daemon.
- SIGTERM during `build`, `test`, `up` and `measure`: exit 143, no container, network or temporary folder
  of the project left, and a rerun succeeds.
- `.env` never reaches an image (read back from `docker save`), and a registry that stalls or fails makes
  `publish` fail within its deadline, without stacking Docker's retries under raybuild's.

Everything runs in copies of the bundled project under the image namespace 127.0.0.1:5000/rbfaults and the
cluster name raybuild-faults, so no other test's images, records or cluster are touched.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from raybuild.config import LoadedConfig, load_config
from raybuild.engine import Engine
from raybuild.image import bases
from raybuild.image.build import Builder
from raybuild.labels import MANAGED_LABEL, PROJECT_LABEL, ROLE_LABEL, object_labels
from raybuild.local import cluster as local
from raybuild.records import load_build_record
from raybuild.state import build_record_path, cluster_record_path, project_id
from raybuild.verify.coldstart import measure_labels
from tests.integration.conftest import REPO_ROOT, copy_project
from tests.integration.docker_cli import docker

pytestmark = pytest.mark.docker

NAMESPACE = "127.0.0.1:5000/rbfaults"
CLUSTER = "raybuild-faults"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
BROKEN_CONFIG = '{"auths": "string"}'  # docker warns "cannot unmarshal string into Go struct field ..."


def make_copy(where: Path) -> LoadedConfig:
    root = copy_project(REPO_ROOT, where)
    toml = root / "raybuild.toml"
    text = toml.read_text().replace('"127.0.0.1:5000/raybuild-test"', f'"{NAMESPACE}"')
    text = text.replace('[cluster]\nname = "raybuild-serve"', f'[cluster]\nname = "{CLUSTER}"')
    assert NAMESPACE in text and CLUSTER in text, "the bundled raybuild.toml changed shape"
    toml.write_text(text)
    return load_config(toml)


def build_hello(engine: Engine, config: LoadedConfig) -> None:
    ca = HOST_CA if HOST_CA.is_file() else None
    Builder(config, engine, ca_bundle=ca).build(config.select(("hello",)))


@pytest.fixture(scope="module")
def project(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> LoadedConfig:
    config = make_copy(tmp_path_factory.mktemp("faults") / "project")
    build_hello(engine, config)
    return config


def ours(config: LoadedConfig) -> dict[str, str]:
    """Selects every object this checkout made, whatever its purpose."""
    return {MANAGED_LABEL: "true", PROJECT_LABEL: project_id(config)}


@dataclass
class Run:
    """`raybuild` as a process, with a temporary folder of its own and its output in files."""

    proc: subprocess.Popen[bytes]
    tmp: Path
    out: Path
    err: Path

    @property
    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    @property
    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    def wait(self, timeout: float = 900) -> int:
        return self.proc.wait(timeout=timeout)

    def children(self) -> list[str]:
        """The command lines of the process's children (Linux /proc)."""
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        try:
            pids = path.read_text().split()
        except OSError:
            return []
        lines = []
        for pid in pids:
            try:
                lines.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
            except OSError:
                continue
        return lines


def start(config: LoadedConfig, where: Path, *args: str, env: dict[str, str] | None = None) -> Run:
    where.mkdir(parents=True, exist_ok=True)
    tmp = where / "tmp"
    tmp.mkdir(exist_ok=True)
    out, err = where / f"out-{uuid.uuid4().hex[:6]}", where / f"err-{uuid.uuid4().hex[:6]}"
    environ = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT / "builder"),
        "TMPDIR": str(tmp),
        "RAYBUILD_CONFIG": str(config.path),
        **(env or {}),
    }
    environ.pop("RAYBUILD_DEBUG", None)
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "raybuild", *args], stdout=stdout, stderr=stderr, env=environ, cwd=where
        )
    return Run(proc, tmp, out, err)


def finish(config: LoadedConfig, where: Path, *args: str, env: dict[str, str] | None = None) -> Run:
    run = start(config, where, *args, env=env)
    run.wait()
    return run


def sigterm_when(run: Run, ready: Callable[[], bool], what: str, bound: float = 900) -> None:
    """SIGTERM as soon as ``ready()``; the test fails if the command ends first, or never gets there."""
    deadline = time.monotonic() + bound
    while not ready():
        if run.proc.poll() is not None:
            pytest.fail(f"raybuild ended (exit {run.proc.returncode}) before {what}:\n{run.stderr[-3000:]}")
        if time.monotonic() > deadline:
            run.proc.kill()
            pytest.fail(f"raybuild never reached {what}:\n{run.stderr[-3000:]}")
        time.sleep(0.2)
    run.proc.send_signal(signal.SIGTERM)
    code = run.wait(timeout=300)
    assert code == 143, run.stderr[-3000:]
    assert run.stderr.strip().splitlines()[-1] == (
        "interrupted (SIGTERM): cleaned up what this command started; nothing half-written was kept"
    )


def assert_nothing_left(engine: Engine, config: LoadedConfig, run: Run) -> None:
    assert engine.container_ids(ours(config)) == []
    assert engine.network_ids(ours(config)) == []
    assert list(run.tmp.iterdir()) == [], "temporary folders left behind"


# -- ownership ---------------------------------------------------------------------------------------------


@pytest.fixture
def strangers(engine: Engine, project: LoadedConfig, tmp_path: Path) -> Iterator[dict[str, str]]:
    """Containers raybuild never made, by name -> ID: unlabelled ones named like a word of Docker's warning
    and like an ID, and another checkout's cluster node with the same cluster name."""
    image = bases.ensure_redis(project, engine)
    other = make_copy(tmp_path / "other")
    assert local.cluster_name(other) == local.cluster_name(project)
    made: dict[str, str] = {}
    specs = {
        "unmarshal": {},  # a word of the broken-config warning
        uuid.uuid4().hex + uuid.uuid4().hex: {},  # 64 hex digits, like an ID
        f"{local.object_prefix(other)}-head": object_labels(
            project_id(other), "cluster", cluster=CLUSTER, role="head"
        ),
    }
    for name, labels in specs.items():
        flags = [arg for key, value in labels.items() for arg in ("--label", f"{key}={value}")]
        created = docker(engine, "create", "--name", name, *flags, image, stdout_only=True)
        made[name] = created.output.strip().splitlines()[-1]
    try:
        yield made
    finally:
        for container in made.values():
            docker(engine, "rm", "--force", container, check=False)


def test_down_with_a_broken_docker_config_removes_this_checkouts_objects_only(
    engine: Engine, project: LoadedConfig, strangers: dict[str, str], tmp_path: Path
) -> None:
    image = bases.ensure_redis(project, engine)
    labels = object_labels(project_id(project), "cluster", cluster=CLUSTER, role="gcs")
    flags = [arg for key, value in labels.items() for arg in ("--label", f"{key}={value}")]
    docker(engine, "create", "--name", f"{local.object_prefix(project)}-gcs", *flags, image)
    config_dir = tmp_path / "docker-config"
    config_dir.mkdir()
    (config_dir / "config.json").write_text(BROKEN_CONFIG)

    run = finish(project, tmp_path, "--debug", "down", env={"DOCKER_CONFIG": str(config_dir)})
    assert run.proc.returncode == 0, run.stderr
    assert run.stdout.strip() == "removed 1 containers and networks"
    left = docker(engine, "ps", "-a", "--no-trunc", "--format", "{{.ID}}", stdout_only=True).output.split()
    for name, container in strangers.items():
        assert container in left, f"{name} was removed"
    assert engine.container_ids(ours(project)) == []


def test_down_without_a_daemon_fails_and_keeps_the_record(project: LoadedConfig, tmp_path: Path) -> None:
    record = cluster_record_path(project)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text('{"kept": true}\n')
    try:
        run = finish(project, tmp_path, "down", env={"DOCKER_HOST": f"unix://{tmp_path}/no-daemon.sock"})
        assert run.proc.returncode == 1
        errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
        assert errors == ["error: the Docker daemon is not reachable"]
        assert "removed" not in run.stdout
        assert record.read_text() == '{"kept": true}\n'
    finally:
        record.unlink()


# -- SIGTERM mid-run --------------------------------------------------------------------------------------


def test_sigterm_during_a_build_leaves_no_context_and_no_tag(
    engine: Engine, project: LoadedConfig, tmp_path: Path
) -> None:
    (project.root / "apps" / "hello" / "sigterm_marker.py").write_text(f"MARK = {uuid.uuid4().hex!r}\n")
    before = build_record_path(project).read_text()
    run = start(
        project, tmp_path, "build", "hello", *(["--ca-bundle", str(HOST_CA)] if HOST_CA.is_file() else [])
    )
    sigterm_when(
        run,
        lambda: any(" build " in f" {line} " for line in run.children()),
        "the docker build",
    )
    assert_nothing_left(engine, project, run)
    assert build_record_path(project).read_text() == before, "no record of a build that did not finish"

    again = finish(project, tmp_path / "again", "build", "hello", "--json")
    assert again.proc.returncode == 0, again.stderr
    built = {image["app"]: image for image in json.loads(again.stdout)}
    assert engine.image_exists(built["hello"]["ref"]) and not built["hello"]["cached"]


def test_sigterm_during_a_smoke_test_removes_its_container(
    engine: Engine, project: LoadedConfig, tmp_path: Path
) -> None:
    smoke = object_labels(project_id(project), "smoke")
    run = start(project, tmp_path, "test", "hello")
    sigterm_when(run, lambda: bool(engine.container_ids(smoke)), "the smoke container")
    assert_nothing_left(engine, project, run)

    again = finish(project, tmp_path / "again", "test", "hello", "--timeout", "300")
    assert again.proc.returncode == 0, again.stderr
    assert again.stdout.startswith("ok: hello")
    assert engine.container_ids(ours(project)) == []


def test_sigterm_during_up_takes_the_half_started_cluster_down(
    engine: Engine, project: LoadedConfig, tmp_path: Path
) -> None:
    head = {**local.cluster_labels(project), ROLE_LABEL: "head"}
    run = start(project, tmp_path, "up", "hello")
    sigterm_when(run, lambda: bool(engine.container_ids(head)), "the head container")
    assert_nothing_left(engine, project, run)
    assert not cluster_record_path(project).exists()

    again = finish(project, tmp_path / "again", "up", "hello", "--json")
    try:
        assert again.proc.returncode == 0, again.stderr
        assert {node["role"] for node in json.loads(again.stdout)["nodes"]} == {
            "gcs",
            "head",
            "worker",
            "front",
        }
    finally:
        down = finish(project, tmp_path / "down", "down")
    assert down.proc.returncode == 0, down.stderr
    assert down.stdout.strip() == "removed 5 containers and networks"  # store, head, worker, front, network
    assert engine.container_ids(ours(project)) == [] and engine.network_ids(ours(project)) == []


@pytest.mark.registry
def test_sigterm_during_measure_removes_its_containers_and_network(
    engine: Engine, project: LoadedConfig, tmp_path: Path
) -> None:
    labels = measure_labels(project_id(project))
    out = tmp_path / "measure.json"
    run = start(project, tmp_path, "measure", "hello", "--runs", "1", "--no-pull", "--out", str(out))
    sigterm_when(run, lambda: bool(engine.network_ids(labels)), "the warm node's network")
    assert_nothing_left(engine, project, run)
    assert not out.exists()

    again = finish(
        project, tmp_path / "again", "measure", "hello", "--runs", "1", "--no-pull", "--out", str(out)
    )
    assert again.proc.returncode == 0, again.stderr
    assert json.loads(out.read_text())["apps"]["hello"]["startup"]["t_serve"] is not None
    assert engine.container_ids(ours(project)) == [] and engine.network_ids(ours(project)) == []


# -- what reaches an image --------------------------------------------------------------------------------


def test_a_dotenv_file_never_reaches_the_image(engine: Engine, tmp_path: Path) -> None:
    config = make_copy(tmp_path / "project")
    app = config.root / "apps" / "hello"
    secret, example = f"sk-live-{uuid.uuid4().hex}", f"example-{uuid.uuid4().hex}"
    (app / ".env").write_text(f"API_KEY={secret}\n")
    (app / "config").mkdir()
    (app / "config" / ".env.local").write_text(f"API_KEY={secret}\n")
    (app / ".env.example").write_text(f"API_KEY={example}\n")
    (app / ".raybuildignore").write_text("!.env.example\n")
    build_hello(engine, config)
    ref = str(load_build_record(config)["hello"].ref)
    saved = tmp_path / "image.tar"
    engine.save(ref, saved)
    found = {secret: False, example: False}
    with tarfile.open(saved) as archive:  # `docker save`: one uncompressed tar per layer
        for member in archive:
            layer = archive.extractfile(member) if member.name.endswith(".tar") else None
            if layer is None:
                continue
            data = layer.read()
            for marker in found:
                found[marker] = found[marker] or marker.encode() in data
    assert found[example], "the scan finds a file that was un-ignored (so it would find the secret too)"
    assert not found[secret], ".env content reached a layer"


# -- bounded pushes ---------------------------------------------------------------------------------------


class Registry(BaseHTTPRequestHandler):
    """A registry that answers the existence checks, then stalls on (or fails) every blob upload."""

    protocol_version = "HTTP/1.1"
    mode: ClassVar[str] = "stall"
    uploads: ClassVar[list[str]] = []
    release: ClassVar[threading.Event] = threading.Event()

    def _answer(self, status: int, headers: dict[str, str] | None = None, body: bytes = b"") -> None:
        self.send_response(status)
        self.send_header("Docker-Distribution-Api-Version", "registry/2.0")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/v2/":
            self._answer(200, {"Content-Type": "application/json"}, b"{}")
        else:
            self._answer(
                404, {"Content-Type": "application/json"}, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}'
            )

    def do_HEAD(self) -> None:
        self._answer(404)

    def do_POST(self) -> None:
        self.uploads.append(self.path)
        if self.mode == "fail":
            self._answer(500, body=b"boom")
            return
        name = self.path.split("/blobs/")[0]
        self._answer(202, {"Location": f"{name}/blobs/uploads/{uuid.uuid4()}", "Range": "0-0"})

    def do_PATCH(self) -> None:
        self.release.wait(600)  # never answers while the test runs: a stalled upload

    do_PUT = do_PATCH

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def stalling(request: pytest.FixtureRequest) -> Iterator[tuple[str, type[Registry]]]:
    handler = type(
        "Handler", (Registry,), {"mode": request.param, "uploads": [], "release": threading.Event()}
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", handler
    finally:
        handler.release.set()
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("stalling", ["stall", "fail"], indirect=True)
def test_publish_to_a_stalling_or_failing_registry_ends_within_its_deadline(
    engine: Engine, tmp_path: Path, stalling: tuple[str, type[Registry]]
) -> None:
    host, handler = stalling
    config = make_copy(tmp_path / "project")
    with config.path.open("a") as toml:
        toml.write("\n[limits]\nregistry_deadline_s = 20\n")
    config = load_config(config.path)
    build_hello(engine, config)
    target = f"{host}/rbfaults"
    run = finish(config, tmp_path, "publish", "hello", "--registry", target)
    assert run.proc.returncode == 1
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, run.stderr
    head = load_build_record(config)["_head"].ref.tag_or_latest
    if handler.mode == "stall":
        assert errors[0].startswith(f"error: registry {host}: push of {target}/ray-head:{head} stalled ")
        assert errors[0].endswith("stopped at the 20s deadline, nothing was recorded")
    else:
        assert errors[0].startswith(f"error: registry {host} kept failing (")
        attempts = [
            line for line in run.stderr.splitlines() if f"registry {host}: " in line and "attempt" in line
        ]
        assert len(attempts) == 3, "one line per retry, raybuild's own: 4 attempts"
        assert not any("Retrying in" in line for line in run.stderr.splitlines())
    assert handler.uploads, "the registry saw the upload start"
    assert not engine.image_exists(f"{target}/ray-head:{head}"), "the tag made for the registry is gone"
    assert not (config.root / ".raybuild" / "publish.json").exists()
