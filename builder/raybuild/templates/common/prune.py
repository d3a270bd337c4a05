"""Remove what Ray Serve workloads never use at run time from a venv or a --target folder.

Runs inside the build stage with the base's own Python (standard library only). It takes the folder to
prune and a JSON file written by raybuild:

    {"rules": {"name": ["glob", ...], ...}, "keep": ["glob", ...], "strip": true}

Globs are relative to the site-packages folder (or to the folder itself for a --target install). A file
matching a "keep" glob is never removed. It prints one line per rule with the bytes it saved and writes
the same figures to raybuild-prune.json in the pruned folder, so `raybuild measure` can report them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path


def tree_size(path: Path) -> int:
    if path.is_symlink() or path.is_file():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if not p.is_dir() or p.is_symlink())


def site_packages(root: Path) -> Path:
    found = sorted(root.glob("lib/python3*/site-packages"))
    return found[0] if found else root


def kept(path: Path, site: Path, keep: list[str]) -> bool:
    rel = path.relative_to(site).as_posix()
    return any(fnmatch(rel, pattern) or rel.startswith(pattern.rstrip("/") + "/") for pattern in keep)


def remove_rule(site: Path, patterns: list[str], keep: list[str]) -> int:
    saved = 0
    for pattern in patterns:
        for path in sorted(site.glob(pattern), key=lambda p: len(p.parts)):
            if not path.exists() and not path.is_symlink():
                continue  # already gone with a parent
            if kept(path, site, keep):
                continue
            if path.is_dir() and not path.is_symlink():
                if any(kept(p, site, keep) for p in path.rglob("*")):
                    continue
                saved += tree_size(path)
                shutil.rmtree(path)
            else:
                saved += path.lstat().st_size
                path.unlink()
    return saved


def is_elf(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return handle.read(4) == b"\x7fELF"
    except OSError:
        return False


def strip_binaries(root: Path, keep: list[str], site: Path) -> int:
    """Strip debug symbols from shared objects and executables.

    Libraries that auditwheel vendored into ``<pkg>.libs/`` were rewritten by patchelf, and strip corrupts
    them ("ELF load command address/offset not page-aligned"), so they are left alone, as are the CUDA
    wheels' libraries.
    """
    if shutil.which("strip") is None:
        print("prune: strip not found, skipping strip-debug-symbols", file=sys.stderr)
        return 0
    saved = 0
    for path in root.rglob("*"):
        if path.is_symlink() or not path.is_file() or "/nvidia/" in path.as_posix():
            continue
        if any(part.endswith(".libs") for part in path.parts):
            continue
        if path.is_relative_to(site) and kept(path, site, keep):
            continue
        if not (path.suffix == ".so" or ".so." in path.name or (path.stat().st_mode & 0o111)):
            continue
        if not is_elf(path):
            continue
        before = path.stat().st_size
        result = subprocess.run(["strip", "--strip-unneeded", str(path)], capture_output=True)
        if result.returncode == 0:
            saved += before - path.stat().st_size
    return saved


def main() -> int:
    root = Path(sys.argv[1])
    spec = json.loads(Path(sys.argv[2]).read_text())
    site = site_packages(root)
    keep = list(spec.get("keep", []))
    report: dict[str, int] = {}
    for name, patterns in spec.get("rules", {}).items():
        report[name] = remove_rule(site, list(patterns), keep)
    if spec.get("strip", True):
        report["strip-debug-symbols"] = strip_binaries(root, keep, site)
    for name, saved in report.items():
        print(f"prune: {name}: {saved / 1e6:.1f} MB")
    (root / "raybuild-prune.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
