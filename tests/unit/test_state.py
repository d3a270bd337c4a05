"""The state under .raybuild/: its paths, the tag scheme, the build and publish records (merging, atomic
writes, malformed files) and the one function from records to image references."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from raybuild.config import LoadedConfig, load_config
from raybuild.errors import StateError
from raybuild.images import built_ref, image_references, with_found_deployments
from raybuild.records import (
    BuiltImage,
    PublishedImage,
    PublishRecord,
    load_build_record,
    load_publish_record,
    save_build_record,
)
from raybuild.state import (
    DEFAULT_MEASURE_PATH,
    HEAD_KEY,
    build_record_path,
    cluster_record_path,
    dockerfiles_dir,
    publish_record_path,
    state_dir,
)
from raybuild.tags import head_ref, image_ref, latest_ref, multi_platform_ref, published_tag, repository_name
from tests.conftest import other_app

if TYPE_CHECKING:  # only for annotations: "conftest" is ambiguous when unit and integration run together
    from tests.conftest import TmpProject

HEAD_BUILT = BuiltImage(
    HEAD_KEY, "127.0.0.1:5000/demo/ray-head:ray2.60.0-py3.11-111111111111", "sha256:1", "cpu", False
)
DEMO_BUILT = BuiltImage(
    "demo", "127.0.0.1:5000/demo/demo:ray2.60.0-py3.11-cpu-222222222222", "sha256:2", "cpu", False
)
# Published to another registry (publish --registry), under the tag its build got.
DEMO_PUBLISHED = PublishedImage(
    "registry.example/ns/demo:ray2.60.0-py3.11-cpu-222222222222", "sha256:" + "d" * 64, 10, 5
)


@pytest.fixture
def project(tmp_project: TmpProject) -> LoadedConfig:
    tmp_project.add_app("other")
    tmp_project.append_config("\n" + other_app())
    return tmp_project.load()


# -- paths and tags -----------------------------------------------------------------------------------------


def test_every_path_is_under_the_projects_state_folder(project: LoadedConfig) -> None:
    root = project.root / ".raybuild"
    assert state_dir(project) == root
    assert build_record_path(project) == root / "build.json"
    assert publish_record_path(project) == root / "publish.json"
    assert cluster_record_path(project) == root / "up.json"
    assert dockerfiles_dir(project) == root / "dockerfiles"
    assert project.root / DEFAULT_MEASURE_PATH == root / "measure.json"


def test_tags(project: LoadedConfig) -> None:
    demo = project.apps[0]
    assert (
        image_ref(project, demo, "0123456789ab")
        == "127.0.0.1:5000/demo/demo:ray2.60.0-py3.11-cpu-0123456789ab"
    )
    assert head_ref(project, "ba9876543210") == "127.0.0.1:5000/demo/ray-head:ray2.60.0-py3.11-ba9876543210"
    assert latest_ref(project, HEAD_KEY) == "127.0.0.1:5000/demo/ray-head:latest"
    assert latest_ref(project, "demo") == "127.0.0.1:5000/demo/demo:latest"
    assert (repository_name(HEAD_KEY), repository_name("demo")) == ("ray-head", "demo")


# -- the build record ---------------------------------------------------------------------------------------


def test_build_record_merges_builds_and_round_trips(project: LoadedConfig) -> None:
    assert load_build_record(project) == {}
    save_build_record(project, [BuiltImage("demo", "r/demo:1", "sha256:1", "cpu", cached=False)])
    save_build_record(project, [BuiltImage(HEAD_KEY, "r/ray-head:1", "sha256:2", "cpu", cached=True)])
    save_build_record(project, [BuiltImage("demo", "r/demo:2", "sha256:3", "cpu", cached=False)])
    assert load_build_record(project) == {
        HEAD_KEY: BuiltImage(HEAD_KEY, "r/ray-head:1", "sha256:2", "cpu", cached=True),
        "demo": BuiltImage("demo", "r/demo:2", "sha256:3", "cpu", cached=True),
    }
    assert json.loads(build_record_path(project).read_text())["images"]["demo"] == {
        "ref": "r/demo:2",
        "image_id": "sha256:3",
        "device": "cpu",
    }
    assert built_ref(project, "demo") == "r/demo:2"
    assert list(build_record_path(project).parent.iterdir()) == [build_record_path(project)]


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"version": 1}',
        '{"version": 1, "images": {"demo": "r/demo:1"}}',
        '{"version": 1, "images": {"demo": {"ref": "r/demo:1", "image_id": "sha256:1"}}}',
        '{"version": 1, "images": {"demo": {"ref": 1, "image_id": "sha256:1", "device": "cpu"}}}',
    ],
)
def test_a_malformed_build_record_is_a_state_error(project: LoadedConfig, text: str) -> None:
    path = build_record_path(project)
    path.parent.mkdir(parents=True)
    path.write_text(text)
    with pytest.raises(StateError, match="malformed build record") as raised:
        load_build_record(project)
    assert str(path) in str(raised.value)
    assert raised.value.hint == "rerun `raybuild build`"


def test_built_ref_of_an_unbuilt_app_says_to_build_it(project: LoadedConfig) -> None:
    with pytest.raises(StateError, match=r"^app 'demo' has not been built$") as raised:
        built_ref(project, "demo")
    assert raised.value.hint == "run `raybuild build demo`"


# -- the publish record -------------------------------------------------------------------------------------


def test_publish_record_missing_is_none(project: LoadedConfig) -> None:
    assert load_publish_record(project) is None


def test_publish_record_round_trip(project: LoadedConfig) -> None:
    path = publish_record_path(project)
    record = PublishRecord({"demo": DEMO_PUBLISHED})
    record.save(path)
    assert load_publish_record(project) == record
    assert json.loads(path.read_text())["version"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["publish.json"]  # no temporary file left behind
    assert record.get("demo") == DEMO_PUBLISHED and record.get("other") is None
    assert (
        DEMO_PUBLISHED.pinned
        == f"registry.example/ns/demo:ray2.60.0-py3.11-cpu-222222222222@sha256:{'d' * 64}"
    )


GOOD_IMAGE = {"reference": "r/x:1", "digest": "sha256:" + "0" * 64, "size": 1, "compressed_size": 1}


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "malformed publish record: not valid JSON"),
        ("[]", "malformed publish record: expected a JSON object, got list"),
        (json.dumps({"version": 2, "images": {}}), "publish record with version 2, expected 1"),
        (json.dumps({"version": 1}), "key 'images'"),
        (json.dumps({"version": 1, "images": {"x": "r/x:1"}}), "key 'images.x'"),
        (
            json.dumps({"version": 1, "images": {"x": {**GOOD_IMAGE, "digest": "sha256:abc"}}}),
            "images.x.digest",
        ),
        (
            json.dumps({"version": 1, "images": {"x": {**GOOD_IMAGE, "reference": "r/x@sha256:1"}}}),
            "reference",
        ),
        (json.dumps({"version": 1, "images": {"x": {**GOOD_IMAGE, "size": "1"}}}), "images.x.size"),
        (
            json.dumps({"version": 1, "images": {"x": {**GOOD_IMAGE, "compressed_size": True}}}),
            "compressed_size",
        ),
    ],
)
def test_a_malformed_publish_record_is_a_state_error_naming_the_file(
    tmp_path: Path, content: str, match: str
) -> None:
    path = tmp_path / "publish.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(StateError, match=match) as error:
        PublishRecord.load(path)
    assert str(path) in str(error.value)
    assert error.value.hint == "fix or delete the file, then run `raybuild publish` again"


# -- from records to image references -----------------------------------------------------------------------


def test_references_prefer_the_digest_then_the_last_build_then_latest(project: LoadedConfig) -> None:
    save_build_record(project, [HEAD_BUILT, DEMO_BUILT])
    record = PublishRecord({"demo": DEMO_PUBLISHED})
    images = image_references(project, record)
    assert list(images.images) == [HEAD_KEY, "demo", "other"]
    assert images.refs() == {
        HEAD_KEY: str(HEAD_BUILT.ref),
        "demo": DEMO_PUBLISHED.pinned,
        "other": "127.0.0.1:5000/demo/other:latest",
    }
    assert images["demo"].local == str(DEMO_BUILT.ref)  # what this host's engine holds, published or not
    assert [image.recorded for image in images.images.values()] == [True, True, False]
    assert images.warnings == (
        "the publish record has no image for head (Ray base), 'other': using local tags; "
        "run `raybuild publish` to pin them by digest",
    )
    assert images.note == "pinned by digest from .raybuild/publish.json where published, else local tags"


def test_a_build_newer_than_the_published_image_is_referenced_by_its_local_tag(
    project: LoadedConfig,
) -> None:
    """Rendering after a build and before publish must not name the old digest (`render --diff` relies on
    it)."""
    newer = BuiltImage(
        "demo", str(DEMO_BUILT.ref).replace("222222222222", "333333333333"), "sha256:3", "cpu", False
    )
    save_build_record(project, [HEAD_BUILT, newer])
    published = PublishedImage(
        f"127.0.0.1:5000/demo/ray-head:{HEAD_BUILT.ref.tag}", "sha256:" + "a" * 64, 1, 1
    )
    images = image_references(
        project, PublishRecord({"demo": DEMO_PUBLISHED, HEAD_KEY: published}), project.apps[:1]
    )
    assert images.refs() == {HEAD_KEY: published.pinned, "demo": str(newer.ref)}
    assert images.warnings == (
        "built since the last publish: 'demo': using the new local tags; "
        "run `raybuild publish` to pin them by digest",
    )


def test_without_a_publish_record_local_tags_and_a_warning(project: LoadedConfig) -> None:
    save_build_record(project, [DEMO_BUILT])
    images = image_references(project, None)
    assert images.refs()["demo"] == str(DEMO_BUILT.ref)
    assert images.refs()[HEAD_KEY] == "127.0.0.1:5000/demo/ray-head:latest"
    assert len(images.warnings) == 1
    assert images.warnings[0].startswith("no publish record (.raybuild/publish.json): images use local tags")
    assert images.note == "local tags, not published"


def test_everything_published_is_pinned_without_warnings(project: LoadedConfig) -> None:
    published = {
        key: PublishedImage(f"r/{repository_name(key)}:v1", "sha256:" + c * 64, 1, 1)
        for key, c in ((HEAD_KEY, "a"), ("demo", "b"), ("other", "c"))
    }
    images = image_references(project, PublishRecord(published))
    assert images.refs() == {key: image.pinned for key, image in published.items()}
    assert images.warnings == ()
    assert images.note == "pinned by digest from .raybuild/publish.json"


def test_references_for_some_apps_and_the_last_builds_tag(project: LoadedConfig) -> None:
    save_build_record(project, [DEMO_BUILT])
    images = image_references(project, None, project.apps[1:])
    assert list(images.images) == [HEAD_KEY, "other"]
    assert image_references(project, None).built("demo") == str(DEMO_BUILT.ref)
    with pytest.raises(StateError, match=r"^app 'other' has not been built$") as raised:
        images.built("other")
    assert raised.value.hint == "run `raybuild build other`"


def test_found_deployments_round_trip_and_fill_only_apps_that_list_none(tmp_project: TmpProject) -> None:
    text = tmp_project.config_path.read_text(encoding="utf-8")
    tmp_project.write_config(text[: text.index("[[apps.deployments]]")] + "\n" + other_app())
    tmp_project.add_app("other")
    config = tmp_project.load()
    found = ({"name": "Found", "ray_actor_options": {"num_cpus": 0.25}},)
    save_build_record(
        config,
        [
            BuiltImage("demo", "r/demo:1", "sha256:" + "a" * 64, "cpu", False, found),
            BuiltImage("other", "r/other:1", "sha256:" + "b" * 64, "cpu", False, ({"name": "Ignored"},)),
        ],
    )
    assert load_build_record(config)["demo"].deployments == found
    demo, other = with_found_deployments(config).apps
    assert [(d.name, d.ray_actor_options.num_cpus) for d in demo.deployments] == [("Found", 0.25)]
    assert [d.name for d in other.deployments] == ["Other"]  # what raybuild.toml lists wins


def test_an_app_without_deployments_that_was_never_built_cannot_be_rendered(tmp_project: TmpProject) -> None:
    from raybuild.errors import ConfigError
    from raybuild.manifest.render import serve_application

    text = tmp_project.config_path.read_text(encoding="utf-8")
    tmp_project.write_config(text[: text.index("[[apps.deployments]]")])
    (app,) = with_found_deployments(tmp_project.load()).apps
    with pytest.raises(ConfigError, match="lists no deployments, and no build has found them") as raised:
        serve_application(app)
    assert "raybuild build demo" in (raised.value.hint or "")


# -- several platforms ---------------------------------------------------------------------------------------


def test_a_multi_platform_tag_hashes_the_platform_set_and_each_platforms_tag(project: LoadedConfig) -> None:
    amd64 = "127.0.0.1:5000/demo/demo:ray2.60.0-py3.11-cpu-222222222222"
    arm64 = "127.0.0.1:5000/demo/demo:ray2.60.0-py3.11-cpu-333333333333-arm64"
    both = multi_platform_ref(project, "demo", {"linux/amd64": amd64, "linux/arm64": arm64})
    assert both.startswith("127.0.0.1:5000/demo/demo:ray2.60.0-py3.11-cpu-")
    assert both not in (amd64, arm64)
    assert multi_platform_ref(project, "demo", {"linux/arm64": arm64, "linux/amd64": amd64}) == both
    other = multi_platform_ref(project, "demo", {"linux/amd64": amd64, "linux/arm64": arm64 + "x"})
    assert other != both
    head = multi_platform_ref(project, HEAD_KEY, {"linux/amd64": amd64, "linux/arm64": arm64})
    assert head.split(":")[-1].startswith("ray2.60.0-py3.11-") and "/ray-head:" in head


def test_the_build_record_keeps_each_platforms_tag(project: LoadedConfig) -> None:
    platform_refs = (("linux/amd64", "r/demo:a"), ("linux/arm64", "r/demo:b-arm64"))
    save_build_record(
        project,
        [HEAD_BUILT, BuiltImage("demo", "r/demo:ab", "sha256:2", "cpu", False, (), False, platform_refs)],
    )
    demo = load_build_record(project)["demo"]
    assert [(p, str(ref)) for p, ref in demo.platform_refs] == list(platform_refs)
    assert demo.platforms == ("linux/amd64", "linux/arm64")
    assert str(demo.platform_ref("linux/arm64")) == "r/demo:b-arm64"
    assert tuple(map(str, demo.refs)) == ("r/demo:ab", "r/demo:a", "r/demo:b-arm64")
    head = load_build_record(project)[HEAD_KEY]
    assert (head.platforms, head.platform_ref("linux/amd64"), head.platform_ref("linux/arm64")) == (
        ("linux/amd64",),
        HEAD_BUILT.ref,
        None,
    )
    # A record without platforms keeps its shape: no key is written for a default-platform image.
    assert "platforms" not in json.loads(build_record_path(project).read_text())["images"][HEAD_KEY]


def test_a_build_record_naming_an_unknown_platform_is_refused(project: LoadedConfig) -> None:
    save_build_record(project, [HEAD_BUILT])
    data = json.loads(build_record_path(project).read_text())
    data["images"][HEAD_KEY]["platforms"] = {"linux/s390x": "r:x"}
    build_record_path(project).write_text(json.dumps(data))
    with pytest.raises(StateError, match=r"images\._head\.platforms"):
        load_build_record(project)


def test_gzip_publishes_under_the_build_tag_and_zstd_under_a_tag_of_its_own(project: LoadedConfig) -> None:
    tag = "ray2.60.0-py3.11-cpu-0123456789ab"
    assert published_tag(project, tag) == tag  # today's tags and goldens stay where they are
    project.path.write_text(project.path.read_text() + '\n[publish]\ncompression = "zstd"\n')
    zstd = published_tag(load_config(project.path), tag)
    assert zstd.startswith("ray2.60.0-py3.11-cpu-") and zstd != tag
    assert len(zstd) == len(tag)
    assert published_tag(load_config(project.path), tag) == zstd  # deterministic
    project.path.write_text(project.path.read_text() + "compression_level = 3\n")
    assert published_tag(load_config(project.path), tag) not in (tag, zstd)
