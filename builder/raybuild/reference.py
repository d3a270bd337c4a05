"""Image references, parsed in one place: ``[host[:port]/]path[:tag][@digest]``.

The grammar is the distribution project's (``distribution/reference``), which docker, containerd and
Kubernetes all follow:

- the first path component is a host when it holds a ``.`` or a ``:``, or is ``localhost``, or has an
  upper-case letter; otherwise the host is ``docker.io``, and a one-component path on it is under
  ``library/`` (``ubuntu`` is ``docker.io/library/ubuntu``);
- path components are lower case: alphanumerics joined by ``.``, ``_``, ``__`` or runs of ``-``;
- a tag is a word character, then up to 127 of ``[\\w.-]``; a digest is ``algorithm:hex``, with at least
  32 hex digits (exactly 64 for sha256);
- the name, host included, is at most 255 characters; a port is 1 to 65535.

``str()`` gives the familiar form docker prints (``ubuntu:22.04``, ``raybuild/base-cpu:TAG``), so a
reference that went in as written by a user or a template comes out the same. Nothing else in raybuild
splits a reference on ``/``, ``:`` or ``@``; the structure test holds every module to that.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace

from raybuild.errors import ConfigError

DEFAULT_HOST = "docker.io"
_LEGACY_HOSTS = frozenset({"index.docker.io", "registry-1.docker.io"})
OFFICIAL_NAMESPACE = "library"
MAX_NAME_LENGTH = 255

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|-+)"
_PATH_COMPONENT = re.compile(rf"^{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*$")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_NAME = re.compile(rf"^{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*$")
_IPV6 = re.compile(r"^\[[a-fA-F0-9:]+\]$")
_PORT = re.compile(r"^[0-9]+$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST = re.compile(r"^[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}$")
_SHA256 = re.compile(r"^sha256:[0-9a-f]{64}$")
_LOOPBACK_NAMES = frozenset({"localhost", "[::1]"})


class ReferenceError(ConfigError):
    """Text that is not an image reference: the message says which part and why."""


@dataclass(frozen=True, order=True)
class ImageRef:
    """A parsed image reference. ``host`` carries the port; ``path`` is the repository under it."""

    host: str
    path: str
    tag: str | None = None
    digest: str | None = None

    # -- parsing ----------------------------------------------------------------------------------------

    @classmethod
    def parse(cls, text: str) -> ImageRef:
        """The reference ``text``; ReferenceError, naming the part that is wrong, when it is not one."""
        if not isinstance(text, str) or not text:
            raise ReferenceError("an image reference cannot be empty")
        shown = text if len(text) <= 80 else text[:77] + "..."
        rest, at, digest = text.partition("@")
        if at and not _DIGEST.match(digest):
            raise ReferenceError(f"{shown!r}: {digest!r} is not a digest (expected e.g. 'sha256:' + 64 hex)")
        if at and digest.startswith("sha256:") and not _SHA256.match(digest.lower()):
            raise ReferenceError(f"{shown!r}: a sha256 digest has exactly 64 hex digits")
        name, tag = _split_tag(rest)
        if tag is not None and not _TAG.match(tag):
            raise ReferenceError(f"{shown!r}: {tag!r} is not a valid tag")
        host, path = _split_host(name, shown)
        return cls(host, path, tag, digest.lower() if at else None)

    @classmethod
    def parse_name(cls, text: str) -> ImageRef:
        """A repository name alone (``host/namespace``, as ``[project] registry`` holds): no tag or digest."""
        ref = cls.parse(text)
        if ref.tag is not None or ref.digest is not None:
            raise ReferenceError(f"{text!r}: expected a repository name, without a tag or digest")
        return ref

    # -- the parts --------------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The familiar repository name, without tag or digest (``ubuntu``, ``127.0.0.1:5000/ns/app``)."""
        if self.host != DEFAULT_HOST:
            return f"{self.host}/{self.path}"
        official = self.path.removeprefix(OFFICIAL_NAMESPACE + "/")
        return official if "/" not in official else self.path

    @property
    def canonical_name(self) -> str:
        """The fully qualified name (``docker.io/library/ubuntu``)."""
        return f"{self.host}/{self.path}"

    @property
    def hostname(self) -> str:
        """The host without its port."""
        if self.host.startswith("["):
            return self.host.split("]", 1)[0] + "]"
        return self.host.partition(":")[0]

    @property
    def port(self) -> int | None:
        after = self.host.split("]", 1)[1] if self.host.startswith("[") else self.host[len(self.hostname) :]
        return int(after[1:]) if after else None

    @property
    def is_loopback(self) -> bool:
        """On this host: ``localhost``, 127.0.0.0/8 or ``[::1]``, which docker reaches over plain HTTP."""
        return is_loopback_host(self.host)

    @property
    def tag_or_latest(self) -> str:
        """The tag, or ``latest`` as docker reads a reference without one."""
        return self.tag or "latest"

    @property
    def is_bare(self) -> bool:
        """Neither tag nor digest: docker reads it as ``:latest``, which other tools may not assume."""
        return self.tag is None and self.digest is None

    @property
    def api_reference(self) -> str:
        """What the registry API takes after ``/manifests/``: the digest where there is one, else the tag."""
        return self.digest or self.tag_or_latest

    # -- new references ---------------------------------------------------------------------------------

    def with_tag(self, tag: str) -> ImageRef:
        if not _TAG.match(tag):
            raise ReferenceError(f"{tag!r} is not a valid tag")
        return replace(self, tag=tag)

    def with_digest(self, digest: str) -> ImageRef:
        if not _DIGEST.match(digest):
            raise ReferenceError(f"{digest!r} is not a digest")
        return replace(self, digest=digest.lower())

    def without_digest(self) -> ImageRef:
        return replace(self, digest=None)

    def pinned(self) -> ImageRef:
        """``name@digest``: the tag dropped, as a pull by digest names it."""
        if self.digest is None:
            raise ReferenceError(f"{self}: has no digest to pin")
        return replace(self, tag=None)

    def child(self, name: str) -> ImageRef:
        """The repository ``name`` under this one (``127.0.0.1:5000/team`` -> ``.../team/hello``)."""
        return ImageRef.parse(f"{self.canonical_name}/{name}")

    def same_repository(self, other: ImageRef) -> bool:
        return (self.host, self.path) == (other.host, other.path)

    def digest_among(self, repo_digests: Iterable[str]) -> str | None:
        """This repository's digest among an image's RepoDigests (``name@sha256:...``); None if absent.

        An entry that is not a reference (docker writes none, but the field is another tool's to fill) is
        passed over.
        """
        for entry in repo_digests:
            try:
                found = ImageRef.parse(entry)
            except ReferenceError:
                continue
            if found.digest is not None and self.same_repository(found):
                return found.digest
        return None

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def is_loopback_host(host: str) -> bool:
    """Whether a registry address (``HOST[:PORT]``) is on this host."""
    if host.startswith("["):
        return host.split("]", 1)[0] + "]" in _LOOPBACK_NAMES
    name = host.partition(":")[0]
    return name in _LOOPBACK_NAMES or bool(re.match(r"^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$", name))


def is_digest(text: str) -> bool:
    """Whether ``text`` is a ``sha256:`` digest as raybuild records them."""
    return bool(_SHA256.match(text))


def _split_tag(rest: str) -> tuple[str, str | None]:
    """``name[:tag]``: the tag is after the last ``:`` that follows the last ``/``."""
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        return rest[:colon], rest[colon + 1 :]
    return rest, None


def _split_host(name: str, shown: str) -> tuple[str, str]:
    if not name:
        raise ReferenceError(f"{shown!r}: the repository name is empty")
    first, slash, remainder = name.partition("/")
    is_host = slash and (any(c in first for c in ".:") or first == "localhost" or first.lower() != first)
    if is_host:
        host, path = first, remainder
        _check_host(host, shown)
        if host in _LEGACY_HOSTS:
            host = DEFAULT_HOST
    else:
        host, path = DEFAULT_HOST, name
    if host == DEFAULT_HOST and "/" not in path:
        path = f"{OFFICIAL_NAMESPACE}/{path}"
    for component in path.split("/"):
        if not _PATH_COMPONENT.match(component):
            if component.lower() != component and _PATH_COMPONENT.match(component.lower()):
                raise ReferenceError(f"{shown!r}: repository names must be lower case ({component!r})")
            raise ReferenceError(
                f"{shown!r}: {component!r} is not a valid repository name component "
                "(lower-case letters and digits, joined by '.', '_', '__' or '-')"
            )
    if len(name) > MAX_NAME_LENGTH:
        raise ReferenceError(f"{shown!r}: the repository name is longer than {MAX_NAME_LENGTH} characters")
    return host, path


def _check_host(host: str, shown: str) -> None:
    if host.startswith("["):
        address, bracket, port = host[1:].partition("]")
        if not bracket or not _IPV6.match(f"[{address}]"):
            raise ReferenceError(f"{shown!r}: {host!r} is not a valid IPv6 host")
        if port and not port.startswith(":"):
            raise ReferenceError(f"{shown!r}: {host!r} is not a valid host")
        port = port[1:]
    else:
        name, _, port = host.partition(":")
        if not _DOMAIN_NAME.match(name):
            raise ReferenceError(f"{shown!r}: {name!r} is not a valid registry host")
        if ":" in host and not port:
            raise ReferenceError(f"{shown!r}: {host!r} has an empty port")
    if port and (not _PORT.match(port) or not 0 < int(port) <= 65535):
        raise ReferenceError(f"{shown!r}: {port!r} is not a port (1 to 65535)")
