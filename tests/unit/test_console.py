"""Concise progress: a step is one line; detail lines only with --verbose; failures show what failed."""

from __future__ import annotations

import re

import pytest

from raybuild.cli.common import CONSOLE, Console, render_error
from raybuild.errors import BuildError


def test_steps_are_one_line_each_with_the_time_and_details_are_hidden(
    capsys: pytest.CaptureFixture[str],
) -> None:
    console = Console()
    console.configure(verbose=False, live=False)
    console.progress("building hello -> img:1")
    console.progress("  [app 1/2] RUN uv pip install ...")
    console.progress("  [app 2/2] COPY code")
    console.progress("pushing hello")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    assert re.fullmatch(r"==> \[\s*\d+\.\ds\] building hello -> img:1", lines[0])
    assert lines[1].endswith("] pushing hello")


def test_verbose_streams_the_detail_lines(capsys: pytest.CaptureFixture[str]) -> None:
    console = Console()
    console.configure(verbose=True, live=False)
    console.progress("building hello")
    console.progress("  [app 1/2] RUN uv pip install ...")
    assert capsys.readouterr().err.splitlines()[1] == "  [app 1/2] RUN uv pip install ..."


def test_a_failure_shows_the_last_30_lines_of_what_failed_whatever_the_mode(
    capsys: pytest.CaptureFixture[str],
) -> None:
    CONSOLE.configure(verbose=False, live=False)
    tail = "\n".join(f"#9 line {i}" for i in range(40))
    render_error(
        BuildError("build of app 'hello' failed at step [app 1/2] RUN", output_tail=tail, hint="fix it")
    )
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "error: build of app 'hello' failed at step [app 1/2] RUN"
    shown = [line for line in err if line.startswith("  | ")]
    assert shown == [f"  | #9 line {i}" for i in range(10, 40)]
    assert err[-1] == "hint: fix it"
