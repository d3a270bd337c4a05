"""The image archive that carries another platform's rootfs into `docker load` with its architecture."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

from raybuild import platforms
from raybuild.image.archive import write_archive


def _rootfs(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "os-release").write_text("ID=debian\n")
    out = tmp_path / "rootfs.tar"
    with tarfile.open(out, "w") as tar:
        tar.add(tree, arcname=".")
    return out


def test_the_archive_is_one_layer_image_of_the_platforms_architecture(tmp_path: Path) -> None:
    rootfs = _rootfs(tmp_path)
    out = tmp_path / "image.tar"
    labels = {"b": "2", "a": "1"}
    image_id = write_archive(
        rootfs, out, "raybuild/rootfs-runtime:x-arm64", platforms.get("linux/arm64"), labels
    )
    layer = hashlib.sha256(rootfs.read_bytes()).hexdigest()
    with tarfile.open(out) as tar:
        (manifest,) = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        config_bytes = tar.extractfile(manifest["Config"]).read()  # type: ignore[union-attr]
        stored_layer = tar.extractfile(manifest["Layers"][0]).read()  # type: ignore[union-attr]
    assert manifest["RepoTags"] == ["raybuild/rootfs-runtime:x-arm64"]
    assert stored_layer == rootfs.read_bytes()
    config = json.loads(config_bytes)
    assert (config["architecture"], config["os"]) == ("arm64", "linux")
    assert config["rootfs"]["diff_ids"] == [f"sha256:{layer}"]
    assert config["config"]["Labels"] == {"a": "1", "b": "2"}
    # docker load names the image by its config's digest.
    assert image_id == "sha256:" + hashlib.sha256(config_bytes).hexdigest()
    assert manifest["Config"] == image_id.removeprefix("sha256:") + ".json"


def test_the_same_rootfs_gives_the_same_image_id(tmp_path: Path) -> None:
    rootfs = _rootfs(tmp_path)
    arm64 = platforms.get("linux/arm64")
    first = write_archive(rootfs, tmp_path / "1.tar", "r:1", arm64, {"k": "v"})
    assert write_archive(rootfs, tmp_path / "2.tar", "r:2", arm64, {"k": "v"}) == first
    assert write_archive(rootfs, tmp_path / "3.tar", "r:1", platforms.get("linux/amd64"), {"k": "v"}) != first
