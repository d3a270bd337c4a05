"""SIGTERM handled like Ctrl-C: the exception, the handlers' life cycle, and what main() makes of it.

Signals are sent to this very process (os.kill(os.getpid(), ...)); Python runs the handler in the main
thread before the next bytecode, so each test sees the exception at a known point.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

from raybuild.cli import down as down_cli
from raybuild.interrupts import Interrupted, raised_on_signals
from raybuild.state import cluster_record_path
from tests.unit.fakes import FakeEngine

if TYPE_CHECKING:  # only for annotations: "conftest" is ambiguous when unit and integration run together
    from tests.conftest import MainResult, TmpProject


@pytest.mark.parametrize(
    ("signum", "code", "name"), [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "SIGINT")]
)
def test_a_signal_raises_interrupted_with_the_shells_exit_code(signum: int, code: int, name: str) -> None:
    with pytest.raises(Interrupted) as raised, raised_on_signals():
        os.kill(os.getpid(), signum)
    assert (raised.value.exit_code, raised.value.name) == (code, name)
    assert isinstance(raised.value, KeyboardInterrupt), "every Ctrl-C cleanup handles it too"


def test_a_second_signal_does_not_cut_the_cleanup_short(capfd: pytest.CaptureFixture[str]) -> None:
    cleaned = []
    with pytest.raises(Interrupted), raised_on_signals():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)  # CI repeating itself while the cleanup runs
            cleaned.append(True)
    assert cleaned == [True]
    assert "still cleaning up" in capfd.readouterr().err


def test_the_previous_handlers_come_back() -> None:
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with raised_on_signals():
        assert signal.getsignal(signal.SIGTERM) not in before
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


# -- through main(): one message, the exit code, and the command's own cleanup ------------------------------


class SignalledEngine(FakeEngine):
    """A daemon that takes a while to list containers: long enough for a signal to arrive."""

    def __init__(self, signum: int) -> None:
        super().__init__()
        self.signum = signum

    def container_ids(self, labels: dict[str, str], *, name: str | None = None) -> list[str]:  # type: ignore[override]
        if self.signum:
            signum, self.signum = self.signum, 0
            os.kill(os.getpid(), signum)
        return super().container_ids(labels, name=name)


@pytest.mark.parametrize(
    ("signum", "code", "name"), [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "SIGINT")]
)
def test_main_reports_an_interruption_once_with_the_signals_exit_code(
    tmp_project: TmpProject,
    run_main: Callable[..., MainResult],
    monkeypatch: pytest.MonkeyPatch,
    signum: int,
    code: int,
    name: str,
) -> None:
    record = cluster_record_path(tmp_project.load())
    record.parent.mkdir(parents=True)
    record.write_text("{}")
    monkeypatch.setattr(down_cli, "engine_for", lambda state: SignalledEngine(signum))
    result = run_main("--config", str(tmp_project.config_path), "down")
    assert result.exit_code == code
    assert result.stderr.strip() == (
        f"interrupted ({name}): cleaned up what this command started; nothing half-written was kept"
    )
    assert result.stdout == ""
    assert record.read_text() == "{}", "an interrupted down keeps the record for the next one"
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL, "main() put the default handler back"
