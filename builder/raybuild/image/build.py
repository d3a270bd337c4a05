"""Building app images: a staged build context, a BuildKit build, then content-addressed tags.

The context holds only what the Dockerfile reads (the generated Dockerfile, the shared Ray lock, the app's
extra packages, the prune script and rules, and the app code less what the `.raybuildignore` rules leave
out: see `ignore`), so unrelated repository changes never invalidate a layer. The tag is a hash of that
context: an unchanged app is a no-op, and a changed one gets a new tag only after its build succeeded. The
head image's tag is a hash of its own inputs (`head_hash`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raybuild.config import App, LoadedConfig
from raybuild.engine import Engine
from raybuild.errors import BuildError, UsageError
from raybuild.image import bases
from raybuild.image.dockerfile import render_dockerfile, template_dir
from raybuild.image.ignore import IGNORE_FILE, CodeFiles, IgnoreRules
from raybuild.image.introspect import introspect
from raybuild.image.provenance import provenance_labels
from raybuild.image.prune import PrunePlan, prune_plan, prune_script
from raybuild.image.spec import image_spec_for
from raybuild.lock import resolve as lock
from raybuild.progress import Progress, silent
from raybuild.state import (
    HEAD_KEY,
    BuiltImage,
    head_ref,
    image_ref,
    latest_ref,
    load_build_record,
    project_id,
    save_build_record,
)

CA_ENV_VARS = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "PIP_CERT")


def default_ca_bundle() -> Path | None:
    """--ca-bundle default: the first of SSL_CERT_FILE, REQUESTS_CA_BUNDLE, PIP_CERT that names a file."""
    for name in CA_ENV_VARS:
        value = os.environ.get(name)
        if value and Path(value).is_file():
            return Path(value)
    return None


def code_files(config: LoadedConfig, app: App) -> CodeFiles:
    """The app's files that go into its image, after the ignore rules and the size limit."""
    app_dir = config.app_dir(app)
    rules = IgnoreRules.for_app(config.root, app_dir)
    return rules.select(app_dir, config.config.limits.code_file_mb, app.name)


def _prune_plan(app: App) -> PrunePlan:
    # One plan for both venvs: Ray's and the app's (Ray Data, say, lives in Ray's).
    return prune_plan(tuple(app.prune.remove), tuple(app.prune.keep))


def stage_context(config: LoadedConfig, app: App, context: Path, progress: Progress = silent) -> str:
    """Write the app's build context into ``context``; return its content hash (the image tag's suffix)."""
    lockfile = config.lockfile(app)
    missing = next((path for path in (lockfile, config.ray_lockfile()) if not path.is_file()), None)
    if missing is not None:
        raise BuildError(
            f"app {app.name!r}: no lockfile at {missing.relative_to(config.root)}",
            hint=f"run `raybuild lock {app.name}`",
        )
    # Out of date, edited by hand or cut short: one line naming the file and the `raybuild lock` to run.
    lock.check(config, (app,))
    templates = template_dir(config.root)
    ray_text = config.ray_lockfile().read_text(encoding="utf-8")
    plan = _prune_plan(app)
    files = {
        "Dockerfile": render_dockerfile(image_spec_for(config, app), templates),
        "ray.lock": ray_text,
        "app.lock": lock.extras_lock(lockfile.read_text(encoding="utf-8"), ray_text),
        "prune.py": prune_script(templates).read_text(encoding="utf-8"),
        "prune-ray.json": plan.to_json(),
        "prune-app.json": plan.to_json(),
        ".dockerignore": "**/__pycache__\n**/*.pyc\n",
    }
    digest = hashlib.sha256()
    for name, text in files.items():
        (context / name).write_text(text, encoding="utf-8")
        digest.update(f"{name}\0{text}\0".encode())
    code = context / "code"
    code.mkdir()
    app_dir = config.app_dir(app)
    if (app_dir / ".dockerignore").is_file() and not (app_dir / IGNORE_FILE).is_file():
        progress(f"{app.name}: warning: {app.path}/.dockerignore is not read; put its rules in {IGNORE_FILE}")
    selected = code_files(config, app)
    count = len(selected.files)
    progress(f"  {app.name}: {count} file{'s' if count != 1 else ''} of code, {selected.ignored} ignored")
    for rel, path in selected.files.items():
        (code / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, code / rel)
        digest.update(f"code/{rel}\0".encode() + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


# The head image is stages 1 and 3 of the app Dockerfile (Ray on the builder, copied onto the base), rendered
# from these templates. Their whole text counts, so an edit anywhere in them gives a new head tag.
HEAD_TEMPLATES = ("cpu/Dockerfile.j2", "common/app.Dockerfile.j2")
# What those stages read from the spec. The rest (the app's name, lock, env, CUDA) reaches stages 2 and 4.
_HEAD_SPEC_KEYS = (
    "base_image", "builder_image", "python", "ray_version", "index_url", "venv", "app_site", "code_dir",
)  # fmt: skip


def head_hash(config: LoadedConfig, app: App) -> str:
    """The head image's tag suffix, from its inputs rather than from the Dockerfile rendered for ``app``.

    The inputs: the base and builder images, Python and Ray, the Ray lock, the prune rules applied to Ray
    (rules an app keeps apply there too) and the prune script, and the text of the templates. Nothing of
    the app's code or of its own packages, so CPU apps with the same prune rules share one head.
    """
    templates = template_dir(config.root)
    spec = image_spec_for(config, app).context()
    inputs: dict[str, object] = {key: spec[key] for key in _HEAD_SPEC_KEYS}
    inputs["ray.lock"] = config.ray_lockfile().read_text(encoding="utf-8")
    inputs["prune-ray.json"] = _prune_plan(app).to_json()
    inputs["prune.py"] = prune_script(templates).read_text(encoding="utf-8")
    for name in HEAD_TEMPLATES:
        inputs[name] = templates.path(name).read_text(encoding="utf-8")
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:12]


_STEP = re.compile(r"^#\d+ \[([^\]]+)\] (.*)$")
_FAILED = (
    re.compile(r"^ > \[([^\]]+)\] (.*):$"),  # --progress=plain: the error summary (" > NAME:")
    re.compile(r"ERROR \[([^\]]+)\] (.*)"),  # tty progress: "=> ERROR [app 2/3] RUN ..."
)


def failing_step(output: str) -> str | None:
    """The BuildKit step that failed, e.g. `[app 2/3] RUN uv pip install ...`."""
    lines = output.splitlines()
    for line in reversed(lines):
        for pattern in _FAILED:
            match = pattern.search(line)
            if match:
                return f"[{match.group(1)}] {match.group(2)[:120]}"
    # Plain progress without the summary: the step named on the vertex (#N) that reported "#N ERROR:".
    failed = next((m.group(1) for line in reversed(lines) if (m := re.match(r"#(\d+) ERROR:", line))), None)
    for line in lines:
        match = _STEP.match(line)
        if failed and match and line.startswith(f"#{failed} "):
            return f"[{match.group(1)}] {match.group(2)[:120]}"
    return None


def _progress_filter(progress: Progress) -> Progress:
    seen: set[str] = set()

    def on_line(line: str) -> None:
        match = _STEP.match(line)
        if match and match.group(0) not in seen:
            seen.add(match.group(0))
            progress(f"  [{match.group(1)}] {match.group(2)[:100]}")
        elif line.startswith("#") and "prune:" in line:
            progress("  " + line.split(" ", 2)[-1])

    return on_line


@dataclass
class Builder:
    config: LoadedConfig
    engine: Engine
    ca_bundle: Path | None = None
    netrc: Path | None = None
    progress: Progress = silent

    def secrets(self) -> dict[str, Path]:
        # BuildKit secrets: mounted for one RUN step, never stored in a layer, cache key or build arg.
        out: dict[str, Path] = {}
        if self.ca_bundle is not None:
            if not self.ca_bundle.is_file():
                raise UsageError(f"--ca-bundle {self.ca_bundle}: no such file")
            out["ca_bundle"] = self.ca_bundle
        if self.netrc is not None:
            if not self.netrc.is_file():
                raise UsageError(f"--netrc {self.netrc}: no such file")
            out["netrc"] = self.netrc
        return out

    def _build(self, context: Path, target: str | None, what: str, labels: dict[str, str]) -> str:
        """Build without tagging; the image ID. Callers tag only what passed its checks."""
        try:
            return self.engine.build(
                context,
                context / "Dockerfile",
                iidfile=context / f"iid-{target or 'app'}",
                target=target,
                secrets=self.secrets(),
                labels=labels,
                what=what,
                on_line=_progress_filter(self.progress),
            )
        except BuildError as exc:
            step = failing_step(exc.output_tail)
            if step:
                exc.message = f"{what} failed at step {step}"
            raise

    def _deployments(self, app: App, image: str) -> tuple[dict[str, Any], ...]:
        """Import the app in ``image`` as Serve would; its deployments, or a BuildError naming the cause."""
        self.progress(f"{app.name}: checking that {app.import_path} imports as a Serve app")
        found = introspect(self.engine, image, app, project_id(self.config))
        found.check_listed(app)
        for line in found.dropped_options():
            self.progress(f"{app.name}: warning: {line}")
        return found.as_config()

    def build_app(self, app: App) -> tuple[BuiltImage, BuiltImage | None]:
        """Build one app image; also the head image (base + Ray only) when it is a CPU app."""
        with tempfile.TemporaryDirectory(prefix=f"raybuild-{app.name}-") as tmp:
            context = Path(tmp)
            ref = image_ref(self.config, app, stage_context(self.config, app, context, self.progress))
            head: BuiltImage | None = None
            if app.device == "cpu":
                hr = head_ref(self.config, head_hash(self.config, app))
                if self.engine.image_exists(hr):
                    head = BuiltImage(HEAD_KEY, hr, self.engine.inspect(hr)["Id"], "cpu", cached=True)
                else:
                    self.progress(f"building head image {hr}")
                    labels = provenance_labels(self.engine, self.config, None, hr)
                    head_id = self._build(context, "head", "build of the head image", labels)
                    self.engine.tag(head_id, hr)
                    head = BuiltImage(HEAD_KEY, hr, head_id, "cpu", cached=False)
            if self.engine.image_exists(ref):
                self.progress(f"{app.name}: {ref} is up to date")
                recorded = load_build_record(self.config).get(app.name)
                deployments = (
                    recorded.deployments
                    if recorded is not None and recorded.ref == ref and recorded.deployments
                    else self._deployments(app, ref)
                )
                image_id = self.engine.inspect(ref)["Id"]
                return BuiltImage(app.name, ref, image_id, app.device, True, deployments), head
            self.progress(f"building {app.name} -> {ref}")
            labels = provenance_labels(self.engine, self.config, app, ref)
            image_id = self._build(context, None, f"build of app {app.name!r}", labels)
        # A broken app fails here, before its content-addressed tag exists: nothing half-made is tagged.
        deployments = self._deployments(app, image_id)
        self.engine.tag(image_id, ref)
        self.engine.tag(ref, latest_ref(self.config, app.name))
        return BuiltImage(app.name, ref, image_id, app.device, False, deployments), head

    def build(self, apps: tuple[App, ...]) -> list[BuiltImage]:
        devices = tuple(dict.fromkeys(app.device for app in apps)) or ("cpu",)
        bases.ensure_bases(self.config, self.engine, devices, self.progress)
        built: list[BuiltImage] = []
        head: BuiltImage | None = None
        for app in apps:
            image, app_head = self.build_app(app)
            built.append(image)
            head = head or app_head
        if head is not None:
            self.engine.tag(head.ref, latest_ref(self.config, HEAD_KEY))
            built.insert(0, head)
        save_build_record(self.config, built)
        return built
