"""The one retry policy for registry work: every read and write, and every push, retried the same way.

A transient failure (`RegistryUnreachable`: a 5xx or 429 answer, a reset connection, a timeout, nothing
listening) is retried on `Backoff`, at most ``[limits].registry_attempts`` attempts in all and none that
would start after the caller's deadline; a permanent one (`RegistryUnverifiable`: any other 4xx, TLS, a body
that is not a manifest) is raised at once, since asking again gets the same answer. After the last attempt
the error names the registry and how many attempts were made, as one line with a hint.

`RetryingRegistry` applies the policy to each call of the `Registry` protocol, so the code that reads a
manifest or attaches an SBOM never restates it; publish runs its `docker push` attempts through
`RetryPolicy.run` too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from raybuild.config import LoadedConfig
from raybuild.errors import RegistryUnreachable
from raybuild.progress import Progress, silent
from raybuild.registry import Descriptor, Manifest, Registry, api_url

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    attempts: int = 4
    first_delay: float = 1.0  # then doubled: 1 s, 2 s, 4 s

    def delay(self, retry: int) -> float:
        return float(self.first_delay * 2**retry)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry a registry's transient failures; ``progress`` gets one line each."""

    backoff: Backoff = field(default_factory=Backoff)
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    progress: Progress = silent

    @classmethod
    def of(cls, config: LoadedConfig, progress: Progress = silent) -> RetryPolicy:
        """The project's policy: ``[limits].registry_attempts`` attempts, 1 s apart and then doubled."""
        return cls(Backoff(attempts=config.config.limits.registry_attempts), progress=progress)

    def run(self, address: str, action: Callable[[], T], until: float | None = None) -> T:
        """``action``, retried while registry ``address`` is unreachable: ``backoff.attempts`` in all, and
        none that would start after ``until`` (a clock() time). The last failure names the attempts."""
        attempts = self.backoff.attempts
        for attempt in range(1, attempts + 1):
            try:
                return action()
            except RegistryUnreachable as exc:
                delay = self.backoff.delay(attempt - 1)
                if attempt == attempts or (until is not None and self.clock() + delay >= until):
                    raise gave_up(exc, address, attempt) from None
                self.progress(
                    f"registry {address}: {exc.reason}; attempt {attempt + 1}/{attempts} in {delay:g}s"
                )
                self.sleep(delay)
        raise AssertionError("Backoff.attempts must be at least 1")


def gave_up(exc: RegistryUnreachable, address: str, attempts: int) -> RegistryUnreachable:
    """The one error left after ``attempts``: the registry's address, what failed, and what to check."""
    address = exc.address or address
    hint = (
        f"check that it is running and that its address is right: `curl {api_url(address)}`"
        if exc.down
        else "the registry or the network is unstable: rerun (what was already uploaded is kept)"
    )
    return RegistryUnreachable(exc.reason, down=exc.down, address=address, attempts=attempts, hint=hint)


@dataclass(frozen=True)
class RetryingRegistry:
    """A `Registry` whose every read and write goes through ``policy``; ``until`` bounds them all."""

    inner: Registry
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    until: float | None = None

    @property
    def address(self) -> str:
        return self.inner.address

    def reachable(self) -> bool:
        # A probe, asked once: a check that no registry runs must learn it at once, not after the backoff.
        return self.inner.reachable()

    def manifest(self, repository: str, reference: str) -> Manifest | None:
        return self._run(lambda: self.inner.manifest(repository, reference))

    def blob(self, repository: str, digest: str) -> bytes | None:
        return self._run(lambda: self.inner.blob(repository, digest))

    def manifest_body(self, repository: str, reference: str) -> bytes | None:
        return self._run(lambda: self.inner.manifest_body(repository, reference))

    def referrers(self, repository: str, digest: str) -> list[Descriptor] | None:
        return self._run(lambda: self.inner.referrers(repository, digest))

    def put_blob(self, repository: str, data: bytes) -> str:
        return self._run(lambda: self.inner.put_blob(repository, data))

    def put_manifest(self, repository: str, reference: str, body: bytes, media_type: str) -> bool:
        return self._run(lambda: self.inner.put_manifest(repository, reference, body, media_type))

    def _run(self, action: Callable[[], T]) -> T:
        return self.policy.run(self.address, action, self.until)


def retrying(registry: Registry, policy: RetryPolicy, until: float | None = None) -> Registry:
    """``registry`` with every call retried by ``policy``; one already retrying is not wrapped twice."""
    if isinstance(registry, RetryingRegistry):
        return registry
    return RetryingRegistry(registry, policy, until)
