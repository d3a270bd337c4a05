"""The engine: finding a BuildKit client with a scripted docker, running real tiny subprocesses, and the
build command it constructs (checked through the fake engine, which replaces only ``run``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from raybuild import engine as engines
from raybuild.engine import DockerClient, Engine, classify_failure, find_docker_client
from raybuild.errors import BuildError, EngineError
from tests.unit.fakes import FakeEngine, ScriptedDocker

NEW = "/opt/docker-new/docker"
OLD = "/opt/docker-old/docker"
SH = "/bin/sh"


@pytest.fixture
def candidates(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The docker binaries find_docker_client tries, in order (a test fills the list)."""
    paths: list[str] = []
    monkeypatch.setattr(engines, "_candidates", lambda: paths)
    return paths


# -- finding a client -------------------------------------------------------------------------------------


def test_a_client_with_buildx_builds_with_buildx_and_loads_the_result(candidates: list[str]) -> None:
    candidates.append(NEW)
    client = find_docker_client(ScriptedDocker({NEW: ("28.1.1", True)}))
    assert client == DockerClient(NEW, "28.1.1", buildx=True)
    assert client.build_prefix() == [NEW, "buildx", "build", "--load"]


def test_a_20_10_client_without_buildx_uses_its_built_in_buildkit(candidates: list[str]) -> None:
    candidates.append(OLD)
    client = find_docker_client(ScriptedDocker({OLD: ("20.10.24+dfsg1", False)}))
    assert client == DockerClient(OLD, "20.10.24+dfsg1", buildx=False)
    assert client.build_prefix() == [OLD, "build"]


def test_a_client_is_found_while_the_daemon_is_down(candidates: list[str]) -> None:
    # `docker version` exits 1 without a daemon but still prints the client version.
    candidates.append(NEW)
    client = find_docker_client(ScriptedDocker({NEW: ("28.1.1", True)}, daemon_up=False))
    assert client.path == NEW


def test_a_new_client_without_buildx_is_skipped_for_the_next_one(candidates: list[str]) -> None:
    candidates.extend([NEW, OLD])
    docker = ScriptedDocker({NEW: ("28.1.1", False), OLD: ("20.10.24", False)})
    assert find_docker_client(docker).path == OLD
    assert [NEW, "buildx", "version"] in docker.commands


def test_only_new_clients_without_buildx_is_an_error_listing_each(candidates: list[str]) -> None:
    candidates.extend([NEW, "/broken/docker"])
    with pytest.raises(EngineError) as raised:
        find_docker_client(ScriptedDocker({NEW: ("28.1.1", False)}))
    assert str(raised.value) == (
        "no BuildKit-capable docker client found "
        f"(tried: {NEW} 28.1.1 without buildx; /broken/docker (no version))"
    )
    assert raised.value.hint is not None and "buildx" in raised.value.hint


def test_no_client_at_all_is_an_error_with_a_hint(candidates: list[str]) -> None:
    with pytest.raises(EngineError) as raised:
        find_docker_client(ScriptedDocker({}))
    assert str(raised.value) == "no BuildKit-capable docker client found"
    assert raised.value.hint is not None and "scripts/setup" in raised.value.hint


def test_candidates_start_with_raybuild_docker_then_path_without_duplicates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    for folder in (first, second):
        folder.mkdir()
    (first / "docker").write_text("#!/bin/sh\n")
    (first / "docker").chmod(0o755)
    (second / "docker").symlink_to(first / "docker")  # the same binary twice on PATH
    (tmp_path / "not-executable").mkdir()
    (tmp_path / "not-executable" / "docker").write_text("")
    override = tmp_path / "override-docker"
    monkeypatch.setenv("RAYBUILD_DOCKER", str(override))
    monkeypatch.setenv("PATH", os.pathsep.join([str(tmp_path / "not-executable"), str(first), str(second)]))
    found = engines._candidates()
    assert found[:2] == [str(override), str(first / "docker")]
    assert str(second / "docker") not in found
    assert str(tmp_path / "not-executable" / "docker") not in found


# -- failure hints ----------------------------------------------------------------------------------------


def test_classify_daemon_down() -> None:
    output = (
        "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?"
    )
    hint = classify_failure(output)
    assert hint is not None and "daemon is not running" in hint


def test_classify_disk_full_ignores_case() -> None:
    output = "ERROR: failed to copy: write /var/lib/docker/tmp/x: No space left on device"
    hint = classify_failure(output)
    assert hint is not None and "disk is full" in hint


def test_classify_other_failures_gives_no_hint() -> None:
    assert classify_failure("ERROR: process did not complete successfully: exit 1") is None


# -- running commands for real ----------------------------------------------------------------------------


def test_a_failing_command_raises_with_command_exit_code_and_output_tail() -> None:
    command = [SH, "-c", "echo first; echo second; exit 3"]
    with pytest.raises(EngineError) as raised:
        Engine().run(command)
    error = raised.value
    assert error.command == command
    assert error.returncode == 3
    assert error.output_tail == "first\nsecond"
    assert str(error) == f"{SH} -c echo first; echo second; exit 3 failed (exit 3)"


def test_the_tail_keeps_only_the_last_lines_and_what_names_the_step() -> None:
    command = [SH, "-c", "for i in $(seq 1 100); do echo line$i; done; echo no space left on device; exit 1"]
    with pytest.raises(BuildError) as raised:
        Engine().run(command, error=BuildError, what="build of app 'demo'")
    lines = raised.value.output_tail.splitlines()
    assert len(lines) == engines.TAIL_LINES
    assert lines[0] == f"line{100 - engines.TAIL_LINES + 2}"
    assert lines[-1] == "no space left on device"
    assert str(raised.value) == "build of app 'demo' failed (exit 1)"
    assert raised.value.hint is not None and "disk is full" in raised.value.hint


def test_on_line_gets_every_line_stdout_and_stderr() -> None:
    seen: list[str] = []
    result = Engine().run([SH, "-c", "echo a; echo b >&2; printf 'c\\n\\nd'"], on_line=seen.append)
    assert seen == ["a", "b", "c", "", "d"]
    assert result.output == "a\nb\nc\n\nd"
    assert result.returncode == 0


def test_check_false_returns_the_failed_result() -> None:
    result = Engine().run([SH, "-c", "echo a; exit 3"], check=False)
    assert (result.returncode, result.output) == (3, "a")


def test_environment_and_stdin_reach_the_process() -> None:
    engine = Engine(env={"RB_ENGINE": "engine", "RB_CALL": "engine"})
    result = engine.run(
        [SH, "-c", 'echo "$RB_ENGINE $RB_CALL"; cat'], env={"RB_CALL": "call"}, stdin=b"from stdin\n"
    )
    assert result.output == "engine call\nfrom stdin"


def test_a_missing_binary_is_an_error_with_a_hint() -> None:
    with pytest.raises(EngineError) as raised:
        Engine().run(["raybuild-no-such-binary", "--version"])
    assert str(raised.value) == "raybuild-no-such-binary not found"
    assert raised.value.command == ["raybuild-no-such-binary", "--version"]
    assert raised.value.hint == "run scripts/setup"


def test_debug_echoes_each_command() -> None:
    echoed: list[str] = []
    Engine(debug=True, echo=echoed.append).run([SH, "-c", "true"])
    assert echoed == [f"$ {SH} -c true"]


# -- the build command ------------------------------------------------------------------------------------


def test_build_passes_secrets_as_secret_mounts_never_as_build_args(tmp_path: Path) -> None:
    engine = FakeEngine()
    ca, netrc = tmp_path / "ca.pem", tmp_path / ".netrc"
    image = engine.build(
        tmp_path,
        tmp_path / "Dockerfile",
        iidfile=tmp_path / "iid",
        target="head",
        secrets={"netrc": netrc, "ca_bundle": ca},
        build_args={"PYTHON": "3.11"},
        labels={"io.raybuild.app": "demo"},
    )
    [command] = engine.builds()
    assert command == [
        "buildx",
        "build",
        "--load",
        "--progress=plain",
        "-f",
        str(tmp_path / "Dockerfile"),
        "--iidfile",
        str(tmp_path / "iid"),
        "--target",
        "head",
        "--secret",
        f"id=ca_bundle,src={ca}",
        "--secret",
        f"id=netrc,src={netrc}",
        "--build-arg",
        "PYTHON=3.11",
        "--label",
        "io.raybuild.app=demo",
        str(tmp_path),
    ]
    assert engine.envs[-1] == {"DOCKER_BUILDKIT": "1"}
    assert image == (tmp_path / "iid").read_text().strip()
    assert image.startswith("sha256:")


def test_build_without_target_or_secrets_and_with_a_plain_client(tmp_path: Path) -> None:
    engine = FakeEngine(client=DockerClient("/usr/bin/docker", "20.10.24", buildx=False))
    engine.build(tmp_path, tmp_path / "Dockerfile", iidfile=tmp_path / "iid")
    [command] = engine.builds()
    assert command[:2] == ["build", "--progress=plain"]
    assert "--target" not in command and "--secret" not in command and "--build-arg" not in command


def test_a_failed_build_raises_build_error_with_the_output(tmp_path: Path) -> None:
    engine = FakeEngine()
    engine.script("buildx", "build", returncode=1, output="#5 ERROR: boom")
    with pytest.raises(BuildError) as raised:
        engine.build(tmp_path, tmp_path / "Dockerfile", iidfile=tmp_path / "iid", what="build of x")
    assert str(raised.value) == "build of x failed (exit 1)"
    assert raised.value.output_tail == "#5 ERROR: boom"


def test_ping_reports_an_unreachable_daemon(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    engine = FakeEngine()
    engine.script("info", returncode=1, output="Cannot connect to the Docker daemon")
    with pytest.raises(EngineError) as raised:
        engine.ping()
    assert str(raised.value) == "the Docker daemon is not reachable"
    assert raised.value.output_tail == "Cannot connect to the Docker daemon"
    FakeEngine().ping()


def test_an_unreachable_daemon_is_named_without_the_clients_template_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nothing.sock")
    engine = FakeEngine()
    template = 'template: :1:2: executing "" at <.ServerVersion>: reflect: indirection through nil pointer'
    engine.script("info", returncode=1, output=f"\n{template}")
    with pytest.raises(EngineError) as raised:
        engine.ping()
    assert str(raised.value) == "the Docker daemon is not reachable at unix:///nothing.sock"
    assert raised.value.output_tail == ""


def test_a_command_past_its_timeout_is_killed() -> None:
    # `docker info` against a wedged daemon never closes its output; the deadline must still end the call.
    command = [SH, "-c", "echo started; exec sleep 5"]
    result = Engine().run(command, check=False, timeout=0.2)
    assert result.returncode != 0
    assert result.output == "started"
    with pytest.raises(EngineError) as raised:
        Engine().run(command, timeout=0.2, what="docker info")
    assert str(raised.value) == "docker info timed out after 0.2s"
    assert raised.value.output_tail == "started"


# -- labels, networks and the sweep -----------------------------------------------------------------------


def test_object_labels_mark_everything_raybuild_makes() -> None:
    assert engines.object_labels() == {"io.raybuild.managed": "true"}
    assert engines.object_labels(purpose="measure") == {
        "io.raybuild.managed": "true",
        "io.raybuild.purpose": "measure",
    }
    assert engines.object_labels(cluster="raybuild-serve", role="head") == {
        "io.raybuild.managed": "true",
        "io.raybuild.cluster": "raybuild-serve",
        "io.raybuild.role": "head",
    }


def test_create_network_with_a_subnet_and_labels() -> None:
    engine = FakeEngine()
    engine.create_network(
        "net", {"io.raybuild.managed": "true"}, subnet="10.1.0.0/24", ip_range="10.1.0.128/25"
    )
    assert engine.calls("network") == [
        ["network", "create", "--driver", "bridge", "--subnet", "10.1.0.0/24", "--ip-range", "10.1.0.128/25",
         "--label", "io.raybuild.managed=true", "net"],
    ]  # fmt: skip
    assert engine.networks == {"net": {"io.raybuild.managed": "true"}}
    assert engine.remove_network("net")
    assert engine.networks == {}


def test_remove_labelled_removes_containers_then_networks_with_the_label_only() -> None:
    engine = FakeEngine()
    engine.create_network("mine", {"io.raybuild.purpose": "measure"})
    engine.create_network("theirs", {"io.raybuild.purpose": "smoke"})
    for name, purpose in [("a", "measure"), ("b", "measure"), ("c", "smoke")]:
        engine.docker_cmd("run", "-d", "--name", name, "--label", f"io.raybuild.purpose={purpose}", "img")
    assert engine.remove_labelled("io.raybuild.purpose=measure") == 3
    assert list(engine.containers) == ["c"]
    assert list(engine.networks) == ["theirs"]
    removals = [call[0] for call in engine.calls() if call[0] == "rm" or call[:2] == ["network", "rm"]]
    assert removals == ["rm", "rm", "network"], "containers go before the network they sit on"
    assert engine.remove_labelled("io.raybuild.purpose=measure") == 0


def test_remove_labelled_retries_a_network_that_is_still_busy(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = FakeEngine()
    engine.create_network("net", {"io.raybuild.cluster": "c"})
    engine.script("network", "rm", "net", returncode=1, output="error: network net has active endpoints")
    naps: list[float] = []
    monkeypatch.setattr(engines.time, "sleep", naps.append)
    assert engine.remove_labelled("io.raybuild.cluster=c") == 1
    assert len(engine.calls("network", "rm", "net")) == 2
    assert naps == [1]


def test_published_port_reads_docker_port() -> None:
    engine = FakeEngine()
    engine.script("port", "head", "8265/tcp", output="127.0.0.1:49153\n")
    assert engine.published_port("head", 8265) == 49153


def test_published_port_refuses_an_answer_without_a_port() -> None:
    engine = FakeEngine()
    with pytest.raises(EngineError, match="docker port head 8265: unexpected answer ''"):
        engine.published_port("head", 8265)


def test_which_finds_a_tool_beside_the_interpreter_before_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    venv_bin, path_bin = tmp_path / "venv" / "bin", tmp_path / "usr" / "bin"
    for folder in (venv_bin, path_bin):
        folder.mkdir(parents=True)
        tool = folder / "dive"
        tool.write_text("#!/bin/sh\n", encoding="utf-8")
        tool.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(venv_bin / "python"))
    monkeypatch.setenv("PATH", str(path_bin))
    assert engines.which("dive") == str(venv_bin / "dive")
    (venv_bin / "dive").unlink()
    assert engines.which("dive") == str(path_bin / "dive")
    assert engines.which("hadolint") is None
