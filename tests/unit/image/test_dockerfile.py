"""Dockerfile generation: whole-file goldens for every bundled app and base image, plus the pure helpers.

Goldens are rendered from the bundled project (its committed lockfiles, raybuild's own templates), so they
do not depend on the host. Run `pytest --update-goldens` after an intended template change and review the
diff.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import pytest

from raybuild.config import BaseImage, LoadedConfig, load_config
from raybuild.errors import ConfigError
from raybuild.image import bases
from raybuild.image.bases import BaseSpec
from raybuild.image.dockerfile import dockerfile_string, render_base, render_dockerfile, template_dir
from raybuild.image.plan import image_spec_for, plan_builds
from raybuild.image.prune import DEFAULT_KEEP, DEFAULT_PRUNE_RULES, prune_plan
from raybuild.image.spec import ImageSpec, generate_all, nvidia_library_dirs
from raybuild.templating import BUNDLED_TEMPLATES, Templates
from tests.conftest import GOLDEN_DIR, REPO_ROOT, TmpProject

GOLDEN = GOLDEN_DIR / "dockerfiles"
BUNDLED_APPS = ("hello", "sklearn", "cuda")
# The builder image's name hashes the uv version raybuild runs with; fix it so goldens ignore the host.
UV_VERSION = "0.13.9"


def bundled_config() -> LoadedConfig:
    return load_config(REPO_ROOT / "raybuild.toml")


def _with_changes(config: LoadedConfig, **changes: object) -> LoadedConfig:
    return LoadedConfig(config.config.model_copy(update=changes), config.root, config.path)


def generated_dockerfiles() -> dict[str, str]:
    """Every Dockerfile raybuild generates for the bundled project, by golden file name."""
    config = bundled_config()
    out: dict[str, str] = {}
    with mock.patch.object(bases, "uv_version", return_value=UV_VERSION):
        templates = template_dir(config.root)
        for app in config.apps:
            out[f"{app.name}.Dockerfile"] = render_dockerfile(image_spec_for(config, app), templates)

        # An index URL and app environment variables (with characters that need quoting).
        project = config.project.model_copy(update={"index_url": "https://pypi.example.internal/simple"})
        hello = next(app for app in config.apps if app.name == "hello")
        hello = hello.model_copy(
            update={"env": {"GREETING_STYLE": "plain", "MOTD": 'say "hi" & $HOME', "WIN": "C:\\tmp"}}
        )
        variant = _with_changes(config, project=project, apps=[hello])
        out["hello-index-url-env.Dockerfile"] = render_dockerfile(image_spec_for(variant, hello), templates)

        out["base-cpu.Dockerfile"] = render_base(bases.base_spec(config, "cpu"), templates)
        out["base-gpu.Dockerfile"] = render_base(bases.base_spec(config, "gpu"), templates)
        out["builder.Dockerfile"] = render_base(bases.builder_spec(config), templates)

        registry = BaseImage(source="image", image="debian:bookworm-slim")
        from_image = _with_changes(config, base=config.config.base.model_copy(update={"cpu": registry}))
        out["base-cpu-from-image.Dockerfile"] = render_base(bases.base_spec(from_image, "cpu"), templates)
        out["builder-from-image.Dockerfile"] = render_base(bases.builder_spec(from_image), templates)
    return out


def test_the_bundled_project_renders_from_the_packages_templates() -> None:
    # The example project overlays nothing (tests/unit/test_templating.py exercises the overlay rule), so
    # the goldens are the package's own templates' output.
    assert template_dir(REPO_ROOT) == Templates((BUNDLED_TEMPLATES,))
    for folder in ("common", "cpu", "gpu", "deploy"):
        assert (BUNDLED_TEMPLATES / folder).is_dir() and not (BUNDLED_TEMPLATES / folder).is_symlink()


GOLDEN_NAMES = (
    *(f"{app}.Dockerfile" for app in BUNDLED_APPS),
    "hello-index-url-env.Dockerfile",
    "base-cpu.Dockerfile",
    "base-cpu-from-image.Dockerfile",
    "base-gpu.Dockerfile",
    "builder.Dockerfile",
    "builder-from-image.Dockerfile",
)


def test_every_case_has_a_golden_and_every_golden_a_case() -> None:
    assert sorted(generated_dockerfiles()) == sorted(GOLDEN_NAMES)
    orphans = sorted(p.name for p in GOLDEN.glob("*.Dockerfile") if p.name not in GOLDEN_NAMES)
    assert orphans == [], "golden files that nothing generates any more; delete them"


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_generated_dockerfile_matches_golden(name: str, check_golden: Callable[[Path, str], None]) -> None:
    check_golden(GOLDEN / name, generated_dockerfiles()[name])


def test_generate_writes_what_the_goldens_hold(tmp_path: Path) -> None:
    config = bundled_config()
    with mock.patch.object(bases, "uv_version", return_value=UV_VERSION):
        written = generate_all(config, plan_builds(config, config.apps, locked=False).dockerfiles(), tmp_path)
    assert sorted(written) == sorted(BUNDLED_APPS)
    for name, path in written.items():
        assert path == tmp_path / f"{name}.Dockerfile"
        assert path.read_text() == generated_dockerfiles()[f"{name}.Dockerfile"]


def test_the_ray_layer_comes_before_anything_app_specific() -> None:
    """The cache argument of the templates: nothing app-specific above the shared Ray stage's install."""
    for name in BUNDLED_APPS:
        text = generated_dockerfiles()[f"{name}.Dockerfile"]
        ray_stage = text.split(" AS app\n", 1)[0]
        assert "app.lock" not in ray_stage
        assert name not in ray_stage.split("AS ray", 1)[1]


@pytest.mark.parametrize(
    ("value", "word"),
    [
        ("plain", '"plain"'),
        ("a b", '"a b"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("$HOME ${X}", '"\\$HOME \\${X}"'),
        ("C:\\tmp", '"C:\\\\tmp"'),
        ("<&'>é", '"<&\'>é"'),
    ],
)
def test_env_values_are_quoted_the_way_buildkit_unquotes_them(value: str, word: str) -> None:
    """No $-expansion, and no JSON escapes such as \\u0026 that BuildKit would keep verbatim."""
    assert dockerfile_string(value) == word


def test_env_values_in_the_dockerfile_are_quoted() -> None:
    text = generated_dockerfiles()["hello-index-url-env.Dockerfile"]
    assert 'ENV MOTD="say \\"hi\\" & \\$HOME"\n' in text
    assert "--index-url https://pypi.example.internal/simple" in text


def test_gpu_image_gets_cuda_label_and_nvidia_library_path() -> None:
    cuda = generated_dockerfiles()["cuda.Dockerfile"]
    assert "ENV LD_LIBRARY_PATH=/opt/app/site-packages/nvidia/cuda_runtime/lib\n" in cuda
    assert 'io.raybuild.cuda="12.9"' in cuda
    assert "LD_LIBRARY_PATH" not in generated_dockerfiles()["hello.Dockerfile"]


def test_unchanged_inputs_give_byte_identical_output() -> None:
    assert generated_dockerfiles() == generated_dockerfiles()


def test_a_changed_lockfile_changes_only_the_lock_label() -> None:
    config = bundled_config()
    hello = next(app for app in config.apps if app.name == "hello")
    spec = image_spec_for(config, hello)
    before = render_dockerfile(spec).splitlines()
    after = render_dockerfile(dataclasses.replace(spec, lock_hash="0123456789abcdef")).splitlines()
    changed = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert changed == [
        (
            f'      io.raybuild.lock-sha256="{spec.lock_hash}" \\',
            '      io.raybuild.lock-sha256="0123456789abcdef" \\',
        )
    ]


def test_unlocked_app_is_labelled_unlocked(tmp_project: TmpProject) -> None:
    config = tmp_project.load()
    assert image_spec_for(config, config.apps[0]).lock_hash == "unlocked"


# -- templates ---------------------------------------------------------------------------------------------


def _spec() -> ImageSpec:
    return ImageSpec(app="demo", device="cpu", python="3.11", ray_version="2.60.0", base_image="base:1",
                     builder_image="builder:1", lock_hash="0" * 16)  # fmt: skip


def test_strict_undefined_turns_an_unknown_variable_into_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "Dockerfile.j2").write_text("FROM {{ base_image }}\nLABEL x={{ no_such_variable }}\n")
    with pytest.raises(ConfigError) as caught:
        render_dockerfile(_spec(), Templates((tmp_path,)))
    assert caught.value.message == "template cpu/Dockerfile.j2: 'no_such_variable' is undefined"


def test_a_missing_template_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        render_dockerfile(_spec(), Templates((tmp_path,)))
    assert caught.value.message == f"template cpu/Dockerfile.j2 not found under {tmp_path}"


def test_a_template_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "Dockerfile.j2").write_text("FROM x\n{% if %}\n")
    with pytest.raises(ConfigError) as caught:
        render_dockerfile(_spec(), Templates((tmp_path,)))
    assert caught.value.message.startswith(f"{tmp_path / 'cpu' / 'Dockerfile.j2'}:2: template syntax error")


def test_render_collapses_blank_runs_and_trailing_space(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "Dockerfile.j2").write_text("\n\nFROM {{ base_image }}   \n\n\n\nUSER 1000\n\n\n")
    assert render_dockerfile(_spec(), Templates((tmp_path,))) == "FROM base:1\n\nUSER 1000\n"


def test_a_project_images_folder_overrides_the_bundled_templates_file_by_file(
    tmp_project: TmpProject,
) -> None:
    assert template_dir(tmp_project.root) == Templates((BUNDLED_TEMPLATES,))
    bundled = render_dockerfile(_spec(), template_dir(tmp_project.root))
    # Only the shared app template is the project's own; cpu/Dockerfile.j2 still comes from raybuild.
    (tmp_project.root / "images" / "common").mkdir(parents=True)
    (tmp_project.root / "images" / "common" / "app.Dockerfile.j2").write_text("FROM {{ base_image }}\n")
    templates = template_dir(tmp_project.root)
    assert templates.dirs == (tmp_project.root / "images", BUNDLED_TEMPLATES)
    assert templates.path("cpu/Dockerfile.j2") == BUNDLED_TEMPLATES / "cpu" / "Dockerfile.j2"
    assert templates.path("common/prune.py") == BUNDLED_TEMPLATES / "common" / "prune.py"
    assert render_dockerfile(_spec(), templates) == "FROM base:1\n" != bundled


def test_base_spec_picks_the_template_of_its_kind_and_device() -> None:
    assert BaseSpec("builder", "cpu", "3.11", "r", False).template() == "cpu/builder.Dockerfile.j2"
    assert BaseSpec("base", "cpu", "3.11", "r", False).template() == "cpu/base.Dockerfile.j2"
    assert BaseSpec("base", "gpu", "3.11", "", False, parent="p").template() == "gpu/base.Dockerfile.j2"


def test_gpu_base_builds_on_the_cpu_base_unless_a_cuda_image_is_set() -> None:
    config = bundled_config()
    with mock.patch.object(bases, "uv_version", return_value=UV_VERSION):
        assert bases.base_spec(config, "gpu").parent == bases.base_ref(config, "cpu")
        gpu = config.config.base.gpu.model_copy(update={"cuda_runtime_image": "nvidia/cuda:12.9.1-base"})
        custom = _with_changes(config, base=config.config.base.model_copy(update={"gpu": gpu}))
        assert bases.base_spec(custom, "gpu").parent == "nvidia/cuda:12.9.1-base"


# -- prune plan and NVIDIA library paths -----------------------------------------------------------------


def test_prune_plan_defaults_to_every_rule_and_strip() -> None:
    plan = prune_plan()
    assert plan.rules == DEFAULT_PRUNE_RULES
    assert plan.keep == DEFAULT_KEEP
    assert plan.strip is True


def test_prune_plan_keep_drops_named_rules_and_keeps_paths() -> None:
    rule = next(iter(DEFAULT_PRUNE_RULES))
    plan = prune_plan(keep=(rule, "strip-debug-symbols", "ray/rllib/env/**"))
    assert rule not in plan.rules
    assert set(plan.rules) == set(DEFAULT_PRUNE_RULES) - {rule}
    assert plan.strip is False
    assert plan.keep == (*DEFAULT_KEEP, "ray/rllib/env/**"), (
        "only paths travel to prune.py; rule names are resolved here"
    )


def test_prune_plan_remove_adds_one_app_rule() -> None:
    plan = prune_plan(remove=("sklearn/datasets/data", "**/*.csv"))
    assert plan.rules["app-remove"] == ("sklearn/datasets/data", "**/*.csv")
    assert {k: v for k, v in plan.rules.items() if k != "app-remove"} == DEFAULT_PRUNE_RULES


def test_prune_plan_json_is_what_prune_py_reads() -> None:
    plan = prune_plan(remove=("x/*",), keep=("strip-debug-symbols", "keep/me"))
    payload = json.loads(plan.to_json())
    assert payload == {
        "keep": [*DEFAULT_KEEP, "keep/me"],
        "rules": {**{k: list(v) for k, v in DEFAULT_PRUNE_RULES.items()}, "app-remove": ["x/*"]},
        "strip": False,
    }
    assert plan.to_json() == prune_plan(remove=("x/*",), keep=("strip-debug-symbols", "keep/me")).to_json()


def test_nvidia_library_dirs_maps_cuda_wheels_to_their_lib_folders() -> None:
    lock = (
        "nvidia-cuda-runtime-cu12==12.9.79 \\\n    --hash=sha256:aa\n"
        "nvidia_cublas_cu12==12.9.1.4\n"
        "nvidia-cudnn-cu12==9.10.2.21\n"
        "nvidia-nccl-cu12==2.27.3\n"
        "nvidia-ml-py==13.580.82\n"
        "numpy==2.4.6\n"
    )
    assert nvidia_library_dirs(lock) == (
        "/opt/app/site-packages/nvidia/cublas/lib",
        "/opt/app/site-packages/nvidia/cuda_runtime/lib",
        "/opt/app/site-packages/nvidia/cudnn/lib",
        "/opt/app/site-packages/nvidia/nccl/lib",
    )
    assert nvidia_library_dirs("numpy==2.4.6\n") == ()
