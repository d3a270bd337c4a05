"""Unit tests reach no registry and no Debian mirror, whatever the machine runs.

`Builder` asks the project's registry for every tag before it builds, `render --diff` reads image labels
from it, and bootstrapping a root filesystem reads the Debian suite's Release date; here the registry is an
empty fake and the date a constant. Tests that exercise either pass their own fake.
"""

from __future__ import annotations

import pytest

from raybuild.image import build, epoch
from raybuild.manifest import delta
from tests.unit.fakes import FakeRegistry

RELEASE_DATE = 1_780_000_000


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(build, "HttpRegistry", lambda address: FakeRegistry(address))
    monkeypatch.setattr(delta, "HttpRegistry", lambda address: FakeRegistry(address))
    monkeypatch.setattr(epoch, "fetch_release_date", lambda url, timeout=30.0: RELEASE_DATE)
