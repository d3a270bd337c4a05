"""The fakes are strict: what they do not model fails the test instead of passing on a blank success."""

from __future__ import annotations

import pytest

from raybuild.kuberay import NodeSpec
from raybuild.labels import object_labels
from tests.unit.fakes import FakeEngine, FakeRunner, NotModelled


def test_an_unmodelled_verb_fails() -> None:
    engine = FakeEngine()
    with pytest.raises(NotModelled, match="docker_cmd"):
        engine.docker_cmd("ps")  # the raw-argv hatch the Docker protocol no longer has


def test_an_unmodelled_argument_combination_fails() -> None:
    engine = FakeEngine()
    with pytest.raises(NotModelled, match="Runtimes"):
        engine.info("Runtimes", timeout=1)  # only ServerVersion is modelled; a test scripts the rest
    with pytest.raises(NotModelled, match="run_python"):
        engine.run_python("img", b"", ["not", "an", "import", "check"], labels={}, timeout=1, what="probe")


def test_scripting_an_unknown_verb_fails() -> None:
    with pytest.raises(NotModelled, match="no verb 'port'"):
        FakeEngine().script("port", returns=1)


def test_the_runner_refuses_a_command_it_was_not_told_to_expect() -> None:
    runner = FakeRunner()
    runner.expect("git", "status")
    assert runner.run(["git", "status", "--short"]).returncode == 0
    with pytest.raises(NotModelled, match="ip"):
        runner.run(["ip", "link", "del", "br0"], check=False)


def test_the_daemon_model_keeps_containers_by_label() -> None:
    engine = FakeEngine()
    labels = object_labels("0123456789abcdef", "smoke")
    engine.run_detached(NodeSpec("n", "img:1", labels=labels), what="docker run n")
    engine.containers["someone-elses"] = {}
    assert engine.remove_labelled(labels) == 1
    assert list(engine.containers) == ["someone-elses"] and engine.removed == ["n"]
