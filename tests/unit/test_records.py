"""The records as pydantic models: files written by earlier raybuild versions load and are written back byte
for byte, an unknown version and a corrupt file are each one error naming the file, and references inside
them are parsed `ImageRef`s that print as they were written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from raybuild.config import LoadedConfig, load_config
from raybuild.errors import GateError, StateError
from raybuild.local.cluster import CLUSTER, LocalCluster
from raybuild.records import (
    BUILD,
    PUBLISH,
    BuildRecord,
    PublishRecord,
    load_build_record,
    load_record,
    save_build_record,
    save_record,
)
from raybuild.reference import ImageRef
from raybuild.state import HEAD_KEY, build_record_path, cluster_record_path
from raybuild.tags import head_ref, image_ref, latest_ref
from raybuild.verify.results import MEASURE

if TYPE_CHECKING:
    from tests.conftest import TmpProject

# Written by the writers of the raybuild before records.py (state.save_build_record, PublishRecord.to_json,
# LocalCluster.to_json), with deployments, several platforms, an SBOM and a front: every optional key.
FIXTURES = Path(__file__).parent / "records_fixtures"
REPO_CONFIG = Path(__file__).parents[2] / "raybuild.toml"


@pytest.mark.parametrize(
    ("name", "record_format"), [("build.json", BUILD), ("publish.json", PUBLISH), ("up.json", CLUSTER)]
)
def test_a_record_written_before_loads_and_is_written_back_byte_for_byte(
    tmp_path: Path, name: str, record_format: object
) -> None:
    assert record_format in (BUILD, PUBLISH, CLUSTER)
    fixture = FIXTURES / name
    record = load_record(fixture, record_format)  # type: ignore[call-overload]
    assert record is not None
    again = tmp_path / name
    save_record(again, record, record_format)  # type: ignore[call-overload]
    written = again.read_text(encoding="utf-8")
    if record_format is CLUSTER:  # up.json had no version key: it is the one key a save adds
        assert json.loads(written).pop("version") == 1
        written = json.dumps({k: v for k, v in json.loads(written).items() if k != "version"}, indent=2)
        assert written + "\n" == json.dumps(json.loads(fixture.read_text()), indent=2) + "\n"
    else:
        assert written == fixture.read_text(encoding="utf-8")
    assert load_record(again, record_format) == record  # type: ignore[call-overload]


def test_the_fixtures_fields_arrive_parsed(tmp_project: TmpProject) -> None:
    config = tmp_project.load()
    build_record_path(config).parent.mkdir(parents=True)
    shutil.copy(FIXTURES / "build.json", build_record_path(config))
    demo = load_build_record(config)["demo"]
    assert demo.ref == ImageRef("127.0.0.1:5000", "demo/demo", "ray2.60.0-py3.11-cpu-abcdefabcdef")
    assert demo.platforms == ("linux/amd64", "linux/arm64")
    assert demo.platform_ref("linux/arm64") == ImageRef.parse(
        "127.0.0.1:5000/demo/demo:ray2.60.0-py3.11-cpu-333333333333-arm64"
    )
    assert demo.deployments == ({"name": "Found", "ray_actor_options": {"num_cpus": 0.25}},)
    assert demo.cached  # whatever the record holds was made by an earlier build
    published = PublishRecord.load(FIXTURES / "publish.json")
    assert published is not None
    image = published.images["demo"]
    assert (image.reference.host, image.reference.tag) == (
        "registry.example",
        "ray2.60.0-py3.11-cpu-abcdefabcdef",
    )
    assert image.sbom == "sha256:" + "c" * 64 and published.images[HEAD_KEY].sbom is None
    cluster = load_record(FIXTURES / "up.json", CLUSTER)
    assert isinstance(cluster, LocalCluster)
    assert cluster.node("head").publish == {8265: 0}  # JSON's string keys back to ports
    assert cluster.front == "service"


def test_the_bundled_projects_tags_round_trip_through_image_ref() -> None:
    config = load_config(REPO_CONFIG)
    tags = [head_ref(config, "0123456789ab"), latest_ref(config, HEAD_KEY)]
    tags += [image_ref(config, app, "ba9876543210") for app in config.apps]
    tags += [latest_ref(config, app.name) for app in config.apps]
    assert len(tags) > 2
    for tag in tags:
        assert str(ImageRef.parse(tag)) == tag


@pytest.mark.parametrize(
    ("record_format", "text", "match"),
    [
        (BUILD, '{"version": 2, "images": {}}', r"build record with version 2, expected 1$"),
        (BUILD, '{"images": {}}', r"build record with no 'version' key, expected 1$"),
        (PUBLISH, '{"version": "1", "images": {}}', r"publish record with version '1', expected 1$"),
        (CLUSTER, '{"version": 2}', r"cluster record with version 2, expected 1$"),
    ],
)
def test_an_unknown_version_is_one_state_error(
    tmp_path: Path, record_format: object, text: str, match: str
) -> None:
    path = tmp_path / "record.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(StateError, match=match) as raised:
        load_record(path, record_format)  # type: ignore[call-overload]
    assert str(raised.value).startswith(f"{path}: ")
    assert raised.value.hint


BUILT = {"ref": "r/demo:1", "image_id": "sha256:1", "device": "cpu"}


@pytest.mark.parametrize(
    ("record_format", "text", "problem", "hint"),
    [
        (BUILD, b"{", "not valid JSON (Expecting property name", "rerun `raybuild build`"),
        (BUILD, b"\xff", "cannot read the build record: not valid UTF-8", "rerun `raybuild build`"),
        (BUILD, b"[]", "expected a JSON object, got list", "rerun `raybuild build`"),
        (
            BUILD,
            json.dumps({"version": 1, "images": {"demo": {**BUILT, "ref": "r/Demo:1"}}}).encode(),
            "key 'images.demo.ref': 'r/Demo:1': repository names must be lower case",
            "rerun `raybuild build`",
        ),
        (
            BUILD,
            json.dumps(
                {"version": 1, "images": {"demo": {**BUILT, "platforms": {"linux/s390x": "r:x"}}}}
            ).encode(),
            "key 'images.demo.platforms.linux/s390x': 'linux/s390x' is not a platform",
            "rerun `raybuild build`",
        ),
        (
            PUBLISH,
            json.dumps({"version": 1, "images": {"x": {"reference": "r/x:1"}}}).encode(),
            "key 'images.x.digest': missing required key",
            "fix or delete the file, then run `raybuild publish` again",
        ),
        (
            CLUSTER,
            b'{"name": "x"}',
            "key 'network': missing required key",
            "run `raybuild down`, then `raybuild up`",
        ),
    ],
)
def test_a_corrupt_file_is_one_state_error_naming_the_file_and_key(
    tmp_path: Path, record_format: object, text: bytes, problem: str, hint: str
) -> None:
    path = tmp_path / "record.json"
    path.write_bytes(text)
    with pytest.raises(StateError) as raised:
        load_record(path, record_format)  # type: ignore[call-overload]
    message = str(raised.value)
    assert message.startswith(f"{path}: ") and problem in message and "\n" not in message
    assert raised.value.hint == hint


def test_a_missing_record_is_no_record(tmp_path: Path) -> None:
    assert load_record(tmp_path / "build.json", BUILD) is None
    assert load_record(tmp_path / "publish.json", PUBLISH) is None
    assert load_record(tmp_path / "up.json", CLUSTER) is None


def test_the_measure_document_goes_through_the_same_reader_with_its_own_error(tmp_path: Path) -> None:
    path = tmp_path / "measure.json"
    path.write_text('{"schema": "raybuild.measure/v0"}', encoding="utf-8")
    with pytest.raises(GateError, match=r"measure document with schema 'raybuild\.measure/v0'") as raised:
        load_record(path, MEASURE)
    assert raised.value.hint == "re-measure with this raybuild version, or check the right file was passed"


def test_save_and_load_round_trip_and_leave_no_temporary_file(project_config: LoadedConfig) -> None:
    from raybuild.records import BuiltImage

    images = [
        BuiltImage(HEAD_KEY, ImageRef.parse("127.0.0.1:5000/demo/ray-head:t1"), "sha256:1", "cpu", False),
        BuiltImage(
            "demo",
            ImageRef.parse("127.0.0.1:5000/demo/demo:t2"),
            "sha256:2",
            "cpu",
            False,
            platform_refs=(("linux/arm64", ImageRef.parse("127.0.0.1:5000/demo/demo:t2-arm64")),),
        ),
    ]
    save_build_record(project_config, images)
    loaded = load_build_record(project_config)
    assert [(i.ref, i.platform_refs) for i in loaded.values()] == [(i.ref, i.platform_refs) for i in images]
    assert list(build_record_path(project_config).parent.iterdir()) == [build_record_path(project_config)]
    assert BuildRecord.of(loaded.values()) == load_record(build_record_path(project_config), BUILD)
    assert not cluster_record_path(project_config).exists()


@pytest.fixture
def project_config(tmp_project: TmpProject) -> LoadedConfig:
    return tmp_project.load()
