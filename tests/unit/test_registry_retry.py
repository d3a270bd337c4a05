"""The one retry policy: transient registry failures retried on the backoff, permanent ones never."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from raybuild.errors import RaybuildError, RegistryUnreachable, RegistryUnverifiable
from raybuild.registry import OCI_INDEX, Descriptor, Registry, attach
from raybuild.registry_retry import Backoff, RetryingRegistry, RetryPolicy, retrying
from tests.unit.fakes import FakeRegistry

REPO = "ns/demo"
CONFIG = b'{"rootfs": {"diff_ids": []}}'


class Clock:
    """A clock that ``sleep`` moves: a deadline is tested without waiting for it."""

    def __init__(self) -> None:
        self.now, self.sleeps, self.lines = 0.0, list[float](), list[str]()

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def policy(self, attempts: int = 4) -> RetryPolicy:
        return RetryPolicy(Backoff(attempts=attempts), self.sleep, lambda: self.now, self.lines.append)


def transient(times: int, reason: str = "HTTP 503 Service Unavailable") -> list[Exception]:
    return [RegistryUnreachable(reason, down=False) for _ in range(times)]


def stocked() -> FakeRegistry:
    registry = FakeRegistry()
    registry.store(REPO, "v1", "sha256:" + "c" * 64, config=CONFIG)
    return registry


# Each call of the Registry protocol, and which of the fake's failure lists it draws from.
CALLS: list[tuple[str, Callable[[Registry], Any], str]] = [
    ("manifest", lambda r: r.manifest(REPO, "v1"), "failures"),
    ("blob", lambda r: r.blob(REPO, "sha256:" + "c" * 64), "blob_failures"),
    ("manifest_body", lambda r: r.manifest_body(REPO, "v1"), "failures"),
    ("put_blob", lambda r: r.put_blob(REPO, b"data"), "write_failures"),
    ("put_manifest", lambda r: r.put_manifest(REPO, "v2", b"{}", OCI_INDEX), "write_failures"),
]


@pytest.mark.parametrize(("name", "call", "failures"), CALLS, ids=[c[0] for c in CALLS])
def test_every_read_and_write_is_retried_on_a_transient_failure(
    name: str, call: Callable[[Registry], Any], failures: str
) -> None:
    registry, clock = stocked(), Clock()
    setattr(registry, failures, transient(2))
    expected = call(stocked())
    assert call(RetryingRegistry(registry, clock.policy())) == expected
    assert clock.sleeps == [1.0, 2.0]
    assert clock.lines == [
        "registry 127.0.0.1:5000: HTTP 503 Service Unavailable; attempt 2/4 in 1s",
        "registry 127.0.0.1:5000: HTTP 503 Service Unavailable; attempt 3/4 in 2s",
    ]


@pytest.mark.parametrize(("name", "call", "failures"), CALLS, ids=[c[0] for c in CALLS])
def test_a_permanent_failure_is_raised_at_once(
    name: str, call: Callable[[Registry], Any], failures: str
) -> None:
    registry, clock = stocked(), Clock()
    setattr(registry, failures, [RegistryUnverifiable("HTTP 401 Unauthorized"), *transient(1)])
    with pytest.raises(RegistryUnverifiable, match="401"):
        call(RetryingRegistry(registry, clock.policy()))
    assert clock.sleeps == [] and len(getattr(registry, failures)) == 1


def test_after_the_last_attempt_one_line_names_the_registry_and_the_attempts() -> None:
    registry, clock = stocked(), Clock()
    registry.failures = transient(5)
    with pytest.raises(RegistryUnreachable) as raised:
        RetryingRegistry(registry, clock.policy(attempts=3)).manifest(REPO, "v1")
    error = raised.value
    assert isinstance(error, RaybuildError)
    assert str(error) == "registry 127.0.0.1:5000 kept failing (HTTP 503 Service Unavailable, 3 attempts)"
    assert (error.address, error.attempts, error.down) == ("127.0.0.1:5000", 3, False)
    assert error.hint and "rerun" in error.hint
    assert clock.sleeps == [1.0, 2.0] and len(registry.failures) == 2


def test_a_registry_that_is_down_says_how_to_check_it() -> None:
    registry, clock = stocked(), Clock()
    registry.failures = [RegistryUnreachable("connection refused", down=True) for _ in range(4)]
    with pytest.raises(RegistryUnreachable) as raised:
        RetryingRegistry(registry, clock.policy()).blob(REPO, "sha256:" + "c" * 64)
    assert str(raised.value) == "registry 127.0.0.1:5000 is not reachable (connection refused, 4 attempts)"
    assert raised.value.hint is not None and "`curl http://127.0.0.1:5000/v2/`" in raised.value.hint


def test_no_retry_starts_after_the_deadline() -> None:
    registry, clock = stocked(), Clock()
    registry.failures = transient(4)
    # Attempt 1 fails at 0 s and retries at 1 s; attempt 2 fails, and its retry (at 3 s) is past 2.5 s.
    with pytest.raises(RegistryUnreachable, match=r"2 attempts\)$"):
        RetryingRegistry(registry, clock.policy(), until=2.5).manifest(REPO, "v1")
    assert clock.sleeps == [1.0]


def test_reachable_is_a_probe_asked_once() -> None:
    registry, clock = FakeRegistry(up=False), Clock()
    assert RetryingRegistry(registry, clock.policy()).reachable() is False
    assert clock.sleeps == []


def test_a_retrying_registry_is_not_wrapped_twice() -> None:
    registry, clock = stocked(), Clock()
    once = retrying(registry, clock.policy())
    assert retrying(once, clock.policy(attempts=9)) is once
    registry.failures = transient(4)
    with pytest.raises(RegistryUnreachable, match="4 attempts"):
        once.manifest(REPO, "v1")  # four attempts, not sixteen
    assert len(clock.sleeps) == 3


def test_an_sbom_attach_retries_its_writes_where_they_fail() -> None:
    registry, clock = stocked(), Clock()
    subject = Descriptor.of("application/vnd.oci.image.manifest.v1+json", b"subject")
    blob = Descriptor.of("application/vnd.cyclonedx+json", b"sbom")
    registry.write_failures = [*transient(1), *transient(1, "connection reset by peer")]
    attach(RetryingRegistry(registry, clock.policy()), REPO, subject, "sbom", blob, b"sbom", {})
    assert clock.sleeps == [1.0, 2.0]  # the first write failed twice, then went through
    uploads = [w for w in registry.writes if w.startswith("upload")]
    assert len(uploads) == 2  # the empty config and the SBOM, each uploaded once
