"""Which of the lockfile's hashes is the wheel that was installed.

A lockfile lists, for each pin, the SHA-256 of every file the index offers for that version: wheels for
every platform and Python, and the sdist (72 hashes for numpy 2.4.6). It does not name the files, so the
hash alone cannot say which one landed in the image. Two ways to tell:

- the pin has a single hash: that is the file (a pure-Python wheel with no sdist, say);
- otherwise the package index names them: its simple API (PEP 691 JSON, or PEP 503 HTML) lists each file
  with its hash. The installed distribution's WHEEL file lists the tags of the wheel it came from, and the
  one file whose tags are exactly those, and whose hash the lockfile lists, is the installed wheel.

Index answers are immutable facts (a file on an index never changes its hash), so they are kept in a cache
under ``.raybuild/``: the next SBOM of the same image needs no network and comes out the same. With no index
and no cache entry the component carries no hash, and the SBOM command says how many.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Protocol

from raybuild.fsutil import atomic_write
from raybuild.lock.resolve import normalize

PYPI_SIMPLE = "https://pypi.org/simple/"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)")
_HASH = re.compile(r"--hash=sha256:([0-9a-f]{64})")
CACHE_VERSION = 1


def lock_hashes(text: str) -> dict[tuple[str, str], tuple[str, ...]]:
    """(normalized name, version) -> the SHA-256 hashes a compiled requirements file lists for that pin."""
    found: dict[tuple[str, str], tuple[str, ...]] = {}
    # Backslash continuations joined, each entry is one line: the pin, then its --hash options.
    for line in text.replace("\\\n", " ").splitlines():
        match = _PIN.match(line)
        if match:
            found[(normalize(match.group(1)), match.group(2))] = tuple(_HASH.findall(line))
    return found


def wheel_tags(filename: str) -> frozenset[str] | None:
    """The tags a wheel's filename stands for (compressed tag sets expanded); None for anything else."""
    if not filename.endswith(".whl"):
        return None
    parts = filename[: -len(".whl")].split("-")
    if len(parts) not in (5, 6):
        return None
    python, abi, platform = parts[-3:]
    return frozenset(
        f"{p}-{a}-{s}" for p in python.split(".") for a in abi.split(".") for s in platform.split(".")
    )


def _platform_key(tag: str) -> tuple[str, ...]:
    """A tag with its platform reduced to OS family and architecture: manylinux_2_17_x86_64 and
    manylinux2014_x86_64 and linux_x86_64 are all ("linux", "x86_64")."""
    python, abi, platform = tag.split("-", 2)
    family = re.match(r"^(manylinux|musllinux|linux|macosx|win|any)?", platform)
    name = (family.group(1) if family else None) or platform
    arch = re.sub(r"^(manylinux|musllinux|linux|macosx)(_?\d+)*_", "", platform)
    return python, abi, "linux" if name == "manylinux" else name, arch


def pick_wheel(files: Mapping[str, str], tags: frozenset[str]) -> str | None:
    """The sha256 of the one wheel (``files``: sha256 -> filename) that the installed ``tags`` came from.

    The WHEEL file does not always repeat the filename's tags: ray's says ``linux_x86_64`` for a file named
    ``manylinux2014_x86_64``, py-spy's says ``py3`` for ``py2.py3``. So: the same tag set, else one shared
    tag, else the same Python, ABI, OS family and architecture; and only ever a single wheel.
    """
    wheels = {sha: t for sha, name in files.items() if (t := wheel_tags(name)) is not None}
    reduced = {_platform_key(tag) for tag in tags if tag.count("-") == 2}
    for test in (
        lambda t: t == tags,
        lambda t: bool(t & tags),
        lambda t: bool({_platform_key(tag) for tag in t} & reduced),
    ):
        matches = sorted(sha for sha, wheel in wheels.items() if test(wheel))
        if matches:
            return matches[0] if len(matches) == 1 else None
    return None


@dataclass(frozen=True)
class IndexFile:
    filename: str
    sha256: str


class Index(Protocol):
    """A package index's file listing for one project; None when it cannot be had."""

    def files(self, project: str) -> list[IndexFile] | None: ...


class _Anchors(HTMLParser):
    """PEP 503: each file is an anchor whose text is the filename and whose URL ends in ``#sha256=...``."""

    def __init__(self) -> None:
        super().__init__()
        self.files: list[IndexFile] = []
        self._href: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._href = dict(attrs).get("href")

    def handle_data(self, data: str) -> None:
        if self._href is not None:
            fragment = urllib.parse.urlsplit(self._href).fragment
            if fragment.startswith("sha256="):
                self.files.append(IndexFile(data.strip(), fragment[len("sha256=") :]))
            self._href = None


def parse_listing(body: bytes, content_type: str) -> list[IndexFile]:
    """A simple-API project page, JSON (PEP 691) or HTML (PEP 503), as (filename, sha256) pairs."""
    if "json" in content_type:
        data = json.loads(body)
        return [
            IndexFile(str(f["filename"]), str(f["hashes"]["sha256"]))
            for f in data.get("files", [])
            if isinstance(f, dict) and "sha256" in (f.get("hashes") or {})
        ]
    parser = _Anchors()
    parser.feed(body.decode("utf-8", "replace"))
    return parser.files


@dataclass
class SimpleIndex:
    """A package index's simple API over HTTPS, with the environment's proxy and CA settings (as pip's)."""

    url: str = PYPI_SIMPLE
    timeout: float = 30.0
    failures: list[str] = field(default_factory=list)  # one line per project that could not be listed

    def files(self, project: str) -> list[IndexFile] | None:
        url = self.url.rstrip("/") + f"/{normalize(project)}/"
        accept = "application/vnd.pypi.simple.v1+json, text/html;q=0.1"
        request = urllib.request.Request(url, headers={"Accept": accept})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return parse_listing(response.read(), response.headers.get("Content-Type", ""))
        except (OSError, ValueError, urllib.error.URLError) as exc:
            self.failures.append(f"{project}: {exc}")
            return None


def shown_index(url: str) -> str:
    """An index URL without any credentials in it, for messages."""
    parts = urllib.parse.urlsplit(url)
    if not parts.username:
        return url
    host = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=host).geturl()


@dataclass
class WheelHashes:
    """Finds the installed wheel's hash among a lockfile's, asking ``index`` only where the lock can't say.

    ``cache`` maps "name==version" to {sha256: filename} for the wheels the index named; it is read at the
    start and written back by ``save`` when something new was learnt.
    """

    index: Index | None
    cache_path: Path | None = None
    _cache: dict[str, dict[str, str]] = field(default_factory=dict)
    _dirty: bool = False
    _loaded: bool = False

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        if self.cache_path is None or not self.cache_path.is_file():
            return
        try:
            data = json.loads(self.cache_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return  # a damaged cache only costs index requests
        if isinstance(data, dict) and data.get("version") == CACHE_VERSION:
            wheels = data.get("wheels")
            if isinstance(wheels, dict):
                self._cache = {k: dict(v) for k, v in wheels.items() if isinstance(v, dict)}

    def find(self, name: str, version: str, tags: frozenset[str], candidates: tuple[str, ...]) -> str | None:
        """The SHA-256 of the installed wheel of ``name==version`` (with WHEEL ``tags``), or None."""
        if len(candidates) == 1:
            return candidates[0]
        if not candidates or not tags:
            return None
        self._load()
        key = f"{normalize(name)}=={version}"
        known = self._cache.get(key)
        if known is None and self.index is not None:
            listed = self.index.files(name)
            if listed is not None:
                wanted = set(candidates)
                known = {
                    f.sha256: f.filename for f in listed if f.sha256 in wanted and f.filename.endswith(".whl")
                }
                self._cache[key] = known
                self._dirty = True
        found = pick_wheel(known or {}, tags)
        return found if found in candidates else None

    def save(self) -> None:
        if self._dirty and self.cache_path is not None:
            payload = {"version": CACHE_VERSION, "wheels": dict(sorted(self._cache.items()))}
            atomic_write(self.cache_path, json.dumps(payload, indent=1, sort_keys=True) + "\n")
            self._dirty = False


def pick_lock(
    name: str, version: str, locks: Mapping[str, Mapping[tuple[str, str], tuple[str, ...]]]
) -> tuple[str, tuple[str, ...]] | None:
    """The first lockfile (in the given order) that pins ``name==version``: its label and the hashes."""
    key = (normalize(name), version)
    for label, pins in locks.items():
        if key in pins:
            return label, pins[key]
    return None


HashFinder = Callable[[str, str, frozenset[str], tuple[str, ...]], str | None]
