"""The SBOM attached in the registry: OCI 1.1 artifact with a subject, the fallback tag, no re-push when
unchanged, and the publish record's SBOM digest; over the in-memory registry."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest

from raybuild.config import LoadedConfig
from raybuild.engine import Result
from raybuild.errors import PublishError
from raybuild.progress import Progress
from raybuild.records import PublishRecord
from raybuild.reference import ImageRef
from raybuild.registry import (
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    RegistryUnverifiable,
    attach,
    fallback_tag,
    find_referrers,
)
from raybuild.ship.attach import MARK, SbomAttacher, attached_sbom
from raybuild.ship.publish import Publisher
from raybuild.ship.sbom import MEDIA_TYPE, SbomMaker
from raybuild.ship.wheels import WheelHashes
from raybuild.state import HEAD_KEY, publish_record_path
from tests.unit.fakes import FakeEngine, FakeRegistry
from tests.unit.ship.test_publish import store
from tests.unit.ship.test_sbom import DEMO_REF, HEAD_ID, HEAD_REF, IMAGE_ID, built_project, probe_report

if TYPE_CHECKING:
    from tests.conftest import TmpProject

REPOSITORY = "demo/demo"


@pytest.fixture
def sbom_project(tmp_project: TmpProject) -> LoadedConfig:
    return built_project(tmp_project)


SUBJECT = Descriptor("application/vnd.docker.distribution.manifest.v2+json", "sha256:" + "5" * 64, 1988)


def artifact(registry: FakeRegistry, data: bytes, **annotations: str) -> Descriptor:
    blob = Descriptor.of(MEDIA_TYPE, data)
    return attach(
        registry, REPOSITORY, SUBJECT, MEDIA_TYPE, blob, data, annotations or {MARK: "demo.cdx.json"}
    )


def test_attach_writes_blobs_an_artifact_manifest_and_the_fallback_index() -> None:
    registry = FakeRegistry()
    manifest = artifact(registry, b'{"bomFormat": "CycloneDX"}')
    body = json.loads(registry.bodies[(REPOSITORY, manifest.digest)])
    assert body["mediaType"] == OCI_MANIFEST and body["artifactType"] == MEDIA_TYPE
    assert body["config"] == {
        "mediaType": "application/vnd.oci.empty.v1+json",
        "digest": body["config"]["digest"],
        "size": 2,
    }
    assert registry.blobs[body["config"]["digest"]] == b"{}"
    assert body["subject"] == {"mediaType": SUBJECT.media_type, "digest": SUBJECT.digest, "size": 1988}
    assert registry.blobs[body["layers"][0]["digest"]] == b'{"bomFormat": "CycloneDX"}'
    index = json.loads(registry.bodies[(REPOSITORY, fallback_tag(SUBJECT.digest))])
    assert index["mediaType"] == OCI_INDEX
    assert [Descriptor.from_json(d) for d in index["manifests"]] == [manifest]
    assert fallback_tag(SUBJECT.digest) == "sha256-" + "5" * 64
    assert find_referrers(registry, REPOSITORY, SUBJECT.digest, MEDIA_TYPE) == [manifest]


def test_a_newer_sbom_replaces_raybuilds_entry_and_keeps_other_referrers() -> None:
    registry = FakeRegistry()
    signature = artifact(registry, b"signature", **{"dev.sigstore.cosign": "x"})
    artifact(registry, b"old sbom")
    newer = attach(
        registry, REPOSITORY, SUBJECT, MEDIA_TYPE, Descriptor.of(MEDIA_TYPE, b"new sbom"), b"new sbom",
        {MARK: "demo.cdx.json"}, replaces=lambda d: MARK in d.annotations,
    )  # fmt: skip
    assert find_referrers(registry, REPOSITORY, SUBJECT.digest) == [signature, newer]


def test_a_registry_with_the_referrers_api_gets_no_fallback_tag() -> None:
    registry = FakeRegistry(referrers_api=True)
    manifest = artifact(registry, b"sbom")
    assert (REPOSITORY, fallback_tag(SUBJECT.digest)) not in registry.bodies
    assert find_referrers(registry, REPOSITORY, SUBJECT.digest, MEDIA_TYPE) == [manifest]


def test_the_same_artifact_has_the_same_digest() -> None:
    assert artifact(FakeRegistry(), b"sbom") == artifact(FakeRegistry(), b"sbom")


def test_attached_sbom_reads_the_layer_back() -> None:
    registry = FakeRegistry()
    manifest = artifact(registry, b"the sbom")
    assert attached_sbom(registry, REPOSITORY, manifest) == b"the sbom"
    registry.bodies[(REPOSITORY, manifest.digest)] = b"[]"
    with pytest.raises(RegistryUnverifiable, match="is not a manifest"):
        attached_sbom(registry, REPOSITORY, manifest)


# -- through publish -----------------------------------------------------------------------------------------


@dataclass
class PushEngine(FakeEngine):
    """The fake engine, plus what publish asks of docker: inspect with sizes, and push into the registry."""

    registry: FakeRegistry = field(default_factory=FakeRegistry)

    def __post_init__(self) -> None:
        super().__init__([DEMO_REF, HEAD_REF])
        self.images.update({DEMO_REF: IMAGE_ID, HEAD_REF: HEAD_ID})
        self.script("run_python", output=probe_report())

    def inspect(self, ref: str) -> dict[str, Any]:
        return {"Id": self.images[ref], "Size": 100}

    def push(self, ref: str, on_line: Progress | None = None, timeout: float | None = None) -> Result:
        digest = store(self.registry, ref, self.images[ref])
        return Result(
            ["docker", "push", ref], 0, f"{ImageRef.parse(ref).tag_or_latest}: digest: {digest} size: 1"
        )


def publisher(
    project: LoadedConfig, registry: FakeRegistry, when: datetime, progress: list[str]
) -> Publisher:
    engine = PushEngine(registry=registry)
    maker = SbomMaker(engine, WheelHashes(None), progress.append, when, project="0123456789abcdef")
    return Publisher(
        project, engine, connect=registry.connect, progress=progress.append, secrets=(),
        attach_sbom=SbomAttacher(project, maker, progress=progress.append),
    )  # fmt: skip


def test_publish_attaches_each_sbom_and_records_its_digest(sbom_project: LoadedConfig) -> None:
    registry, progress = FakeRegistry(), list[str]()
    results = publisher(sbom_project, registry, datetime(2026, 1, 1, tzinfo=UTC), progress).publish()
    record = PublishRecord.load(publish_record_path(sbom_project))
    assert record is not None
    for result in results:
        repository = result.image.reference.path
        (found,) = find_referrers(registry, repository, result.image.digest, MEDIA_TYPE)
        assert record.images[result.key].sbom == found.digest == result.image.sbom
        sbom = json.loads(attached_sbom(registry, repository, found) or b"")
        root = {p["name"]: p["value"] for p in sbom["metadata"]["component"]["properties"]}
        # The attached SBOM names the very digest it hangs from.
        assert root["raybuild:registry-digest"] == result.image.digest
        local = sbom_project.root / ".raybuild" / "sbom" / ("ray-head" if result.key == HEAD_KEY else "demo")
        assert json.loads(local.with_suffix(".cdx.json").read_text()) == sbom


def test_an_unchanged_sbom_is_not_pushed_again(sbom_project: LoadedConfig) -> None:
    registry, progress = FakeRegistry(), list[str]()
    first = publisher(sbom_project, registry, datetime(2026, 1, 1, tzinfo=UTC), progress).publish()
    writes = len(registry.writes)
    # A later day: only the SBOM's timestamp differs, so nothing is written.
    again = publisher(sbom_project, registry, datetime(2026, 2, 1, tzinfo=UTC), progress).publish()
    assert len(registry.writes) == writes
    assert [r.image.sbom for r in again] == [r.image.sbom for r in first]
    assert any("the registry already holds this SBOM" in line for line in progress)


def test_a_registry_that_refuses_the_sbom_fails_publish_in_one_line(sbom_project: LoadedConfig) -> None:
    registry, progress = FakeRegistry(), list[str]()
    registry.write_failures = [RegistryUnverifiable("put manifest: HTTP 401 Unauthorized")]
    with pytest.raises(
        PublishError, match=r"could not attach the SBOM to .*HTTP 401.*nothing was recorded"
    ) as exc:
        publisher(sbom_project, registry, datetime(2026, 1, 1, tzinfo=UTC), progress).publish()
    assert exc.value.hint and "--no-sbom" in exc.value.hint
    assert not publish_record_path(sbom_project).exists()
