"""Building app images without Docker: the staged context and its hash, the head image's hash, BuildKit output
parsing, secrets, and Builder against the fake engine (cached images, failed builds, tagging order)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from raybuild import platforms
from raybuild.cli import build as build_cli
from raybuild.config import LoadedConfig
from raybuild.errors import BuildError, StaleLockError, UsageError
from raybuild.image import bases, build, epoch
from raybuild.image.build import Builder
from raybuild.image.dockerfile import render_dockerfile, template_dir
from raybuild.image.plan import image_spec_for
from raybuild.image.prune import prune_plan, prune_script
from raybuild.images import with_found_deployments
from raybuild.lock import resolve as locking
from raybuild.records import BuiltImage, load_build_record
from raybuild.reference import ImageRef
from raybuild.registry import RegistryUnreachable, RegistryUnverifiable
from raybuild.state import HEAD_KEY, build_record_path
from raybuild.tags import head_ref, image_ref, multi_platform_ref
from tests.conftest import TmpProject, other_app
from tests.unit.fakes import FakeEngine, FakeRegistry, image_id

RAY_BODY = """\
aiohttp==3.14.5 \\
    --hash=sha256:aaaa \\
    --hash=sha256:bbbb
    # via ray
ray==2.60.0 \\
    --hash=sha256:1111
"""

OTHER_APP = "\n" + other_app('env = { MODEL = "small" }\n', "num_replicas = 2\n")

# What `docker buildx build --progress=plain` prints when a RUN step fails (BuildKit's plain printer:
# "#N ERROR: ..." on the vertex, then the " > NAME:" summary with the step's last lines).
PLAIN_FAILURE = """\
#8 [ray 1/2] RUN --mount=type=cache,target=/root/.cache/uv,id=raybuild-uv uv venv /opt/ray/venv
#8 CACHED

#9 [app 1/2] RUN --mount=type=cache,target=/root/.cache/uv,id=raybuild-uv uv pip install -r app.lock
#9 0.412 error: Failed to fetch: `https://pypi.org/simple/orjson/`
#9 ERROR: process "/bin/sh -c uv pip install -r app.lock" did not complete successfully: exit code: 2
------
 > [app 1/2] RUN --mount=type=cache,target=/root/.cache/uv,id=raybuild-uv uv pip install -r app.lock:
0.412 error: Failed to fetch: `https://pypi.org/simple/orjson/`
------
Dockerfile:30
--------------------
  30 | >>> RUN --mount=type=cache,target=/root/.cache/uv,id=raybuild-uv \\
--------------------
ERROR: failed to solve: process "/bin/sh -c uv pip install -r app.lock" did not complete successfully
"""
FAILED_STEP = (
    "[app 1/2] RUN --mount=type=cache,target=/root/.cache/uv,id=raybuild-uv uv pip install -r app.lock"
)


def app_body(orjson: str = "3.13.0") -> str:
    return RAY_BODY + f"orjson=={orjson} \\\n    --hash=sha256:dddd\n    # via -r demo.in\n"


def write_locks(config: LoadedConfig, body: str | None = None, ray_body: str = RAY_BODY) -> None:
    """Lockfiles whose headers match the project's inputs, as `raybuild lock` would write them."""
    ray = locking.ray_target(config)
    ray.path.parent.mkdir(parents=True, exist_ok=True)
    ray.path.write_text(locking.lockfile_text(ray, config, ray_body))
    for app in config.apps:  # after the Ray lock: each app's inputs hash covers it
        target = locking.app_target(config, app)
        target.path.write_text(locking.lockfile_text(target, config, body or app_body()))


@pytest.fixture
def project(tmp_project: TmpProject) -> LoadedConfig:
    config = tmp_project.load()
    write_locks(config)
    return config


def files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def stage(config: LoadedConfig, folder: Path, app_index: int = 0) -> str:
    folder.mkdir()
    return build.stage_context(config, config.apps[app_index], folder)


# -- the build context ------------------------------------------------------------------------------------


def test_context_holds_exactly_what_the_dockerfile_reads(
    project: LoadedConfig, tmp_project: TmpProject, tmp_path: Path
) -> None:
    app_dir = tmp_project.app_dir
    (app_dir / "pkg" / "__pycache__").mkdir(parents=True)
    (app_dir / "pkg" / "helper.py").write_text("VALUE = 1\n")
    (app_dir / "pkg" / "__pycache__" / "helper.cpython-311.pyc").write_bytes(b"\0")
    (app_dir / "stray.pyc").write_bytes(b"\0")
    (app_dir / ".venv" / "lib").mkdir(parents=True)
    (app_dir / ".venv" / "lib" / "site.py").write_text("")
    app = project.apps[0]
    context = tmp_path / "context"
    stage(project, context)

    assert files(context) == [
        ".dockerignore",
        "Dockerfile",
        "app.lock",
        "code/demo_app.py",
        "code/pkg/helper.py",
        "prune-app.json",
        "prune-ray.json",
        "prune.py",
        "ray.lock",
    ]
    assert (context / "Dockerfile").read_text() == render_dockerfile(image_spec_for(project, app))
    assert (context / "ray.lock").read_text() == project.ray_lockfile().read_text()
    # Only what Ray's lock lacks: the Ray layer already has aiohttp and ray.
    assert (context / "app.lock").read_text() == "orjson==3.13.0 \\\n    --hash=sha256:dddd\n"
    assert (context / "prune.py").read_text() == prune_script().read_text()
    assert (context / "prune-ray.json").read_text() == prune_plan().to_json()
    assert (context / "code" / "demo_app.py").read_text() == (app_dir / "demo_app.py").read_text()


def test_secrets_and_ignored_files_never_reach_the_context(
    project: LoadedConfig, tmp_project: TmpProject, tmp_path: Path
) -> None:
    app_dir = tmp_project.app_dir
    (app_dir / ".env").write_text("API_KEY=sk-live-0123456789\n")
    (app_dir / "node_modules" / "x").mkdir(parents=True)
    (app_dir / "node_modules" / "x" / "index.js").write_text("")
    (app_dir / ".dockerignore").write_text("*.md\n")
    (app_dir / "README.md").write_text("docs\n")
    first = stage(project, tmp_path / "one")
    shipped = files(tmp_path / "one" / "code")
    assert shipped == ["README.md", "demo_app.py"], ".dockerignore is not read, and not copied"
    assert not any(
        b"sk-live" in path.read_bytes() for path in (tmp_path / "one").rglob("*") if path.is_file()
    )
    # What is ignored does not count: a new secret never changes the tag either.
    (app_dir / ".env").write_text("API_KEY=rotated\n")
    assert stage(project, tmp_path / "two") == first
    (app_dir / ".raybuildignore").write_text("*.md\n")
    assert files(tmp_path / "two" / "code") == ["README.md", "demo_app.py"]
    assert stage(project, tmp_path / "three") != first
    assert files(tmp_path / "three" / "code") == ["demo_app.py"]


def test_an_apps_dockerignore_gets_a_warning_until_it_has_a_raybuildignore(
    project: LoadedConfig, tmp_project: TmpProject, tmp_path: Path
) -> None:
    (tmp_project.app_dir / ".dockerignore").write_text("*.md\n")
    said: list[str] = []
    (tmp_path / "one").mkdir()
    build.stage_context(project, project.apps[0], tmp_path / "one", said.append)
    assert said[0] == "demo: warning: apps/demo/.dockerignore is not read; put its rules in .raybuildignore"
    assert said[1] == "  demo: 1 file of code, 2 ignored"
    (tmp_project.app_dir / ".raybuildignore").write_text("*.md\n")
    said.clear()
    (tmp_path / "two").mkdir()
    build.stage_context(project, project.apps[0], tmp_path / "two", said.append)
    assert not any("warning" in line for line in said)


def test_content_hash_is_stable_for_the_same_inputs(
    project: LoadedConfig, tmp_project: TmpProject, tmp_path: Path
) -> None:
    first = stage(project, tmp_path / "one")
    (tmp_project.app_dir / "__pycache__").mkdir()
    (tmp_project.app_dir / "__pycache__" / "demo_app.cpython-311.pyc").write_bytes(b"bytecode")
    assert stage(project, tmp_path / "two") == first
    assert len(first) == 12 and int(first, 16) >= 0


def test_content_hash_changes_with_the_code(
    project: LoadedConfig, tmp_project: TmpProject, tmp_path: Path
) -> None:
    first = stage(project, tmp_path / "one")
    (tmp_project.app_dir / "demo_app.py").write_text("app = None\n")
    second = stage(project, tmp_path / "two")
    (tmp_project.app_dir / "extra.py").write_text("")
    third = stage(project, tmp_path / "three")
    assert len({first, second, third}) == 3


def test_content_hash_changes_with_the_app_lock_and_the_ray_lock(
    project: LoadedConfig, tmp_path: Path
) -> None:
    first = stage(project, tmp_path / "one")
    write_locks(project, body=app_body(orjson="3.14.0"))
    second = stage(project, tmp_path / "two")
    write_locks(project, body=app_body(orjson="3.14.0"), ray_body=RAY_BODY.replace("3.14.5", "3.14.6"))
    third = stage(project, tmp_path / "three")
    assert len({first, second, third}) == 3


def test_a_missing_app_lockfile_says_to_run_raybuild_lock(project: LoadedConfig, tmp_path: Path) -> None:
    project.lockfile(project.apps[0]).unlink()
    with pytest.raises(BuildError) as raised:
        stage(project, tmp_path / "context")
    assert str(raised.value) == "app 'demo': no lockfile at lockfiles/demo.txt"
    assert raised.value.hint == "run `raybuild lock demo`"


def test_a_missing_ray_lockfile_is_named(project: LoadedConfig, tmp_path: Path) -> None:
    project.ray_lockfile().unlink()
    with pytest.raises(BuildError) as raised:
        stage(project, tmp_path / "context")
    assert str(raised.value) == "app 'demo': no lockfile at lockfiles/ray.txt"


def test_a_stale_lockfile_is_refused(project: LoadedConfig, tmp_project: TmpProject, tmp_path: Path) -> None:
    tmp_project.requirements.write_text("orjson\nnumpy\n")
    with pytest.raises(StaleLockError) as raised:
        stage(project, tmp_path / "context")
    assert str(raised.value) == (
        "lockfiles/demo.txt: out of date: its requirements, the Ray lock or [project] changed since it was "
        "locked"
    )
    assert raised.value.hint == "run `raybuild lock demo` and commit the result"
    assert not (tmp_path / "context" / "Dockerfile").exists()


@pytest.mark.parametrize("which", ["ray.txt", "demo.txt"])
def test_a_hand_edited_lockfile_is_refused_before_anything_is_staged(
    project: LoadedConfig, tmp_path: Path, which: str
) -> None:
    lockfile = project.lock_dir() / which
    lockfile.write_text(lockfile.read_text().replace("aiohttp==3.14.5", "aiohttp==0.0.1"))
    with pytest.raises(StaleLockError) as raised:
        stage(project, tmp_path / "context")
    assert str(raised.value).startswith(f"lockfiles/{which}: edited by hand or cut short")
    fix = "raybuild lock" if which == "ray.txt" else "raybuild lock demo"
    assert raised.value.hint == f"run `{fix}` and commit the result"
    assert not (tmp_path / "context" / "Dockerfile").exists()


# -- the head image's hash ---------------------------------------------------------------------------------


def copy_templates(tmp_project: TmpProject) -> Path:
    """The project's own images/ folder, as `raybuild init` leaves it for users to edit."""
    bundled = template_dir(None).dirs[-1]
    shutil.copytree(
        bundled, tmp_project.root / "images", ignore=shutil.ignore_patterns("deploy", "init", "probe")
    )
    assert template_dir(tmp_project.root).dirs[0] == tmp_project.root / "images"
    return tmp_project.root / "images"


def test_head_hash_is_the_same_for_every_app_of_a_project(tmp_project: TmpProject, tmp_path: Path) -> None:
    tmp_project.append_config(OTHER_APP)
    tmp_project.add_app("other", "numpy\n")
    config = tmp_project.load()
    write_locks(config)
    assert stage(config, tmp_path / "demo", 0) != stage(config, tmp_path / "other", 1)
    assert build.head_hash(config, config.apps[0]) == build.head_hash(config, config.apps[1])


def test_head_hash_does_not_depend_on_the_apps_code(
    project: LoadedConfig, tmp_project: TmpProject, tmp_path: Path
) -> None:
    app = project.apps[0]
    head, content = build.head_hash(project, app), stage(project, tmp_path / "one")
    (tmp_project.app_dir / "demo_app.py").write_text("app = None\n")
    assert stage(project, tmp_path / "two") != content
    assert build.head_hash(project, app) == head


def test_head_hash_is_the_same_for_the_same_inputs(project: LoadedConfig) -> None:
    first = build.head_hash(project, project.apps[0])
    assert build.head_hash(project, project.apps[0]) == first
    assert len(first) == 12 and int(first, 16) >= 0


def test_editing_a_template_comment_changes_the_head_hash_and_undoing_it_restores_it(
    project: LoadedConfig, tmp_project: TmpProject
) -> None:
    bundled = build.head_hash(project, project.apps[0])
    images = copy_templates(tmp_project)
    assert build.head_hash(project, project.apps[0]) == bundled  # the same text, wherever it lives
    template = images / "common" / "app.Dockerfile.j2"
    original = template.read_text()
    for edited in (
        original.replace("# ---- Stage 5: the app image", "# ---- Stage 5: the app image (edited)"),
        original.replace("# ---- Stage 1", "# ---- stage 1"),
    ):
        assert edited != original
        template.write_text(edited)
        changed = build.head_hash(project, project.apps[0])
        assert changed != bundled
        assert build.head_hash(project, project.apps[0]) == changed
    template.write_text(original)
    assert build.head_hash(project, project.apps[0]) == bundled


def test_head_hash_changes_with_the_ray_lock_rays_prune_rules_and_the_index(
    tmp_project: TmpProject,
) -> None:
    config = tmp_project.load()
    write_locks(config)
    first = build.head_hash(config, config.apps[0])
    write_locks(config, ray_body=RAY_BODY.replace("3.14.5", "3.14.6"))
    second = build.head_hash(config, config.apps[0])
    # Rules kept for an app apply to the Ray venv too (Ray Data lives in it): a different head.
    tmp_project.append_config('[apps.prune]\nkeep = ["ray-ml-libraries"]\n')
    third = build.head_hash(tmp_project.load(), tmp_project.load().apps[0])
    text = tmp_project.config_path.read_text()
    tmp_project.write_config(
        text.replace('python = "3.11"', 'python = "3.11"\nindex_url = "https://i.example/simple"')
    )
    fourth = build.head_hash(tmp_project.load(), tmp_project.load().apps[0])
    assert len({first, second, third, fourth}) == 4


# -- BuildKit output --------------------------------------------------------------------------------------


def test_failing_step_from_plain_progress_output() -> None:
    assert build.failing_step(PLAIN_FAILURE) == FAILED_STEP


def test_failing_step_from_plain_output_without_the_summary() -> None:
    output = PLAIN_FAILURE.split("------")[0]
    assert build.failing_step(output) == FAILED_STEP


def test_failing_step_from_tty_output_is_truncated() -> None:
    command = "RUN uv pip install " + "x" * 200
    step = build.failing_step(f" => ERROR [app 1/2] {command}   3.2s\n")
    assert step == f"[app 1/2] {command[:120]}"


def test_failing_step_is_none_when_no_step_failed() -> None:
    assert build.failing_step("ERROR: failed to solve: failed to read dockerfile: no such file") is None
    assert build.failing_step("#8 [ray 1/2] RUN true\n#8 DONE 0.1s\n") is None


def test_progress_shows_each_step_once_and_the_prune_summary() -> None:
    shown: list[str] = []
    on_line = build._progress_filter(shown.append)
    for line in [
        "#9 [app 1/2] RUN uv pip install",
        "#9 0.4 Resolved 3 packages",
        "#9 [app 1/2] RUN uv pip install",
        "#10 1.204 prune: ray-java-jars: 120.0 MB",
    ]:
        on_line(line)
    assert shown == ["  [app 1/2] RUN uv pip install", "  prune: ray-java-jars: 120.0 MB"]


# -- CA bundle and secrets --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("present", "expected"),
    [
        ({"SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "PIP_CERT"}, "SSL_CERT_FILE"),
        ({"REQUESTS_CA_BUNDLE", "PIP_CERT"}, "REQUESTS_CA_BUNDLE"),
        ({"PIP_CERT"}, "PIP_CERT"),
        (set(), None),
    ],
)
def test_default_ca_bundle_takes_the_first_variable_that_names_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, present: set[str], expected: str | None
) -> None:
    for name in build.CA_ENV_VARS:
        path = tmp_path / f"{name}.pem"
        if name in present:
            path.write_text("cert")
        monkeypatch.setenv(name, str(path))  # the absent ones name files that do not exist
    assert build.default_ca_bundle() == (tmp_path / f"{expected}.pem" if expected else None)


def test_default_ca_bundle_skips_directories_and_empty_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "")
    monkeypatch.delenv("PIP_CERT", raising=False)
    assert build.default_ca_bundle() is None


def test_a_missing_ca_bundle_is_a_usage_error(project: LoadedConfig, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"^--ca-bundle .*ca\.pem: no such file$") as raised:
        Builder(project, FakeEngine(), ca_bundle=tmp_path / "ca.pem").secrets()
    assert raised.value.exit_code == 2


def test_a_missing_netrc_is_a_usage_error(project: LoadedConfig, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"^--netrc .*netrc: no such file$") as raised:
        Builder(project, FakeEngine(), netrc=tmp_path / "netrc").secrets()
    assert raised.value.exit_code == 2


def test_secrets_are_the_files_given(project: LoadedConfig, tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("cert")
    (tmp_path / "netrc").write_text("machine x")
    builder = Builder(project, FakeEngine(), ca_bundle=tmp_path / "ca.pem", netrc=tmp_path / "netrc")
    assert builder.secrets() == {"ca_bundle": tmp_path / "ca.pem", "netrc": tmp_path / "netrc"}
    assert Builder(project, FakeEngine()).secrets() == {}


# -- Builder with the fake engine -------------------------------------------------------------------------


def refs(config: LoadedConfig, tmp_path: Path) -> tuple[str, str]:
    """The app ref and head ref that Builder computes, from a context staged the same way."""
    app = config.apps[0]
    content = stage(config, tmp_path / "refs")
    return image_ref(config, app, content), head_ref(config, build.head_hash(config, app))


def base_images(config: LoadedConfig) -> list[str]:
    """The images `ensure_bases` makes for a CPU project: present, so that only head and app are built."""
    cpu = config.config.base.cpu
    return [
        bases.uv_image(),
        bases.rootfs(cpu, "builder").ref,
        bases.builder_ref(config),
        bases.rootfs(cpu, "runtime").ref,
        bases.base_ref(config, "cpu"),
    ]


def test_existing_images_are_cached_and_nothing_is_built(project: LoadedConfig, tmp_path: Path) -> None:
    ref, head = refs(project, tmp_path)
    engine = FakeEngine(images=[ref, head])
    image, head_image = Builder(project, engine).build_app(project.apps[0])
    assert image == BuiltImage("demo", ref, engine.images[ref], "cpu", True, ({"name": "Demo"},))
    assert head_image == BuiltImage(HEAD_KEY, head, engine.images[head], "cpu", cached=True)
    assert engine.builds() == []
    assert engine.calls("tag") == []
    # No record of its deployments yet, so the cached image was imported once to find them.
    assert len(engine.calls("run_python")) == 1


def test_a_cached_image_with_recorded_deployments_is_not_imported_again(
    project: LoadedConfig, tmp_path: Path
) -> None:
    ref, head = refs(project, tmp_path)
    engine = FakeEngine(images=[ref, head])
    Builder(project, engine).build((project.apps[0],))
    Builder(project, engine).build((project.apps[0],))
    assert len(engine.calls("run_python")) == 1


def _report(**fields: object) -> str:
    return "@@raybuild-serve-app " + json.dumps(fields)


def test_a_broken_app_fails_the_build_before_its_tag_exists(project: LoadedConfig, tmp_path: Path) -> None:
    ref, _ = refs(project, tmp_path)
    engine = FakeEngine(images=base_images(project))
    engine.script(
        "run_python",
        output=_report(
            ok=False,
            type="NameError",
            message="name 'serv' is not defined",
            file="/home/ray/app/demo_app.py",
            line=4,
        ),
    )
    with pytest.raises(BuildError) as raised:
        Builder(project, engine).build((project.apps[0],))
    assert raised.value.message == (
        "app 'demo': demo_app:app does not import as a Serve app: NameError: name 'serv' is not defined "
        "(demo_app.py, line 4)"
    )
    assert ref not in engine.images
    assert not build_record_path(project).exists()


def test_a_listed_deployment_the_code_does_not_define_names_both(
    tmp_project: TmpProject, tmp_path: Path
) -> None:
    tmp_project.write_config(tmp_project.config_path.read_text().replace('name = "Demo"', 'name = "Demoo"'))
    config = tmp_project.load()
    write_locks(config)
    with pytest.raises(BuildError, match="lists deployment\\(s\\) 'Demoo', but demo_app:app defines 'Demo'"):
        Builder(config, FakeEngine(images=base_images(config))).build(config.apps)


def test_deployments_found_in_the_code_fill_an_app_that_lists_none(tmp_project: TmpProject) -> None:
    text = tmp_project.config_path.read_text()
    tmp_project.write_config(text[: text.index("[[apps.deployments]]")])
    config = tmp_project.load()
    assert config.apps[0].deployments == []
    write_locks(config)
    engine = FakeEngine(images=base_images(config))
    engine.script(
        "run_python",
        output=_report(
            ok=True,
            deployments=[
                {
                    "name": "Demo",
                    "num_replicas": 2,
                    "ray_actor_options": {"num_cpus": 0.25, "resources": {"x": 1}},
                }
            ],
        ),
    )
    progress: list[str] = []
    Builder(config, engine, progress=progress.append).build(config.apps)
    (app,) = with_found_deployments(config).apps
    assert [(d.name, d.num_replicas, d.ray_actor_options.num_cpus) for d in app.deployments] == [
        ("Demo", 2, 0.25)
    ]
    assert any("ray_actor_options.resources set in the code is not rendered" in line for line in progress)


def test_a_fresh_build_builds_head_then_app_and_tags_only_after_success(
    project: LoadedConfig, tmp_path: Path
) -> None:
    ref, head = refs(project, tmp_path)
    engine = FakeEngine(images=base_images(project))
    (tmp_path / "ca.pem").write_text("cert")
    progress: list[str] = []
    image, head_image = Builder(
        project, engine, ca_bundle=tmp_path / "ca.pem", progress=progress.append
    ).build_app(project.apps[0])

    head_build, app_build = engine.builds()
    assert head_build["target"] == "head"
    assert app_build["target"] is None
    for call in (head_build, app_build):
        assert call["secrets"]["ca_bundle"] == tmp_path / "ca.pem"
    assert engine.created == [head, ref, "127.0.0.1:5000/demo/demo:latest"]
    assert head_image is not None and not head_image.cached and engine.images[head] == head_image.image_id
    assert not image.cached and engine.images[ref] == image.image_id != head_image.image_id
    assert f"building demo -> {ref}" in progress


def test_a_failed_app_build_names_the_step_and_tags_nothing(project: LoadedConfig, tmp_path: Path) -> None:
    ref, head = refs(project, tmp_path)
    engine = FakeEngine(images=[head, *base_images(project)])
    engine.script("build", returncode=1, output=PLAIN_FAILURE)
    with pytest.raises(BuildError) as raised:
        Builder(project, engine).build_app(project.apps[0])
    assert str(raised.value) == f"build of app 'demo' failed at step {FAILED_STEP}"
    assert len(engine.builds()) == 1
    assert engine.calls("tag") == []
    assert ref not in engine.images


def test_a_failed_head_build_stops_before_the_app(project: LoadedConfig, tmp_path: Path) -> None:
    engine = FakeEngine(images=base_images(project))
    engine.script("build", returncode=1, output="#3 ERROR: failed to resolve source metadata")
    with pytest.raises(BuildError, match=r"^build of the head image failed \(exit 1\)$"):
        Builder(project, engine).build_app(project.apps[0])
    assert len(engine.builds()) == 1
    assert engine.calls("tag") == []


def test_build_makes_bases_then_tags_the_head_and_records_every_image(
    project: LoadedConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ensured: list[tuple[str, ...]] = []
    monkeypatch.setattr(
        bases, "ensure_bases", lambda config, engine, devices, progress, platform: ensured.append(devices)
    )
    ref, head = refs(project, tmp_path)
    engine = FakeEngine(images=[head])
    built = Builder(project, engine).build(project.apps)
    # The head exists: the app's build needs the builder image only, not the runtime base.
    assert ensured == [()]
    assert [(b.app, str(b.ref), b.cached) for b in built] == [(HEAD_KEY, head, True), ("demo", ref, False)]
    assert engine.images["127.0.0.1:5000/demo/ray-head:latest"] == engine.images[head]
    assert {k: str(v.ref) for k, v in load_build_record(project).items()} == {HEAD_KEY: head, "demo": ref}


# -- the registry first ------------------------------------------------------------------------------------

DIGEST = "sha256:" + "d" * 64


def registry_with(*refs: str) -> FakeRegistry:
    """A registry holding each ref, as the image FakeEngine's pull of it yields."""
    registry = FakeRegistry()
    for ref in refs:
        repository, tag = ImageRef.parse(ref).path, ImageRef.parse(ref).tag_or_latest
        registry.store(repository, tag, image_id(f"registry:{ref}"))
    return registry


def remote_of(*refs: str) -> dict[str, tuple[str, str]]:
    return {ref: (image_id(f"registry:{ref}"), DIGEST) for ref in refs}


def test_a_fresh_engine_pulls_what_the_registry_holds_and_builds_nothing(
    project: LoadedConfig, tmp_path: Path
) -> None:
    ref, head = refs(project, tmp_path)
    engine = FakeEngine(remote=remote_of(ref, head))
    registry = registry_with(ref, head)
    built = Builder(project, engine, connect=registry.connect).build(project.apps)
    assert [(b.app, str(b.ref), b.pulled, b.image_id) for b in built] == [
        (HEAD_KEY, head, True, image_id(f"registry:{head}")),
        ("demo", ref, True, image_id(f"registry:{ref}")),
    ]
    assert engine.builds() == []
    # Nothing was built, so no base image (and no mmdebstrap) was needed either.
    assert engine.calls("import_tarball") == [] and engine.runner.calls("mmdebstrap") == []
    assert engine.images["127.0.0.1:5000/demo/demo:latest"] == image_id(f"registry:{ref}")
    assert load_build_record(project)["demo"].image_id == image_id(f"registry:{ref}")


def test_a_new_app_builds_on_the_head_pulled_from_the_registry_pinned_by_digest(
    project: LoadedConfig, tmp_path: Path
) -> None:
    ref, head = refs(project, tmp_path)
    engine = FakeEngine(images=base_images(project), remote=remote_of(head))
    image, head_image = Builder(project, engine, connect=registry_with(head).connect).build_app(
        project.apps[0]
    )
    assert head_image is not None and head_image.pulled
    (app_build,) = engine.builds()
    assert app_build["build_args"]["HEAD_IMAGE"] == f"{head}@{DIGEST}"
    assert not image.pulled and not image.cached and engine.images[ref] == image.image_id
    # The epochs are build arguments; outside git both are the fallback.
    assert app_build["build_args"]["SOURCE_DATE_EPOCH"] == str(epoch.FALLBACK_EPOCH)
    assert app_build["build_args"]["RAY_SOURCE_DATE_EPOCH"] == str(epoch.FALLBACK_EPOCH)


def test_a_head_built_here_and_never_pushed_is_named_by_its_tag(
    project: LoadedConfig, tmp_path: Path
) -> None:
    _, head = refs(project, tmp_path)
    engine = FakeEngine(images=[head, *base_images(project)])
    Builder(project, engine, connect=FakeRegistry().connect).build_app(project.apps[0])
    (app_build,) = engine.builds()
    assert app_build["build_args"]["HEAD_IMAGE"] == head


def test_the_registrys_image_replaces_a_local_one_of_the_same_tag(
    project: LoadedConfig, tmp_path: Path
) -> None:
    ref, head = refs(project, tmp_path)
    engine = FakeEngine(images=[ref, head], remote=remote_of(ref))
    registry = registry_with(ref)
    registry.store(
        ImageRef.parse(head).path, ImageRef.parse(head).tag_or_latest, engine.images[head]
    )  # the head matches: kept
    progress: list[str] = []
    image, head_image = Builder(
        project, engine, connect=registry.connect, progress=progress.append
    ).build_app(project.apps[0])
    assert image.pulled and image.image_id == engine.images[ref] == image_id(f"registry:{ref}")
    assert head_image is not None and not head_image.pulled
    assert [c.args for c in engine.calls("pull")] == [(ref,)]
    assert any("using the registry's (a content-addressed tag names one image)" in line for line in progress)


def test_rebuild_builds_here_even_when_the_registry_has_the_tags(
    project: LoadedConfig, tmp_path: Path
) -> None:
    ref, head = refs(project, tmp_path)
    engine = FakeEngine(images=base_images(project), remote=remote_of(ref, head))
    registry = registry_with(ref, head)
    Builder(project, engine, connect=registry.connect, rebuild=True).build_app(project.apps[0])
    assert len(engine.builds()) == 2 and engine.calls("pull") == []
    assert registry.reads == []


def test_a_registry_that_is_down_is_asked_once_and_everything_is_built_here(
    tmp_project: TmpProject, tmp_path: Path
) -> None:
    tmp_project.append_config(OTHER_APP)
    tmp_project.add_app("other", "numpy\n")
    config = tmp_project.load()
    write_locks(config)
    registry = FakeRegistry(failures=[RegistryUnreachable("connection refused", down=True)])
    progress: list[str] = []
    engine = FakeEngine(images=base_images(config))
    Builder(config, engine, connect=registry.connect, progress=progress.append).build(config.apps)
    assert len(engine.builds()) == 3  # head, demo, other
    assert len(registry.reads) == 1 and engine.calls("pull") == []
    assert [line for line in progress if "not reachable" in line] == [
        "registry 127.0.0.1:5000 is not reachable (connection refused): building what is not here"
    ]


def test_a_registry_that_wants_a_login_is_tried_with_docker_pull(
    project: LoadedConfig, tmp_path: Path
) -> None:
    """docker pull has docker login's credentials, which raybuild never reads: a miss is "not found"."""
    ref, head = refs(project, tmp_path)
    engine = FakeEngine(images=base_images(project), remote=remote_of(head))
    registry = FakeRegistry(failures=[RegistryUnverifiable("HTTP 401 Unauthorized")] * 2)
    image, head_image = Builder(project, engine, connect=registry.connect).build_app(project.apps[0])
    assert head_image is not None and head_image.pulled
    assert [c.args for c in engine.calls("pull")] == [(head,), (ref,)]
    assert not image.pulled and len(engine.builds()) == 1


def test_stage_context_gives_code_the_modes_git_knows(
    project: LoadedConfig, tmp_project: TmpProject, tmp_path: Path
) -> None:
    script = tmp_project.app_dir / "run.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o775)
    (tmp_project.app_dir / "demo_app.py").chmod(0o664)
    (tmp_project.app_dir / "pkg").mkdir(mode=0o775)
    (tmp_project.app_dir / "pkg" / "mod.py").write_text("")
    stage(project, tmp_path / "context")
    code = tmp_path / "context" / "code"
    modes = {p.relative_to(code).as_posix(): p.stat().st_mode & 0o777 for p in code.rglob("*")}
    assert modes == {"run.sh": 0o755, "demo_app.py": 0o644, "pkg": 0o755, "pkg/mod.py": 0o644}


def test_build_cli_says_what_it_pulled_and_rebuild_builds_instead(
    project: LoadedConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_main: Any
) -> None:
    ref, head = refs(project, tmp_path)
    engine = FakeEngine(images=base_images(project), remote=remote_of(ref, head))
    monkeypatch.setattr(build_cli, "engine_for", lambda state: engine)
    registry = registry_with(ref, head)
    monkeypatch.setattr(build, "HttpRegistry", registry.connect)
    pulled = run_main("--config", str(project.path), "build", "--json")
    assert pulled.exit_code == 0, pulled.stderr
    assert [(row["app"], row["pulled"]) for row in json.loads(pulled.stdout)] == [
        (HEAD_KEY, True),
        ("demo", True),
    ]
    table = run_main("--config", str(project.path), "build")
    assert [line.split()[1] for line in table.stdout.splitlines()[1:]] == ["cached", "cached"]
    rebuilt = run_main("--config", str(project.path), "build", "--rebuild")
    assert [line.split()[1] for line in rebuilt.stdout.splitlines()[1:]] == ["built", "built"]
    assert len(engine.builds()) == 2


# -- several platforms -------------------------------------------------------------------------------------


@pytest.fixture
def both(tmp_project: TmpProject) -> LoadedConfig:
    tmp_project.write_config(
        tmp_project.config_path.read_text().replace(
            "[project]\n", '[project]\nplatforms = ["linux/amd64", "linux/arm64"]\n'
        )
    )
    config = tmp_project.load()
    for platform in ("linux/amd64", "linux/arm64"):
        ray = locking.ray_target(config, platform)
        ray.path.parent.mkdir(parents=True, exist_ok=True)
        ray.path.write_text(locking.lockfile_text(ray, config, RAY_BODY))
        target = locking.app_target(config, config.apps[0], platform)
        target.path.write_text(locking.lockfile_text(target, config, app_body()))
    return config


def test_each_platform_is_built_for_itself_and_recorded_under_one_tag(
    both: LoadedConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(platforms, "host", lambda: platforms.get("linux/amd64"))
    ensured: list[str] = []
    monkeypatch.setattr(
        bases, "ensure_bases", lambda config, engine, devices, progress, platform: ensured.append(platform)
    )
    engine = FakeEngine()
    built = Builder(both, engine).build(both.apps)
    head, demo = built
    (app,) = both.apps
    (tmp_path / "context").mkdir()
    amd64 = image_ref(both, app, build.stage_context(both, app, tmp_path / "context"))
    assert str(dict(demo.platform_refs)["linux/amd64"]) == amd64  # the tag a single-platform project gets
    arm64 = str(dict(demo.platform_refs)["linux/arm64"])
    assert arm64.endswith("-arm64") and str(dict(head.platform_refs)["linux/arm64"]).endswith("-arm64")
    assert str(demo.ref) not in (amd64, arm64) and str(demo.ref) == multi_platform_ref(
        both, "demo", dict(demo.platform_refs)
    )
    # Locally, the one tag is this machine's platform's image.
    assert engine.images[str(demo.ref)] == engine.images[amd64]
    platforms_built = [b["platform"] or "native" for b in engine.builds()]
    assert platforms_built == ["native", "native", "linux/arm64", "linux/arm64"]  # head, app, each platform
    assert ensured == ["linux/amd64", "linux/arm64"]
    # The app was imported once, in the image this machine runs natively.
    assert len(engine.calls("run_python")) == 1
    record = load_build_record(both)
    assert record["demo"].platforms == ("linux/amd64", "linux/arm64")
    assert record[HEAD_KEY].platform_ref("linux/arm64") == dict(head.platform_refs)["linux/arm64"]


def test_an_app_built_for_one_other_platform_is_tagged_for_it_alone(
    both: LoadedConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bases, "ensure_bases", lambda config, engine, devices, progress, platform: None)
    only_arm64 = both.apps[0].model_copy(update={"platforms": ["linux/arm64"]})
    config = LoadedConfig(both.config.model_copy(update={"apps": [only_arm64]}), both.root, both.path)
    engine = FakeEngine()
    _, demo = Builder(config, engine).build(config.apps)
    assert str(demo.ref).endswith("-arm64")  # no index: one platform's image is the app's image
    assert demo.platform_refs == (("linux/arm64", demo.ref),)
    assert all(b["platform"] is not None for b in engine.builds())
