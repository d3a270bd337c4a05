"""Faults a real run meets: the Docker daemon down, the registry going away mid-publish, Ctrl-C during lock,
build and publish, and an app that fails to deploy during `raybuild test`.

Each test starts from a working state (lockfiles, a build record, a publish record), injects the fault,
and checks three things: the command fails with one `error:` line, what was there before is exactly as
it was (no half-written lockfile, record or tag), and running the command again once the fault is gone
succeeds. Ctrl-C is sent as a terminal sends it, to the whole process group, once the command has said
that the step is under way.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from raybuild.cli import publish as publish_cli
from raybuild.config import LoadedConfig, load_config
from raybuild.engine import Engine
from raybuild.image.build import Builder, stage_context
from raybuild.lock import lockfile
from raybuild.ship.publish import Publisher
from raybuild.state import build_record_path, failure_log_path, publish_record_path
from raybuild.tags import image_ref
from tests.integration.conftest import REPO_ROOT, copy_project
from tests.integration.docker_cli import docker

CA = Path("/etc/ssl/certs/ca-certificates.crt")
INTERRUPTED = "interrupted (SIGINT): cleaned up what this command started; nothing half-written was kept"
# A constructor that raises: the app imports (so the build's import check passes), and fails in Serve.
BROKEN_APP = """\
from ray import serve


def load_model(path):
    raise FileNotFoundError(f"model file {path} is missing")


@serve.deployment
class Hello:
    def __init__(self) -> None:
        self.model = load_model("/models/m.bin")

    async def __call__(self, request) -> str:
        return "never"


app = Hello.bind()
"""


def tree(folder: Path) -> dict[str, str]:
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def _ca_args() -> list[str]:
    return ["--ca-bundle", str(CA)] if CA.is_file() else []


NAMESPACE = "127.0.0.1:5000/raybuild-recovery"  # this module's images only: their tags go when it ends


@pytest.fixture(scope="module")
def built(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A copy of the bundled project with hello (and the head image) built: its build record is there."""
    root = copy_project(REPO_ROOT, tmp_path_factory.mktemp("recovery") / "project")
    toml = root / "raybuild.toml"
    toml.write_text(toml.read_text().replace("127.0.0.1:5000/raybuild-test", NAMESPACE))
    config = load_config(toml)
    Builder(config, engine, ca_bundle=CA if CA.is_file() else None).build(config.select(("hello",)))
    yield root
    listed = docker(engine, "images", "--format", "{{.Repository}}:{{.Tag}}", check=False).output
    for ref in listed.split():
        if ref.startswith(NAMESPACE + "/"):
            engine.remove_image(ref)


@pytest.fixture
def project(built: Path, tmp_path: Path) -> Path:
    """This test's own copy of the built project (the images are shared; the records are its own)."""
    return Path(shutil.copytree(built, tmp_path / "project"))


def change_code(root: Path) -> None:
    """A code-only change: `raybuild build hello` makes a new image, from cached layers but the last."""
    code = root / "apps" / "hello" / "hello_app.py"
    code.write_text(code.read_text() + f"\n# change {uuid.uuid4().hex}\n")


def next_ref(root: Path) -> str:
    """The tag `raybuild build hello` would give the project as it is now."""
    config = load_config(root / "raybuild.toml")
    (app,) = config.select(("hello",))
    context = root.parent / f"context-{uuid.uuid4().hex[:6]}"
    context.mkdir()
    try:
        return image_ref(config, app, stage_context(config, app, context))
    finally:
        shutil.rmtree(context)


def raybuild(root: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """raybuild as a user runs it: its own process, the project's config."""
    return subprocess.run(
        [sys.executable, "-m", "raybuild", "--config", str(root / "raybuild.toml"), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "builder"), **(env or {})},
        timeout=900,
        check=False,
    )


def interrupt_when(root: Path, marker: str, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run raybuild and press Ctrl-C (SIGINT to its process group) when ``marker`` shows on stderr."""
    process = subprocess.Popen(
        [sys.executable, "-m", "raybuild", "--config", str(root / "raybuild.toml"), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a shell gives a foreground job
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "builder"), **(env or {})},
    )
    # A bound on the whole run, so that a marker that never comes fails the test instead of hanging it.
    watchdog = threading.Timer(900, lambda: os.killpg(process.pid, signal.SIGKILL))
    watchdog.start()
    seen = []
    try:
        assert process.stderr is not None
        for line in process.stderr:
            seen.append(line)
            if marker in line:
                os.killpg(process.pid, signal.SIGINT)
                break
        seen.append(process.stderr.read())
        code = process.wait()
    finally:
        watchdog.cancel()
    stderr = "".join(seen)
    assert any(marker in line for line in seen), f"{marker!r} never showed:\n{stderr}"
    # Nothing of the group may be left running (resolver, docker client). Its children got the same SIGINT
    # and may take a moment longer than raybuild itself to exit on a loaded machine: give them a few seconds.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    with pytest.raises(ProcessLookupError):
        os.killpg(process.pid, 0)
    return code, stderr


def assert_interrupted(stderr: str) -> None:
    """Ctrl-C ends the command with one line of its own: no traceback, no error line besides it."""
    assert "Traceback" not in stderr, stderr
    assert stderr.strip().splitlines()[-1] == INTERRUPTED, stderr
    assert not [line for line in stderr.splitlines() if line.startswith("error: ")], stderr


def one_error(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    return errors[0]


# -- the Docker daemon down --------------------------------------------------------------------------------


@pytest.mark.docker
@pytest.mark.parametrize(
    "command",
    [
        ["build", "hello", *_ca_args()],
        ["test", "hello"],
        ["publish", "hello", "--registry", "127.0.0.1:5000/faults"],
    ],
    ids=["build", "test", "publish"],
)
def test_daemon_down_is_one_line_and_changes_nothing(
    project: Path, tmp_path: Path, command: list[str], run_main: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    change_code(project)
    before = tree(project)
    socket_path = f"unix://{tmp_path}/no-daemon.sock"
    monkeypatch.setenv("DOCKER_HOST", socket_path)
    result = run_main("--config", str(project / "raybuild.toml"), *command)
    assert result.exit_code == 1
    assert one_error(result.stderr) == "error: the Docker daemon is not reachable"
    assert f"DOCKER_HOST is {socket_path}" in result.stderr
    assert "template:" not in result.stderr
    assert tree(project) == before

    monkeypatch.delenv("DOCKER_HOST")
    again = raybuild(project, "build", "hello", *_ca_args())
    assert again.returncode == 0, again.stderr


# -- Ctrl-C -----------------------------------------------------------------------------------------------


@pytest.fixture
def hanging_index() -> Iterator[str]:
    """An index that accepts connections and never answers: a resolve against it is still running."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}/simple"
    stop.set()
    thread.join()
    for connection in held:
        connection.close()
    server.close()


@pytest.mark.network
def test_ctrl_c_during_lock_keeps_every_lockfile(project_copy: Path, hanging_index: str) -> None:
    project = project_copy  # lockfiles only: nothing is built
    (project / "apps" / "hello" / "requirements.in").write_text("orjson\ntomli-w\n")
    lockfiles = project / "lockfiles"
    before = tree(lockfiles)
    # The resolver reads its index from UV_DEFAULT_INDEX when raybuild.toml names none: this run's hangs.
    code, stderr = interrupt_when(
        project, "locking hello", "lock", "hello", env={"UV_DEFAULT_INDEX": hanging_index}
    )
    assert code == 130, stderr
    assert_interrupted(stderr)
    assert tree(lockfiles) == before, "a lockfile changed, or a temporary file was left beside them"

    again = raybuild(project, "lock", "hello")
    assert again.returncode == 0, again.stderr
    assert "tomli-w==" in (lockfiles / "hello.txt").read_text()
    found = lockfile.read(lockfiles / "hello.txt")
    assert found is not None and found.problem is None
    assert raybuild(project, "lock", "--check").returncode == 0


@pytest.mark.docker
def test_ctrl_c_during_build_keeps_the_record_and_tags_nothing(engine: Engine, project: Path) -> None:
    change_code(project)
    record = build_record_path(load_config(project / "raybuild.toml")).read_bytes()
    new_ref = next_ref(project)
    assert not engine.image_exists(new_ref)
    code, stderr = interrupt_when(project, "building hello ->", "build", "hello", *_ca_args())
    assert code == 130, stderr
    assert_interrupted(stderr)
    assert build_record_path(load_config(project / "raybuild.toml")).read_bytes() == record
    assert not engine.image_exists(new_ref), "an interrupted build left its tag"

    again = raybuild(project, "build", "hello", *_ca_args())
    assert again.returncode == 0, again.stderr
    assert engine.image_exists(new_ref)
    assert new_ref in build_record_path(load_config(project / "raybuild.toml")).read_text()
    engine.remove_image(new_ref)


@pytest.fixture
def namespace(engine: Engine) -> Iterator[str]:
    name = f"127.0.0.1:5000/recovery-{uuid.uuid4().hex[:10]}"
    yield name
    listed = docker(engine, "images", "--format", "{{.Repository}}:{{.Tag}}", check=False).output
    for ref in listed.split():
        if ref.startswith(name + "/"):
            engine.remove_image(ref)


OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy for 127.0.0.1


def _registry_answers(address: str) -> bool:
    try:
        with OPENER.open(f"http://{address}/v2/", timeout=2):
            return True
    except OSError:
        return False


@pytest.mark.docker
@pytest.mark.registry
def test_ctrl_c_during_publish_keeps_the_record(engine: Engine, project: Path, namespace: str) -> None:
    if not _registry_answers("127.0.0.1:5000"):
        pytest.fail("no registry on 127.0.0.1:5000; scripts/setup starts it", pytrace=False)
    first = raybuild(project, "publish", "hello", "--registry", namespace)
    assert first.returncode == 0, first.stderr
    config = load_config(project / "raybuild.toml")
    record = publish_record_path(config).read_bytes()
    change_code(project)
    assert raybuild(project, "build", "hello", *_ca_args()).returncode == 0

    code, stderr = interrupt_when(project, "pushing hello", "publish", "hello", "--registry", namespace)
    assert code == 130, stderr
    assert_interrupted(stderr)
    assert publish_record_path(config).read_bytes() == record

    again = raybuild(project, "publish", "hello", "--registry", namespace)
    assert again.returncode == 0, again.stderr
    assert publish_record_path(config).read_bytes() != record
    engine.remove_image(next_ref(project))


# -- the registry going away during publish ----------------------------------------------------------------


class OwnRegistry:
    """A docker-registry of this test's own, on a free port, that the test can stop and start again."""

    def __init__(self, root: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.address = f"127.0.0.1:{probe.getsockname()[1]}"
        root.mkdir(parents=True, exist_ok=True)
        self.config = root / "config.yml"
        self.config.write_text(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
            f"    rootdirectory: {root / 'data'}\nhttp:\n  addr: {self.address}\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("docker-registry")
        if binary is None:
            pytest.fail("docker-registry is not installed; scripts/setup installs it", pytrace=False)
        self.process = subprocess.Popen([binary, "serve", str(self.config)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)  # fmt: skip
        for _ in range(60):
            if _registry_answers(self.address):
                return
            time.sleep(0.25)
        pytest.fail(f"the test's registry did not answer on {self.address}", pytrace=False)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
            self.process = None


@pytest.fixture
def own_registry(tmp_path: Path) -> Iterator[OwnRegistry]:
    registry = OwnRegistry(tmp_path / "registry")
    registry.start()
    yield registry
    registry.stop()


@pytest.mark.docker
@pytest.mark.registry
def test_registry_down_during_publish_keeps_the_record_and_a_rerun_succeeds(
    engine: Engine,
    project: Path,
    own_registry: OwnRegistry,
    run_main: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    namespace = f"{own_registry.address}/faults"
    args = ("--config", str(project / "raybuild.toml"), "publish", "hello", "--registry", namespace)
    assert run_main(*args).exit_code == 0
    config: LoadedConfig = load_config(project / "raybuild.toml")
    record = publish_record_path(config).read_bytes()
    change_code(project)
    assert raybuild(project, "build", "hello", *_ca_args()).returncode == 0

    def progress_that_stops_the_registry(message: str) -> None:
        if message.startswith("pushing hello"):
            own_registry.stop()  # the head is already there; hello's push finds nobody

    # The command passes its own progress to the Publisher; retries do not wait here.
    monkeypatch.setattr(publish_cli, "Publisher", partial(Publisher, sleep=lambda seconds: None))
    monkeypatch.setattr(publish_cli, "progress", progress_that_stops_the_registry)
    result = run_main(*args)
    assert result.exit_code == 1
    assert one_error(result.stderr).startswith(f"error: registry {own_registry.address} is not reachable")
    assert publish_record_path(config).read_bytes() == record

    own_registry.start()
    monkeypatch.undo()
    again = run_main(*args)
    assert again.exit_code == 0, again.stderr
    assert publish_record_path(config).read_bytes() != record
    engine.remove_image(next_ref(project))
    listed = docker(engine, "images", "--format", "{{.Repository}}:{{.Tag}}", check=False).output
    for ref in listed.split():
        if ref.startswith(namespace + "/"):
            engine.remove_image(ref)


# -- an app that fails to deploy ----------------------------------------------------------------------------


@pytest.mark.docker
def test_a_broken_app_fails_the_test_at_its_deploy_and_a_fixed_one_passes(
    engine: Engine, project: Path, run_main: Callable[..., Any]
) -> None:
    code = project / "apps" / "hello" / "hello_app.py"
    good = code.read_text()
    code.write_text(BROKEN_APP + f"# {uuid.uuid4().hex}\n")
    config = load_config(project / "raybuild.toml")
    assert raybuild(project, "build", "hello", *_ca_args()).returncode == 0  # it imports: the build passes
    broken_ref = next_ref(project)
    record = build_record_path(config).read_bytes()

    # A timeout far past what the test may take: only the failed deploy ends the wait early.
    result = run_main("--config", str(project / "raybuild.toml"), "test", "hello", "--timeout", "900")
    assert result.exit_code == 1
    line = BROKEN_APP.splitlines().index('    raise FileNotFoundError(f"model file {path} is missing")') + 1
    assert one_error(result.stderr) == (
        "error: app 'hello': Serve could not deploy it: FileNotFoundError: model file /models/m.bin is "
        f"missing (hello_app.py, line {line}, in load_model)"
    )
    log = failure_log_path(config, "test", "hello")
    assert f"hint: the whole traceback and the replica's log are in {log}" in result.stderr
    assert "Traceback (most recent call last)" in log.read_text()
    assert build_record_path(config).read_bytes() == record
    smoke = docker(engine, "ps", "-aq", "--filter", f"ancestor={broken_ref}", check=False).output
    assert smoke.strip() == "", "the smoke test's container was left behind"

    code.write_text(good)
    assert raybuild(project, "build", "hello", *_ca_args()).returncode == 0
    again = run_main("--config", str(project / "raybuild.toml"), "test", "hello", "--timeout", "300")
    assert again.exit_code == 0, again.stderr
    engine.remove_image(broken_ref)
