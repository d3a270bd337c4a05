"""Run inside an image by raybuild: list what is installed in it, for the image's SBOM.

Usage: python - < this file, as the image's own `python` (the Ray venv's), so that importlib.metadata sees
exactly what the app sees: the venv, the app's site-packages (added by a .pth file) and the code folder.
Prints one line, the marker and a JSON object: every Python distribution (metadata fields, where it lies,
its WHEEL tags), every Debian package dpkg knows with its status, and the OS release. Stdlib only.
"""

import importlib.metadata
import json
import os
import platform
import shutil
import subprocess

MARK = "@@raybuild-inventory "
# One line per package; the status field keeps packages that are removed but not purged distinguishable.
DPKG_FORMAT = (
    "${db:Status-Status}\t${Package}\t${Version}\t${Architecture}\t${source:Package}\t${source:Version}\n"
)


def _python() -> list:
    found = []
    for dist in importlib.metadata.distributions():
        meta = dist.metadata
        wheel = dist.read_text("WHEEL") or ""
        found.append(
            {
                "name": meta["Name"],
                "version": meta["Version"],
                "location": str(dist.locate_file("")),
                "license_expression": meta.get("License-Expression"),
                "license": meta.get("License"),
                "classifiers": [c for c in (meta.get_all("Classifier") or []) if c.startswith("License ::")],
                "tags": [line[4:].strip() for line in wheel.splitlines() if line.startswith("Tag:")],
                "installer": (dist.read_text("INSTALLER") or "").strip(),
            }
        )
    return found


def _debian() -> list:
    if shutil.which("dpkg-query") is None:
        return []
    out = subprocess.run(
        ["dpkg-query", "-W", "-f", DPKG_FORMAT], capture_output=True, text=True, check=True
    ).stdout
    keys = ("status", "name", "version", "arch", "source", "source_version")
    return [dict(zip(keys, line.split("\t"), strict=True)) for line in out.splitlines() if line.strip()]


def _os_release() -> dict:
    release = {}
    for path in ("/etc/os-release", "/usr/lib/os-release"):
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as handle:
                for line in handle:
                    key, sep, value = line.strip().partition("=")
                    if sep:
                        release[key] = value.strip().strip('"')
            break
    # VERSION_ID is the major ("12"); Debian's point release lives in /etc/debian_version.
    if os.path.isfile("/etc/debian_version"):
        with open("/etc/debian_version", encoding="utf-8") as handle:
            release["DEBIAN_VERSION"] = handle.read().strip()
    return release


report = {
    "python": _python(),
    "debian": _debian(),
    "os": _os_release(),
    "python_version": platform.python_version(),
}
print(MARK + json.dumps(report))
