"""The image delta between the deployed manifest and a new one, KubeRay's upgrade decision, and the two
commands that report it (`render --diff`, `check --deployed`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from raybuild.cli import check as check_cli
from raybuild.cli import render as render_cli
from raybuild.config import LoadedConfig
from raybuild.errors import ManifestError
from raybuild.manifest.delta import (
    CODE_LABEL,
    LOCK_LABEL,
    RAY_LOCK_LABEL,
    ImageRef,
    diff_manifests,
    image_changes,
    image_labels,
)
from raybuild.manifest.render import render_manifest
from raybuild.records import BuiltImage, PublishedImage, PublishRecord, save_build_record
from raybuild.state import HEAD_KEY, publish_record_path
from tests.unit.fakes import FakeEngine, FakeRegistry
from tests.unit.manifest.test_render import fixture_record, write_fixture
from tests.unit.verify.test_gate import app as measured_app
from tests.unit.verify.test_gate import measurement

if TYPE_CHECKING:
    from tests.conftest import MainResult

REGISTRY = "registry.example:5000/fixture"
NEW_WEB = PublishedImage(f"{REGISTRY}/web:v2", "sha256:" + "d" * 64, 1000, 400)


@pytest.fixture
def config(tmp_path: Path) -> LoadedConfig:
    return write_fixture(tmp_path / "project")


def manifest(config: LoadedConfig, record: PublishRecord | None, **changes: PublishedImage) -> str:
    if record is not None and changes:
        record = PublishRecord({**record.images, **changes})
    return render_manifest(config, record).text


def edited(text: str, edit: Any) -> str:
    """The manifest with its RayService edited in place by ``edit(doc)``."""
    doc = yaml.safe_load(text)
    edit(doc)
    return yaml.safe_dump(doc)


def labels_of(table: dict[str, dict[str, str]]) -> Any:
    return lambda ref: table.get(str(ref))


# -- which images changed ------------------------------------------------------------------------------------


def test_the_same_manifest_changes_nothing_and_upgrades_nothing(config: LoadedConfig) -> None:
    text = manifest(config, fixture_record())
    delta = diff_manifests(text, "deployed.yaml", text)
    assert [(c.label, c.status, c.digest_changed) for c in delta.changes] == [
        ("head", "unchanged", False), ("web", "unchanged", False), ("vision", "unchanged", False)
    ]  # fmt: skip
    assert not delta.upgrade and delta.outcome == "none"
    assert (
        delta.summary() == "this merge does not upgrade the RayService: web (unchanged), vision (unchanged)"
    )


def test_a_new_app_digest_upgrades_the_rayservice_and_says_why(config: LoadedConfig) -> None:
    deployed = manifest(config, fixture_record())
    new = manifest(config, fixture_record(), web=NEW_WEB)
    old_web = f"{REGISTRY}/web:v1@sha256:{'b' * 64}"
    labels = labels_of({
        old_web: {RAY_LOCK_LABEL: "r1", LOCK_LABEL: "l1", CODE_LABEL: "c1"},
        str(ImageRef.parse(NEW_WEB.pinned)): {RAY_LOCK_LABEL: "r1", LOCK_LABEL: "l1", CODE_LABEL: "c2"},
    })  # fmt: skip
    delta = diff_manifests(deployed, "deployed.yaml", new, labels)
    web = delta.changes[1]
    assert (web.status, web.reason, web.digest_changed) == ("changed", "code changed", True)
    assert delta.upgrade and delta.outcome == "new-cluster"
    assert delta.summary() == "this merge upgrades the RayService: web (code changed), vision (unchanged)"
    assert "the image of web changed: KubeRay starts a new RayCluster" in delta.why
    assert delta.lines()[1] == f"web: code changed: sha256:{'b' * 64} -> {NEW_WEB.digest}"


@pytest.mark.parametrize(
    ("before", "after", "reason"),
    [
        ({LOCK_LABEL: "l1", CODE_LABEL: "c1"}, {LOCK_LABEL: "l2", CODE_LABEL: "c1"}, "packages changed"),
        ({LOCK_LABEL: "l1", CODE_LABEL: "c1"}, {LOCK_LABEL: "l2", CODE_LABEL: "c2"},
         "packages and code changed"),
        ({RAY_LOCK_LABEL: "r1", LOCK_LABEL: "l1"}, {RAY_LOCK_LABEL: "r2", LOCK_LABEL: "l2"}, "Ray changed"),
        ({LOCK_LABEL: "l1", CODE_LABEL: "c1"}, {LOCK_LABEL: "l1", CODE_LABEL: "c1"},
         "image changed (base, templates or env)"),
    ],
)  # fmt: skip
def test_the_reason_comes_from_raybuilds_labels(
    before: dict[str, str], after: dict[str, str], reason: str
) -> None:
    old, new = (
        ImageRef.parse("r/ns/web:v1@sha256:" + "1" * 64),
        ImageRef.parse("r/ns/web:v2@sha256:" + "2" * 64),
    )
    (change,) = image_changes({"web": old}, {"web": new}, labels_of({str(old): before, str(new): after}))
    assert change.reason == reason


def test_without_labels_an_image_just_changed() -> None:
    old, new = (
        ImageRef.parse("r/ns/web:v1@sha256:" + "1" * 64),
        ImageRef.parse("r/ns/web:v2@sha256:" + "2" * 64),
    )
    assert image_changes({"web": old}, {"web": new})[0].reason == "image changed"
    assert image_changes({"web": old}, {"web": new}, lambda ref: None)[0].reason == "image changed"


def test_the_same_tag_with_another_digest_is_named_as_such(config: LoadedConfig) -> None:
    """The bug this model exists for: same inputs, rebuilt elsewhere, new digest, a whole new cluster."""
    moved = PublishedImage(f"{REGISTRY}/web:v1", "sha256:" + "e" * 64, 1000, 400)
    delta = diff_manifests(
        manifest(config, fixture_record()), "d.yaml", manifest(config, fixture_record(), web=moved)
    )
    assert delta.changes[1].reason == "same inputs, new digest"
    assert delta.upgrade


def test_an_unpublished_build_of_the_deployed_tag_is_unchanged(config: LoadedConfig) -> None:
    """On a pull request nothing is published: the new manifest names local tags, the deployed one digests."""
    deployed = manifest(config, fixture_record())
    save_build_record(config, [
        BuiltImage(key, f"{REGISTRY}/{name}:v1", "sha256:" + "0" * 64, "cpu", True)
        for key, name in ((HEAD_KEY, "ray-head"), ("web", "web"), ("vision", "vision"))
    ])  # fmt: skip
    delta = diff_manifests(deployed, "d.yaml", manifest(config, None))
    assert {c.status for c in delta.changes} == {"unchanged"}
    assert delta.outcome == "none"


def test_an_unpublished_new_build_is_changed_with_its_digest_unknown(config: LoadedConfig) -> None:
    deployed = manifest(config, fixture_record())
    save_build_record(config, [BuiltImage("web", f"{REGISTRY}/web:v2", "sha256:" + "0" * 64, "cpu", False)])
    new = manifest(config, PublishRecord({k: v for k, v in fixture_record().images.items() if k != "web"}))
    web = diff_manifests(deployed, "d.yaml", new).changes[1]
    assert (web.status, web.digest_changed) == ("changed", None)
    assert web.to_dict()["after"] == f"{REGISTRY}/web:v2"


# -- what KubeRay does with it -------------------------------------------------------------------------------


def _cluster(doc: dict[str, Any]) -> dict[str, Any]:
    cluster: dict[str, Any] = doc["spec"]["rayClusterConfig"]
    return cluster


def test_worker_replicas_are_the_autoscalers_and_upgrade_nothing(config: LoadedConfig) -> None:
    text = manifest(config, fixture_record())

    def scale(doc: dict[str, Any]) -> None:
        group = _cluster(doc)["workerGroupSpecs"][0]
        group.update(replicas=4, minReplicas=2, maxReplicas=9)

    assert diff_manifests(text, "d.yaml", edited(text, scale)).outcome == "none"


def test_any_other_cluster_change_upgrades_even_with_the_same_images(config: LoadedConfig) -> None:
    text = manifest(config, fixture_record())

    def more_memory(doc: dict[str, Any]) -> None:
        _cluster(doc)["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"] = {
            "limits": {"cpu": "9"}
        }

    delta = diff_manifests(text, "d.yaml", edited(text, more_memory))
    assert delta.upgrade and delta.why.startswith("rayClusterConfig changed")


def test_a_worker_group_added_at_the_end_is_an_in_place_update(config: LoadedConfig) -> None:
    text = manifest(config, fixture_record())

    def add_group(doc: dict[str, Any]) -> None:
        groups = _cluster(doc)["workerGroupSpecs"]
        extra = json.loads(json.dumps(groups[0]))
        extra["groupName"] = "newapp"
        extra["template"]["spec"]["containers"][0]["image"] = f"{REGISTRY}/newapp:v1"
        groups.append(extra)

    delta = diff_manifests(text, "d.yaml", edited(text, add_group))
    assert delta.outcome == "in-place" and not delta.upgrade
    assert delta.changes[-1].status == "added" and delta.changes[-1].reason == "new app"
    assert delta.summary() == (
        "this merge updates the RayService's cluster in place: "
        "web (unchanged), vision (unchanged), newapp (new app)"
    )


def test_a_removed_app_upgrades(config: LoadedConfig) -> None:
    text = manifest(config, fixture_record())

    def drop(doc: dict[str, Any]) -> None:
        _cluster(doc)["workerGroupSpecs"].pop()

    delta = diff_manifests(text, "d.yaml", edited(text, drop))
    assert delta.upgrade and delta.changes[-1].status == "removed"


def test_a_serve_config_change_alone_is_applied_to_the_running_cluster(config: LoadedConfig) -> None:
    text = manifest(config, fixture_record())

    def route(doc: dict[str, Any]) -> None:
        doc["spec"]["serveConfigV2"] = doc["spec"]["serveConfigV2"].replace("/web", "/web2")

    delta = diff_manifests(text, "d.yaml", edited(text, route))
    assert delta.outcome == "none" and delta.serve_config_changed
    assert delta.lines()[-1] == "serveConfigV2 changed: Serve applies it to the running cluster"


def test_upgrade_strategy_none_defers_the_change(config: LoadedConfig) -> None:
    deployed = manifest(config, fixture_record())

    def none(doc: dict[str, Any]) -> None:
        doc["spec"]["upgradeStrategy"] = {"type": "None"}

    delta = diff_manifests(deployed, "d.yaml", edited(manifest(config, fixture_record(), web=NEW_WEB), none))
    assert delta.outcome == "deferred" and not delta.upgrade


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: [", "deployed.yaml: not YAML"),
        ("kind: Service\n", "deployed.yaml: no RayService or RayCluster in it"),
        ("kind: RayService\nspec: {}\n", "deployed.yaml: the RayService has no headGroupSpec"),
    ],
)
def test_a_manifest_without_a_ray_resource_is_named(text: str, message: str, config: LoadedConfig) -> None:
    with pytest.raises(ManifestError) as raised:
        diff_manifests(text, "deployed.yaml", manifest(config, fixture_record()))
    assert str(raised.value).startswith(message)


# -- labels --------------------------------------------------------------------------------------------------


def test_labels_come_from_the_image_config_in_the_registry() -> None:
    registry = FakeRegistry("registry.example:5000")
    config = json.dumps({"config": {"Labels": {CODE_LABEL: "c1"}}}).encode()
    stored = registry.store("fixture/web", "v1", "sha256:" + "9" * 64, config=config)
    lookup = image_labels(None, registry.connect)
    assert lookup(ImageRef.parse(f"{REGISTRY}/web:v1@{stored.digest}")) == {CODE_LABEL: "c1"}
    assert lookup(ImageRef.parse(f"{REGISTRY}/web:v9")) is None


# -- the commands --------------------------------------------------------------------------------------------


@pytest.fixture
def deployed(config: LoadedConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """main's manifest as deployed; the project's publish record now has a new web image."""
    path = tmp_path / "rayservice.yaml"
    path.write_text(manifest(config, fixture_record()))
    PublishRecord({**fixture_record().images, "web": NEW_WEB}).save(publish_record_path(config))
    engine = FakeEngine()
    monkeypatch.setattr(render_cli, "engine_for", lambda state: engine)
    return path


def test_render_diff_prints_the_delta_and_writes_the_manifest_only_with_out(
    config: LoadedConfig, deployed: Path, run_main: Any
) -> None:
    result: MainResult = run_main("--config", str(config.path), "render", "--diff", str(deployed))
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"head: unchanged (sha256:{'a' * 64})",
        f"web: image changed: sha256:{'b' * 64} -> {NEW_WEB.digest}",
        f"vision: unchanged (sha256:{'c' * 64})",
        "RayService cluster upgrade: yes: the image of web changed: "
        "KubeRay starts a new RayCluster beside the running one and moves traffic to it",
    ]
    out = deployed.parent / "new.yaml"
    as_json = run_main(
        "--config", str(config.path), "render", "--diff", str(deployed), "--out", str(out), "--json"
    )
    payload = json.loads(as_json.stdout)
    assert payload["diff"]["upgrade"] is True and payload["manifest"] is None
    assert out.read_text() == manifest(config, fixture_record(), web=NEW_WEB)


def test_render_diff_of_a_missing_file_is_one_line(
    config: LoadedConfig, tmp_path: Path, run_main: Any
) -> None:
    result = run_main("--config", str(config.path), "render", "--diff", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {tmp_path / 'nope.yaml'}: cannot read the deployed manifest")
    assert "Traceback" not in result.stderr


def test_check_puts_the_upgrade_in_the_pr_comment(
    config: LoadedConfig, deployed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_main: Any
) -> None:
    monkeypatch.setattr(check_cli, "deployed_delta", render_cli.deployed_delta)
    current = tmp_path / "current.json"
    measurement({"web": measured_app()}).write(current)
    args = ["--config", str(config.path), "check", "--baseline", str(current), "--current", str(current)]
    result: MainResult = run_main(*args, "--deployed", str(deployed))
    assert result.exit_code == 0, result.stderr
    assert "**This merge upgrades the RayService: web (image changed), vision (unchanged).**" in result.stdout
    assert result.stdout.index("RayService upgrade") < result.stdout.index("| App | Metric")
    payload = json.loads(run_main(*args, "--deployed", str(deployed), "--json").stdout)
    assert payload["upgrade"]["summary"].startswith("this merge upgrades the RayService")
