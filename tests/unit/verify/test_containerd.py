"""The containerd cold node over a fake engine: its own folder, kubelet's pull, KubeRay's head, cleanup."""

from __future__ import annotations

from pathlib import Path

import pytest

from raybuild.errors import EngineError, SmokeTestError
from raybuild.verify import containerd as module
from raybuild.verify.containerd import ContainerdNode, containerd_config, parse_version
from tests.unit.fakes import FakeEngine, make_app

CTR = "/usr/bin/ctr"


@pytest.fixture
def node(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> ContainerdNode:
    monkeypatch.setattr(module, "which", lambda tool: f"/usr/bin/{tool}")
    monkeypatch.setattr(ContainerdNode, "running", lambda self: self._folder is not None)
    engine = FakeEngine()
    engine.runner.expect(CTR)
    engine.runner.expect("kill")
    said = "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3"
    engine.runner.expect("/usr/bin/containerd", "--version", output=said)
    engine.runner.expect("sh", "-c", output="4242")  # the start (it echoes the pid) and the unmount sweep
    return ContainerdNode(engine, parent=tmp_path)


def ctr_calls(node: ContainerdNode) -> list[list[str]]:
    assert isinstance(node.engine, FakeEngine)
    return [c[5:] for c in node.engine.runner.commands if c[0] == CTR]


def test_every_path_of_the_config_is_under_its_folder() -> None:
    text = containerd_config(Path("/tmp/x"))
    assert 'root = "/tmp/x/root"' in text and 'state = "/tmp/x/state"' in text
    assert 'address = "/tmp/x/containerd.sock"' in text
    assert "io.containerd.grpc.v1.cri" in text  # no CRI: nothing else talks to this containerd


def test_version() -> None:
    assert (
        parse_version("containerd github.com/containerd/containerd 1.6.20~ds1 abc") == "containerd 1.6.20~ds1"
    )
    assert parse_version("") == "containerd"


def test_start_uses_a_new_empty_folder_and_stop_removes_it(node: ContainerdNode, tmp_path: Path) -> None:
    node.start()
    first = node.socket.parent
    assert first.parent == tmp_path and (first / "config.toml").is_file()
    assert "localhost" in (first / "hosts").read_text()
    assert node.version == "containerd 1.6.20~ds1"
    node.clear()  # the next pull starts from nothing: a new containerd on a new folder
    assert not first.exists() and node.socket.parent != first
    second = node.socket.parent
    node.stop()
    assert not second.exists()
    assert isinstance(node.engine, FakeEngine)
    assert node.engine.runner.calls("kill", "-TERM", "4242")
    node.stop()  # twice is fine


def test_pull_is_kubelets_and_plain_http_only_on_this_host(node: ContainerdNode) -> None:
    node.start()
    node.pull("127.0.0.1:5000/ns/hello:t", deadline=60)
    node.pull("registry.example.com/ns/hello:t")
    assert ctr_calls(node)[-2:] == [
        ["images", "pull", "--plain-http", "127.0.0.1:5000/ns/hello:t"],
        ["images", "pull", "registry.example.com/ns/hello:t"],
    ]
    assert isinstance(node.engine, FakeEngine)
    assert [c[1:5] for c in node.engine.runner.commands if c[0] == CTR][-1] == [
        "-a",
        str(node.socket),
        "-n",
        "k8s.io",
    ]


def test_head_runs_kuberays_command_until_both_probes_pass_then_goes(node: ContainerdNode) -> None:
    node.start()
    seconds = node.head(make_app("demo"), "127.0.0.1:5000/ns/hello:t", timeout=5)
    assert seconds >= 0
    calls = ctr_calls(node)
    (run,) = [c for c in calls if c[0] == "run"]
    name = run[run.index("127.0.0.1:5000/ns/hello:t") + 1]
    assert run[-4:-1] == ["/bin/bash", "-c", "--"] and "ray start --head" in run[-1]
    assert any("dst=/etc/hosts" in arg for arg in run) and any("dst=/dev/shm" in arg for arg in run)
    probes = [c for c in calls if c[:2] == ["tasks", "exec"]]
    assert len(probes) == 2 and all(c[4] == name for c in probes)  # raylet, then the GCS
    assert ["containers", "rm", name] in calls


def test_a_head_that_never_passes_fails_naming_the_app_and_is_removed(node: ContainerdNode) -> None:
    node.start()
    assert isinstance(node.engine, FakeEngine)
    node.engine.runner.expect(CTR, "*", "*", "*", "*", "tasks", "exec", returncode=1)
    with pytest.raises(SmokeTestError, match="app 'demo': cold-node head never passed"):
        node.head(make_app("demo"), "127.0.0.1:5000/ns/hello:t", timeout=0.5)
    assert any(c[:2] == ["containers", "rm"] for c in ctr_calls(node))


def test_without_containerd_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(module, "which", lambda tool: None)
    with pytest.raises(EngineError, match="containerd or ctr not found") as raised:
        ContainerdNode(FakeEngine()).start()
    assert "--runtime docker" in (raised.value.hint or "")
