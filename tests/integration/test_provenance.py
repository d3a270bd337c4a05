"""Provenance labels on real builds in a git repository: a commit that touches no input rebuilds nothing
and keeps the labels; a code change makes a new image that names its commit."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from raybuild.config import load_config
from raybuild.engine import Engine
from raybuild.image.build import Builder
from tests.integration.docker_cli import docker
from tests.unit.image.test_provenance import commit, git

pytestmark = pytest.mark.docker


def labels(engine: Engine, ref: str) -> dict[str, str]:
    found: dict[str, str] = engine.inspect(ref)["Config"].get("Labels") or {}
    return found


@pytest.fixture
def project(engine: Engine, project_copy: Path) -> Iterator[Path]:
    """The project copy under a namespace of its own: this test moves its :latest tags."""
    namespace = f"127.0.0.1:5000/test-provenance-{uuid.uuid4().hex[:12]}"
    config = project_copy / "raybuild.toml"
    config.write_text(
        config.read_text().replace('registry = "127.0.0.1:5000/raybuild-test"', f'registry = "{namespace}"')
    )
    yield project_copy
    listed = docker(engine, "images", "--format", "{{.Repository}}:{{.Tag}}", check=False).output
    for ref in listed.split():
        if ref.startswith(namespace + "/"):
            engine.remove_image(ref)


def test_labels_name_the_last_commit_that_changed_the_inputs(engine: Engine, project: Path) -> None:
    ca = Path("/etc/ssl/certs/ca-certificates.crt")
    project_copy = project
    git(project_copy, "init", "-q")
    commit(project_copy, "the project", when=1_764_000_000)
    code = project_copy / "apps" / "hello" / "hello_app.py"
    # A change of its own, so that this test builds an image no other test has (the code layer only).
    code.write_text(code.read_text() + f"\n# provenance test {project_copy.name}\n")
    changed = commit(project_copy, "hello: a code change", when=1_764_000_100)

    def build() -> tuple[str, str, bool]:
        config = load_config(project_copy / "raybuild.toml")
        image = Builder(config, engine, ca_bundle=ca if ca.is_file() else None).build(
            config.select(("hello",))
        )
        (hello,) = [i for i in image if i.app == "hello"]
        return str(hello.ref), hello.image_id, hello.cached

    ref, image_id, _ = build()
    first = labels(engine, ref)
    assert first["org.opencontainers.image.revision"] == changed
    assert first["org.opencontainers.image.created"] == "2025-11-24T16:01:40Z"
    assert first["org.opencontainers.image.version"] == ref.rsplit(":", 1)[1]
    assert first["io.raybuild.app"] == "hello"  # the Dockerfile's own labels are still there

    (project_copy / "README.md").write_text("docs only\n")
    commit(project_copy, "docs", when=1_764_000_200)
    assert build() == (ref, image_id, True)  # same tag, same image: nothing rebuilt
    assert labels(engine, ref) == first

    code.write_text(code.read_text() + "# and another\n")
    again = commit(project_copy, "hello: another code change", when=1_764_000_300)
    new_ref, new_id, cached = build()
    assert (new_ref != ref, new_id != image_id, cached) == (True, True, False)
    assert labels(engine, new_ref)["org.opencontainers.image.revision"] == again
