"""The engine: finding a BuildKit client with a scripted docker, running real tiny subprocesses, and the
build command it constructs (checked through the fake engine, which replaces only ``run``)."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

from raybuild import docker_client, labels
from raybuild import engine as engines
from raybuild.docker_client import DockerClient, find_docker_client
from raybuild.engine import Engine, classify_failure
from raybuild.errors import BuildError, DockerRetry, EngineError
from raybuild.runner import Runner
from tests.unit import fakes
from tests.unit.docker_cli import CliEngine as FakeEngine
from tests.unit.fakes import ScriptedDocker

NEW = "/opt/docker-new/docker"
OLD = "/opt/docker-old/docker"
SH = "/bin/sh"


@pytest.fixture
def candidates(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The docker binaries find_docker_client tries, in order (a test fills the list)."""
    paths: list[str] = []
    monkeypatch.setattr(docker_client, "_candidates", lambda: paths)
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
    found = docker_client._candidates()
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
        Runner().run(command)
    error = raised.value
    assert error.command == command
    assert error.returncode == 3
    assert error.output_tail == "first\nsecond"
    assert str(error) == f"{SH} -c echo first; echo second; exit 3 failed (exit 3)"


def test_the_tail_keeps_only_the_last_lines_and_what_names_the_step() -> None:
    command = [SH, "-c", "for i in $(seq 1 100); do echo line$i; done; echo no space left on device; exit 1"]
    with pytest.raises(BuildError) as raised:
        Runner().run(command, error=BuildError, what="build of app 'demo'")
    lines = raised.value.output_tail.splitlines()
    assert len(lines) == engines.TAIL_LINES
    assert lines[0] == f"line{100 - engines.TAIL_LINES + 2}"
    assert lines[-1] == "no space left on device"
    assert str(raised.value) == "build of app 'demo' failed (exit 1)"
    assert raised.value.hint is not None and "disk is full" in raised.value.hint


def test_on_line_gets_every_line_stdout_and_stderr() -> None:
    seen: list[str] = []
    result = Runner().run([SH, "-c", "echo a; echo b >&2; printf 'c\\n\\nd'"], on_line=seen.append)
    assert seen == ["a", "b", "c", "", "d"]
    assert result.output == "a\nb\nc\n\nd"
    assert result.returncode == 0


def test_check_false_returns_the_failed_result() -> None:
    result = Runner().run([SH, "-c", "echo a; exit 3"], check=False)
    assert (result.returncode, result.output) == (3, "a")


def test_environment_and_stdin_reach_the_process() -> None:
    engine = Runner(env={"RB_ENGINE": "engine", "RB_CALL": "engine"})
    result = engine.run(
        [SH, "-c", 'echo "$RB_ENGINE $RB_CALL"; cat'], env={"RB_CALL": "call"}, stdin=b"from stdin\n"
    )
    assert result.output == "engine call\nfrom stdin"


def test_a_missing_binary_is_an_error_with_a_hint() -> None:
    with pytest.raises(EngineError) as raised:
        Runner().run(["raybuild-no-such-binary", "--version"])
    assert str(raised.value) == "raybuild-no-such-binary not found"
    assert raised.value.command == ["raybuild-no-such-binary", "--version"]
    assert raised.value.hint == "run scripts/setup"


def test_debug_echoes_each_command() -> None:
    echoed: list[str] = []
    Runner(debug=True, echo=echoed.append).run([SH, "-c", "true"])
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
    assert str(raised.value) == "the Docker daemon is not reachable"
    assert raised.value.output_tail == ""
    assert (raised.value.hint or "").endswith("; DOCKER_HOST is unix:///nothing.sock")


def test_a_command_past_its_timeout_is_killed() -> None:
    # `docker info` against a wedged daemon never closes its output; the deadline must still end the call.
    command = [SH, "-c", "echo started; exec sleep 5"]
    result = Runner().run(command, check=False, timeout=0.2)
    assert result.returncode != 0
    assert result.output == "started"
    with pytest.raises(EngineError) as raised:
        Runner().run(command, timeout=0.2, what="docker info")
    assert str(raised.value) == "docker info timed out after 0.2s"
    assert raised.value.output_tail == "started"


# -- labels, networks and the sweep -----------------------------------------------------------------------


MINE = labels.object_labels("a" * 16, "cluster", cluster="raybuild-serve", role="head")
THEIRS = labels.object_labels("b" * 16, "cluster", cluster="raybuild-serve", role="head")
BROKEN_CONFIG = (
    "WARNING: Error loading config file: /root/.docker/config.json: json: cannot unmarshal string into "
    "Go struct field ConfigFile.auths of type map[string]types.AuthConfig"
)


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


def _run(engine: FakeEngine, name: str, labels: dict[str, str]) -> None:
    """A container already on the fake daemon (no command recorded)."""
    engine.containers[name] = dict(labels)


def test_remove_labelled_takes_this_projects_containers_then_networks_and_nothing_else() -> None:
    engine = FakeEngine()
    engine.create_network("mine", MINE)
    engine.create_network("theirs", THEIRS)
    _run(engine, "mine-head", MINE)
    _run(engine, "mine-gcs", {**MINE, "io.raybuild.role": "gcs"})
    _run(engine, "theirs-head", THEIRS)  # another checkout, same cluster name
    _run(engine, "string", {})  # nobody's: the word a broken docker config once made raybuild remove
    assert engine.remove_labelled(MINE) == 2  # mine-head and the network; mine-gcs has another role
    assert sorted(engine.containers) == ["mine-gcs", "string", "theirs-head"]
    assert list(engine.networks) == ["theirs"]
    removals = [call for call in engine.calls() if call[0] == "rm" or call[:2] == ["network", "rm"]]
    assert removals == [
        ["rm", "--force", "--volumes", fakes.container_id("mine-head")],
        ["network", "rm", fakes.network_id("mine")],
    ], "by ID only, containers before the network they sit on"
    assert engine.remove_labelled(MINE) == 0


def test_the_listing_asks_for_ids_only_filtered_by_every_label() -> None:
    engine = FakeEngine()
    engine.remove_labelled(labels.object_labels("a" * 16, "measure"))
    ps = engine.calls("ps")[0]
    assert ps[:5] == ["ps", "-a", "--no-trunc", "--format", "{{.ID}}"]
    assert ps[5:] == [
        "--filter", "label=io.raybuild.managed=true",
        "--filter", "label=io.raybuild.project=" + "a" * 16,
        "--filter", "label=io.raybuild.purpose=measure",
    ]  # fmt: skip


def test_a_sweep_not_scoped_to_a_project_is_refused() -> None:
    engine = FakeEngine()
    with pytest.raises(ValueError, match=r"io\.raybuild\.project"):
        engine.remove_labelled({"io.raybuild.managed": "true", "io.raybuild.purpose": "measure"})
    with pytest.raises(ValueError, match=r"io\.raybuild\.managed"):
        engine.remove_labelled({"io.raybuild.project": "a" * 16})
    assert engine.commands == []


def test_warnings_on_stderr_are_never_taken_for_container_ids() -> None:
    engine = FakeEngine()
    _run(engine, "mine-head", MINE)
    _run(engine, "string", {})
    engine.script("ps", output=fakes.container_id("mine-head"), stderr=BROKEN_CONFIG)
    assert engine.remove_labelled(MINE) == 1
    assert list(engine.containers) == ["string"]
    assert [c for c in engine.calls("rm")] == [
        ["rm", "--force", "--volumes", fakes.container_id("mine-head")]
    ]


@pytest.mark.parametrize(
    "stdout",
    [
        "string\nCannot connect to the Docker daemon",  # words, not IDs
        fakes.container_id("x")[:12],  # a short ID: not what --no-trunc prints
        fakes.container_id("x") + " mine-head",  # a table, not --format '{{.ID}}'
        fakes.container_id("x").upper(),
    ],
)
def test_anything_but_full_ids_on_stdout_stops_the_sweep_before_any_removal(stdout: str) -> None:
    engine = FakeEngine()
    _run(engine, "string", {})
    engine.script("ps", output=stdout)
    with pytest.raises(EngineError, match="which is not an object ID; nothing was removed"):
        engine.remove_labelled(MINE)
    assert engine.calls("rm") == [] and engine.calls("network") == []
    assert list(engine.containers) == ["string"]


def test_a_failing_listing_is_an_error_not_an_empty_list() -> None:
    engine = FakeEngine()
    down = "Cannot connect to the Docker daemon at unix:///nonexistent. Is the docker daemon running?"
    engine.script("ps", returncode=1, stderr=down)
    with pytest.raises(EngineError) as raised:
        engine.remove_labelled(MINE)
    assert raised.value.hint is not None and "daemon is not running" in raised.value.hint
    assert engine.calls("rm") == []


def test_a_container_that_will_not_go_is_an_error() -> None:
    engine = FakeEngine()
    _run(engine, "mine-head", MINE)
    engine.script("rm", returncode=1, stderr="Error response from daemon: removal already in progress")
    with pytest.raises(EngineError, match="could not remove 1 of raybuild's containers"):
        engine.remove_labelled(MINE)


def test_a_container_gone_meanwhile_is_not_an_error() -> None:
    engine = FakeEngine()
    _run(engine, "mine-head", MINE)
    engine.script("rm", returncode=1, stderr="Error: No such container: " + fakes.container_id("mine-head"))
    assert engine.remove_labelled(MINE) == 1


def test_remove_containers_by_name_keeps_a_same_named_container_of_another_project() -> None:
    engine = FakeEngine()
    _run(engine, "raybuild-smoke-1", MINE)
    _run(engine, "raybuild-smoke-12", MINE)
    assert engine.remove_containers(THEIRS, name="raybuild-smoke-1") == 0
    assert engine.remove_containers(MINE, name="raybuild-smoke-1") == 1
    assert list(engine.containers) == ["raybuild-smoke-12"], "the name is matched whole"


def test_remove_labelled_retries_a_network_that_is_still_busy(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = FakeEngine()
    engine.create_network("net", MINE)
    busy = fakes.network_id("net")
    engine.script("network", "rm", busy, returncode=1, output="error: network net has active endpoints")
    naps: list[float] = []
    monkeypatch.setattr(engines.time, "sleep", naps.append)
    with pytest.raises(EngineError, match="could not remove raybuild's network"):
        engine.remove_labelled(MINE)
    assert len(engine.calls("network", "rm", busy)) == 2
    assert naps == [1]


def test_release_never_raises_and_says_what_to_check() -> None:
    echoed: list[str] = []
    engine = FakeEngine()
    engine.echo = echoed.append
    engine.script("ps", returncode=1, stderr="Cannot connect to the Docker daemon")
    engine.release(MINE, name="mine-head")
    assert echoed == [
        "warning: cleanup failed (docker ps failed (exit 1)); see "
        "`docker ps -a --filter label=io.raybuild.project=" + "a" * 16 + "`"
    ]


def test_the_destructive_case_with_a_real_process(tmp_path: Path) -> None:
    """A docker whose config is broken prints a warning on stderr before every answer; `rm` must never run."""
    log = tmp_path / "rm.log"
    docker = tmp_path / "docker"
    docker.write_text(
        f'#!/bin/sh\necho \'{BROKEN_CONFIG}\' >&2\nif [ "$1" = rm ]; then echo "$@" >> {log}; fi\nexit 0\n'
    )
    docker.chmod(0o755)
    engine = Engine(client=DockerClient(str(docker), "20.10.24", buildx=False))
    assert engine.remove_labelled(MINE) == 0
    assert not log.exists(), "a word of the warning was taken for a container"


def test_stdout_only_keeps_stderr_apart() -> None:
    command = [SH, "-c", "echo " + "f" * 64 + "; echo WARNING: config >&2"]
    result = Runner().run(command, stdout_only=True)
    assert (result.output, result.stderr) == ("f" * 64, "WARNING: config")
    with pytest.raises(EngineError) as raised:
        Runner().run([SH, "-c", "echo out; echo 'daemon says no' >&2; exit 1"], stdout_only=True)
    assert raised.value.output_tail == "out\ndaemon says no"


# -- pushes: Docker's own retries are cut short ---------------------------------------------------------


def test_a_push_ends_at_dockers_first_retry_with_the_reason_in_the_tail() -> None:
    engine = FakeEngine()
    seen: list[str] = []
    engine.script(
        "push",
        output="abc123456789: Preparing\nabc123456789: Pushing\n"
        "abc123456789: received unexpected HTTP status: 500 Internal Server Error\n"
        "abc123456789: Retrying in 5 seconds\nabc123456789: Retrying in 4 seconds",
    )
    with pytest.raises(DockerRetry) as raised:
        engine.push("reg/x:1", on_line=seen.append, timeout=30)
    assert raised.value.message == "docker push reg/x:1: a layer upload failed and Docker began to retry it"
    assert "500 Internal Server Error" in raised.value.output_tail
    assert not any("Retrying" in line for line in seen)
    assert engine.calls("push") == [["push", "reg/x:1"]]


def test_a_push_past_its_deadline_is_killed_and_says_so(tmp_path: Path) -> None:
    docker = tmp_path / "docker"
    docker.write_text("#!/bin/sh\necho 'abc123456789: Pushing'\nexec sleep 5\n")
    docker.chmod(0o755)
    engine = Engine(client=DockerClient(str(docker), "20.10.24", buildx=False))
    with pytest.raises(EngineError) as raised:
        engine.push("reg/x:1", timeout=0.3)
    assert raised.value.timed_out
    assert raised.value.message == "docker push reg/x:1 timed out after 0.3s"


def test_published_port_reads_docker_port() -> None:
    engine = FakeEngine()
    ports = '{"8265/tcp":[{"HostIp":"127.0.0.1","HostPort":"49153"}]}'
    engine.script("container", "inspect", "--format", "{{json .NetworkSettings.Ports}}", "head", output=ports)
    assert engine.published_port("head", 8265) == 49153


def test_published_port_refuses_an_answer_without_a_port() -> None:
    engine = FakeEngine()
    engine.script("container", "inspect", "--format", "{{json .NetworkSettings.Ports}}", "head", output="{}")
    with pytest.raises(EngineError, match=r"docker port head 8265: unexpected answer '\{\}'"):
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


def test_run_python_runs_offline_and_its_container_is_removed_when_interrupted() -> None:
    engine = FakeEngine()
    engine.script("run", "--rm", raises=KeyboardInterrupt())  # type: ignore[arg-type]
    with pytest.raises(KeyboardInterrupt):
        engine.run_python("img:1", b"print(1)", ["a"], labels=MINE, timeout=5, what="probe")
    (args,) = engine.calls("run")
    name = args[args.index("--name") + 1]
    assert args[:3] == ["run", "--rm", "-i"] and args[args.index("--network") + 1] == "none"
    assert args[-5:] == ["--entrypoint", "python", "img:1", "-", "a"]
    # The cleanup looks the container up by its name and this project's labels.
    (listed,) = engine.calls("ps")
    assert f"name=^/?{re.escape(name)}$" in listed
    assert f"label={labels.PROJECT_LABEL}={'a' * 16}" in listed
