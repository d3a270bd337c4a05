"""Real builds of the bundled apps, and the properties the build promises.

Slow steps are shared: BuildKit's cache and the shared Ray layer make every build after the first cheap.
"""

from __future__ import annotations

import json
import re
import tarfile
import uuid
from pathlib import Path

import pytest

from raybuild.config import LoadedConfig, load_config
from raybuild.engine import Engine
from raybuild.errors import BuildError, EngineError
from raybuild.image.build import Builder
from raybuild.lock import lockfile
from raybuild.lock.resolve import app_target as lock_target
from raybuild.lock.resolve import lockfile_text
from raybuild.records import BuiltImage
from raybuild.state import HEAD_KEY, project_id
from raybuild.verify.smoke import smoke_test
from tests.integration.docker_cli import docker

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def built(engine: Engine, bundled: LoadedConfig) -> dict[str, BuiltImage]:
    images = Builder(bundled, engine, ca_bundle=_host_ca()).build(bundled.apps)
    return {image.app: image for image in images}


def _host_ca() -> Path | None:
    path = Path("/etc/ssl/certs/ca-certificates.crt")
    return path if path.is_file() else None


def _layers(engine: Engine, ref: str) -> list[str]:
    return list(engine.inspect(ref)["RootFS"]["Layers"])


@pytest.mark.parametrize("app_name", ["hello", "sklearn", "cuda"])
def test_bundled_app_builds_and_serves(
    engine: Engine, bundled: LoadedConfig, built: dict[str, BuiltImage], app_name: str
) -> None:
    (app,) = bundled.select((app_name,))
    # The GPU app runs in CPU mode here: CUDA libraries must resolve and the app must import.
    result = smoke_test(app, str(built[app_name].ref), engine, project=project_id(bundled), timeout=240)
    assert result.status == 200
    assert result.body


def test_runtime_image_meets_kuberay_contract(engine: Engine, built: dict[str, BuiltImage]) -> None:
    ref = str(built["hello"].ref)
    config = engine.inspect(ref)["Config"]
    assert config["User"] == "1000"
    assert config["WorkingDir"] == "/home/ray/app"
    labels = config["Labels"]
    assert labels["io.raybuild.ray-version"] == "2.60.0"
    assert labels["io.raybuild.python"] == "3.11"
    assert len(labels["io.raybuild.lock-sha256"]) == 16
    # KubeRay 1.4+ runs `/bin/bash -c`, not a login shell: ray must resolve from the ENV PATH alone.
    out = docker(
        engine,
        "run",
        "--rm",
        ref,
        "/bin/bash",
        "-c",
        "command -v ray && command -v wget && id -u && echo $HOME",
    ).output.split()
    assert out[0] == "/opt/ray/venv/bin/ray"
    assert out[1].endswith("/wget")
    assert out[2:] == ["1000", "/home/ray"]


def test_no_devel_files_in_gpu_image(engine: Engine, built: dict[str, BuiltImage]) -> None:
    check = (
        "command -v nvcc || ls -d /usr/local/cuda/include 2>/dev/null"
        " || find / -xdev -name '*.a' -path '*cuda*' | head -1"
    )
    out = docker(
        engine,
        "run",
        "--rm",
        "--user",
        "0",
        str(built["cuda"].ref),
        "/bin/bash",
        "-c",
        check + " 2>/dev/null",
        check=False,
    ).output
    assert out.strip() == ""
    env = engine.inspect(str(built["cuda"].ref))["Config"]["Env"]
    assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in env


def test_cpu_images_share_base_and_ray_layers(engine: Engine, built: dict[str, BuiltImage]) -> None:
    hello, sklearn, cuda, head = (
        _layers(engine, str(built[n].ref)) for n in ("hello", "sklearn", "cuda", HEAD_KEY)
    )
    # The head image is base + Ray; every app image starts with exactly those layers.
    assert hello[: len(head)] == head
    assert sklearn[: len(head)] == head
    assert cuda[: len(head)] == head
    assert len(hello) == len(head) + 2  # the app's packages, then its code


def test_rebuild_without_change_is_a_noop(
    engine: Engine, bundled: LoadedConfig, built: dict[str, BuiltImage]
) -> None:
    (again,) = [i for i in Builder(bundled, engine).build(bundled.select(("hello",))) if i.app == "hello"]
    assert again.cached
    assert again.ref == built["hello"].ref
    assert again.image_id == built["hello"].image_id


def test_code_only_change_rebuilds_only_the_code_layer(
    engine: Engine, project_copy: Path, built: dict[str, BuiltImage]
) -> None:
    code = project_copy / "apps" / "hello" / "hello_app.py"
    code.write_text(code.read_text() + f"\n# change {uuid.uuid4().hex}\n")
    config = load_config(project_copy / "raybuild.toml")
    changed = next(i for i in Builder(config, engine).build(config.select(("hello",))) if i.app == "hello")
    assert not changed.cached
    assert changed.ref != built["hello"].ref
    before, after = _layers(engine, str(built["hello"].ref)), _layers(engine, str(changed.ref))
    assert len(before) == len(after)
    assert before[:-1] == after[:-1]
    assert before[-1] != after[-1]
    engine.remove_image(str(changed.ref))


def test_ca_bundle_is_a_secret_not_a_layer(engine: Engine, project_copy: Path, tmp_path: Path) -> None:
    marker = f"raybuild-secret-marker-{uuid.uuid4().hex}"
    bundle = tmp_path / "ca.pem"
    host = _host_ca()
    bundle.write_text((host.read_text() if host else "") + f"\n# {marker}\n")
    # A requirement no other image has, so the app stage really runs with the secret mounted.
    app_dir = project_copy / "apps" / "hello"
    (app_dir / "requirements.in").write_text("orjson\ntomli-w\n")
    config = load_config(project_copy / "raybuild.toml")
    from raybuild.lock.resolve import lock

    lock(config, config.select(("hello",)))
    image = next(
        i
        for i in Builder(config, engine, ca_bundle=bundle).build(config.select(("hello",)))
        if i.app == "hello"
    )
    saved = tmp_path / "image.tar"
    engine.save(str(image.ref), saved)
    needle = marker.encode()
    with tarfile.open(saved) as outer:
        for member in outer.getmembers():
            data = outer.extractfile(member)
            if data is None:
                continue
            blob = data.read()
            assert needle not in blob, f"CA bundle content found in {member.name}"
            if member.name.endswith("layer.tar"):
                (tmp_path / "layer.tar").write_bytes(blob)
                with tarfile.open(tmp_path / "layer.tar") as layer:
                    names = layer.getnames()
                assert not any(n.endswith("run/secrets/ca_bundle") for n in names)
    history = json.dumps(engine.inspect(str(image.ref)))
    assert marker not in history
    engine.remove_image(str(image.ref))


def test_missing_lockfile_names_the_fix(engine: Engine, project_copy: Path) -> None:
    (project_copy / "lockfiles" / "hello.txt").unlink()
    config = load_config(project_copy / "raybuild.toml")
    with pytest.raises(BuildError) as info:
        Builder(config, engine).build(config.select(("hello",)))
    assert "raybuild lock hello" in (info.value.hint or "")


def test_failed_build_names_the_step_and_leaves_no_tag(engine: Engine, project_copy: Path) -> None:
    config = load_config(project_copy / "raybuild.toml")
    (hello,) = config.select(("hello",))
    target = lock_target(config, hello)
    body = lockfile.read(target.path)
    assert body is not None and body.problem is None
    # Every hash of orjson's entry corrupted, under a header that matches (as if the index had served other
    # files when it was locked): raybuild's own checks pass, uv's --require-hashes fails in the app stage.
    entry = re.search(r"^orjson==.*?(?=^\S)", body.body, flags=re.M | re.S)
    assert entry is not None
    broken = body.body.replace(
        entry.group(0), re.sub(r"sha256:[0-9a-f]{64}", "sha256:" + "0" * 64, entry.group(0))
    )
    target.path.write_text(lockfile_text(target, config, broken))
    builder = Builder(config, engine)
    with pytest.raises(BuildError) as info:
        builder.build(config.select(("hello",)))
    # The app stage's install step, whatever its number in the Dockerfile.
    assert re.search(r"failed at step \[app \d+/\d+\] RUN ", info.value.message), info.value.message
    assert "hash" in info.value.output_tail.lower()
    from raybuild.image.build import stage_context
    from raybuild.tags import image_ref

    ctx = project_copy / "ctx"
    ctx.mkdir()
    ref = image_ref(config, config.apps[0], stage_context(config, config.apps[0], ctx))
    assert not engine.image_exists(ref)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (
            "from ray import serve\n\n\ndef broken(:\n    pass\n",
            "SyntaxError: invalid syntax (hello_app.py, line 4)",
        ),
        (
            "import not_a_module_anywhere\n",
            "ModuleNotFoundError: No module named 'not_a_module_anywhere' (hello_app.py, line 1)",
        ),
        ("x = 1\nvalue = x / 0\n", "ZeroDivisionError: division by zero (hello_app.py, line 2)"),
        ("app = 42\n", "TypeError: hello_app:app is a int, not a Serve application"),
    ],
)
def test_a_broken_app_fails_the_build_at_its_import_check(
    engine: Engine, project_copy: Path, code: str, expected: str
) -> None:
    (project_copy / "apps" / "hello" / "hello_app.py").write_text(code + f"# {uuid.uuid4().hex}\n")
    config = load_config(project_copy / "raybuild.toml")
    with pytest.raises(BuildError) as info:
        Builder(config, engine).build(config.select(("hello",)))
    assert info.value.message.startswith("app 'hello': hello_app:app does not import as a Serve app: ")
    assert expected in info.value.message
    from raybuild.image.build import stage_context
    from raybuild.tags import image_ref

    ctx = project_copy / "ctx"
    ctx.mkdir()
    ref = image_ref(config, config.apps[0], stage_context(config, config.apps[0], ctx))
    assert not engine.image_exists(ref)  # nothing half-made is tagged


def test_daemon_down_is_one_clear_error(tmp_path: Path) -> None:
    engine = Engine(env={"DOCKER_HOST": f"unix://{tmp_path}/nothing.sock"})
    with pytest.raises(EngineError) as info:
        engine.ping()
    assert "daemon is not reachable" in info.value.message
    assert "scripts/setup" in (info.value.hint or "")
