"""Reading an image's contents: the probe's report, and the container that runs it."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys

import pytest

from raybuild.errors import EngineError
from raybuild.labels import MANAGED_LABEL, PROJECT_LABEL
from raybuild.lock.resolve import normalize
from raybuild.ship.inventory import MARK, PROBE, parse_inventory, read_inventory
from tests.unit.fakes import FakeEngine

IMAGE = "127.0.0.1:5000/demo/demo:ray2.60.0-py3.11-cpu-222222222222"


def dist(
    name: str, version: str, location: str = "/opt/ray/venv/lib/python3.11/site-packages", **more: object
):
    return {"name": name, "version": version, "location": location, "tags": ["py3-none-any"], **more}


def deb(name: str, version: str, status: str = "installed", source: str = "", arch: str = "amd64"):
    return {
        "status": status,
        "name": name,
        "version": version,
        "arch": arch,
        "source": source,
        "source_version": "",
    }


def report(**fields: object) -> str:
    data = {
        "python": [dist("ray", "2.60.0"), dist("Jinja2", "3.1.6", license="BSD-3-Clause")],
        "debian": [deb("libc6", "2.36-9+deb12u14", source="glibc"), deb("bash", "5.2.15-2+b13")],
        "os": {"ID": "debian", "VERSION_ID": "12", "DEBIAN_VERSION": "12.12"},
        "python_version": "3.11.2",
        **fields,
    }
    return "some warning on stdout\n" + MARK + json.dumps(data) + "\n"


def test_parse_sorts_and_keeps_only_installed_debian_packages() -> None:
    found = parse_inventory(
        report(
            debian=[deb("zlib1g", "1:1.2.13"), deb("old", "1.0", status="config-files"), deb("bash", "5.2")]
        ),
        IMAGE,
    )
    assert [(p.name, p.version, p.source) for p in found.debian] == [
        ("bash", "5.2", "bash"),  # no source field: the package is its own source
        ("zlib1g", "1:1.2.13", "zlib1g"),
    ]
    assert [d.name for d in found.python] == ["Jinja2", "ray"]  # by normalized name
    assert found.python[0].license == "BSD-3-Clause" and found.python[0].tags == {"py3-none-any"}
    assert (found.os_id, found.os_version, found.distro) == ("debian", "12.12", "debian-12.12")
    assert found.python_version == "3.11.2"


def test_parse_without_debian_version_uses_os_release() -> None:
    found = parse_inventory(report(os={"ID": "ubuntu", "VERSION_ID": "24.04"}, debian=[]), IMAGE)
    assert (found.os_id, found.os_version) == ("ubuntu", "24.04")


def test_no_report_names_the_image() -> None:
    with pytest.raises(EngineError, match=rf"listing the packages in {IMAGE} printed no report: boom"):
        parse_inventory("boom\n", IMAGE)


def test_read_runs_the_probe_offline_in_a_labelled_throwaway_container() -> None:
    engine = FakeEngine([IMAGE])
    engine.script("run_python", output=report())
    found = read_inventory(engine, IMAGE, "0123456789abcdef")
    assert len(found.python) == 2
    (call,) = engine.calls("run_python")  # run_python runs it with no network (see test_engine)
    assert call["labels"][MANAGED_LABEL] == "true"
    assert call["labels"][PROJECT_LABEL] == "0123456789abcdef"
    assert call.args[0] == IMAGE


def test_the_probe_lists_what_importlib_metadata_sees() -> None:
    # The probe is plain Python: run here, it must list this interpreter's distributions exactly.
    out = subprocess.run(
        [sys.executable, "-"], input=PROBE.read_bytes(), capture_output=True, check=True
    ).stdout.decode()
    found = parse_inventory(out, "this interpreter")
    expected = {(normalize(d.metadata["Name"]), d.version) for d in importlib.metadata.distributions()}
    assert {(d.normalized, d.version) for d in found.python} == expected
    assert found.python_version == ".".join(map(str, sys.version_info[:3]))
