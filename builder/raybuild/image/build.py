"""Building app images: a staged build context, the registry first, else a BuildKit build, then tags.

The context holds only what the Dockerfile reads (the generated Dockerfile, the shared Ray lock, the app's
extra packages, the prune script and rules, and the app code less what the `.raybuildignore` rules leave out:
see `ignore`), so unrelated repository changes never invalidate a layer. The tag is a hash of that context: an
unchanged app is a no-op, and a changed one gets a new tag only after its build succeeded. The head image's
tag is a hash of its own inputs (`head_hash`).

The configured registry is the truth for a content-addressed tag. Before building an image, `Builder` asks the
registry for its tag: when the registry has it, the image is pulled and used, not rebuilt, so a fresh machine
(a CI runner) ends up with the very digests that are deployed, and an app image built there sits on the
published head image, sharing its base and Ray layers. ``rebuild`` builds locally regardless.

An app built for several platforms gets one image per platform, each under its own tag (``-arm64`` for
linux/arm64; the default platform's tag is what a single-platform build gives), and one more tag for the
set, `tags.multi_platform_ref`, which `publish` puts an image index under. Locally, where Docker 20.10
holds one image per tag, that tag names this machine's own platform's image, as a pull of the index would.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from raybuild import platforms
from raybuild.config import LoadedConfig
from raybuild.config_apps import App
from raybuild.engine import Engine
from raybuild.errors import BuildError, EngineError, UsageError
from raybuild.image import bases
from raybuild.image.epoch import Change, epoch_of, image_inputs, last_change
from raybuild.image.introspect import introspect
from raybuild.image.plan import BuildPlan, plan_builds, plan_for, stage_context, write_context
from raybuild.image.plan import head_hash_for as head_hash
from raybuild.image.provenance import provenance_labels
from raybuild.image.spec import HEAD_TEMPLATES
from raybuild.platforms import Platform
from raybuild.progress import Progress, silent
from raybuild.records import BuiltImage, load_build_record, save_build_record
from raybuild.reference import ImageRef
from raybuild.registry import (
    HttpRegistry,
    Manifest,
    Registry,
    RegistryUnreachable,
    RegistryUnverifiable,
)
from raybuild.state import HEAD_KEY, project_id
from raybuild.tags import latest_ref, multi_platform_ref

__all__ = ["HEAD_TEMPLATES", "Builder", "default_ca_bundle", "failing_step", "head_hash", "stage_context"]

CA_ENV_VARS = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "PIP_CERT")
# `docker pull` of a tag the registry does not have: a miss, not a failure.
_NOT_FOUND = re.compile(r"not found|manifest unknown|does not exist", re.I)


def default_ca_bundle() -> Path | None:
    """--ca-bundle default: the first of SSL_CERT_FILE, REQUESTS_CA_BUNDLE, PIP_CERT that names a file."""
    for name in CA_ENV_VARS:
        value = os.environ.get(name)
        if value and Path(value).is_file():
            return Path(value)
    return None


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


# What the registry said about a tag: its manifest, None (no such tag), or _UNKNOWN (it could not be asked).
_UNKNOWN = object()
Found = Literal["local", "pulled"]


@dataclass
class Builder:
    config: LoadedConfig
    engine: Engine
    ca_bundle: Path | None = None
    netrc: Path | None = None
    progress: Progress = silent
    rebuild: bool = False  # build locally even when this engine or the registry has the tag
    connect: Callable[[str], Registry] | None = None  # HOST[:PORT] -> its client; default HttpRegistry
    _offline: set[str] = field(default_factory=set, init=False, repr=False)  # registries that did not answer
    _heads: dict[str, BuiltImage] = field(default_factory=dict, init=False, repr=False)
    # (platform, device) pairs ensured; device "" is the builder
    _bases: set[tuple[str, str]] = field(default_factory=set, init=False, repr=False)
    _changes: dict[str | None, Change | None] = field(default_factory=dict, init=False, repr=False)

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

    # -- the registry first ---------------------------------------------------------------------------------

    def _remote(self, ref: str) -> Manifest | object | None:
        parsed = ImageRef.parse(ref)
        host = parsed.host
        if host in self._offline:
            return _UNKNOWN
        try:
            return (self.connect or HttpRegistry)(host).manifest(parsed.path, parsed.api_reference)
        except RegistryUnreachable as exc:
            self._offline.add(host)
            self.progress(f"registry {host} is not reachable ({exc.reason}): building what is not here")
        except RegistryUnverifiable as exc:
            self.progress(
                f"could not read {ref} from the registry anonymously ({exc.reason}): trying docker pull"
            )
        return _UNKNOWN

    def _pull(self, ref: str, *, expected: bool) -> bool:
        """Pull ``ref``; False when the registry lacks it (or, with a warning, when the pull fails)."""
        self.progress(f"pulling {ref}")
        try:
            self.engine.pull(ref, timeout=float(self.config.config.limits.registry_deadline_s))
        except EngineError as exc:
            if not expected and _NOT_FOUND.search(exc.output_tail):
                return False
            tail = exc.output_tail.strip().splitlines()[-1:] or [exc.message]
            self.progress(f"warning: could not pull {ref} ({tail[0][:200]}): building it here instead")
            return False
        return True

    def _local_id(self, ref: str) -> str | None:
        return str(self.engine.inspect(ref)["Id"]) if self.engine.image_exists(ref) else None

    def _resolve(self, ref: str) -> Found | None:
        """Make the local ``ref`` the registry's image where the registry has it; None: it must be built."""
        if self.rebuild:
            return None
        local, remote = self._local_id(ref), self._remote(ref)
        if remote is None:
            return "local" if local else None
        if remote is _UNKNOWN:
            if local:
                return "local"
            host = ImageRef.parse(ref).host
            return "pulled" if host not in self._offline and self._pull(ref, expected=False) else None
        assert isinstance(remote, Manifest)
        if local is not None and remote.config_digest in (None, local):
            return "local"
        if local is not None:
            self.progress(
                f"{ref}: the registry holds image {remote.config_digest}, this engine {local}; "
                "using the registry's (a content-addressed tag names one image)"
            )
        return "pulled" if self._pull(ref, expected=True) else None

    def _pinned(self, ref: str) -> str:
        """``ref@digest`` once the registry has the image (pulled or pushed), else the tag alone."""
        digests = self.engine.inspect(ref).get("RepoDigests") or []
        digest = ImageRef.parse(ref).digest_among(map(str, digests))
        return f"{ref}@{digest}" if digest else ref

    # -- building -------------------------------------------------------------------------------------------

    def _ensure_bases(self, *devices: str, platform: str = platforms.DEFAULT) -> None:
        """The base images a build needs, made on first need only: a machine that pulls every image needs no
        base and no mmdebstrap, and a CPU app built on a head image from the registry needs the builder only.
        """
        wanted = {(platform, d) for d in ("", *devices)}
        if wanted <= self._bases:
            return
        bases.ensure_bases(self.config, self.engine, devices, self.progress, platform)
        self._bases |= wanted | ({(platform, "cpu")} if "gpu" in devices else set())

    def _build(
        self,
        context: Path,
        target: str | None,
        what: str,
        args: dict[str, str],
        labels: dict[str, str],
        platform: Platform,
    ) -> str:
        """Build without tagging; the image ID. Callers tag only what passed its checks."""
        try:
            return self.engine.build(
                context,
                context / "Dockerfile",
                iidfile=context / f"iid-{target or 'app'}",
                target=target,
                secrets=self.secrets(),
                build_args=args,
                labels=labels,
                what=what,
                on_line=_progress_filter(self.progress),
                platform=None if platform.default else platform.name,
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

    def _last_change(self, app: App | None) -> Change | None:
        """The last commit that changed an image's inputs (``app`` None: the head's), asked of git once."""
        key = app.name if app is not None else None
        if key not in self._changes:
            self._changes[key] = last_change(self.engine, self.config.root, image_inputs(self.config, app))
        return self._changes[key]

    def _head(self, plan: BuildPlan, context: Path) -> BuiltImage:
        """The head image CPU apps build on: from this engine, the registry, or a build (once per run)."""
        hr, platform = plan.head_ref, plan.platform
        if hr in self._heads:
            return self._heads[hr]
        found = self._resolve(hr)
        if found is not None:
            if found == "local":
                self.progress(f"head image {hr} is up to date")
            image_id = self.engine.inspect(hr)["Id"]
            head = BuiltImage(
                HEAD_KEY, ImageRef.parse(hr), image_id, "cpu", cached=True, pulled=found == "pulled"
            )
        else:
            self._ensure_bases("cpu", platform=platform.name)
            self.progress(f"building head image {hr}")
            change = self._last_change(None)
            args = {"RAY_SOURCE_DATE_EPOCH": str(epoch_of(self.config, change))}
            labels = provenance_labels(
                self.engine, self.config, None, hr, change, platform.name, plan.lock_digests
            )
            what = f"build of the head image{_for(platform)}"
            head_id = self._build(context, "head", what, args, labels, platform)
            self.engine.tag(head_id, hr)
            head = BuiltImage(HEAD_KEY, ImageRef.parse(hr), head_id, "cpu", cached=False)
        self._heads[hr] = head
        return head

    def build_app(
        self,
        app: App,
        platform: str = platforms.DEFAULT,
        deployments: tuple[dict[str, Any], ...] | None = None,
    ) -> tuple[BuiltImage, BuiltImage | None]:
        """Build (or pull) one app image for ``platform``; also the head image (base + Ray only) when it is
        a CPU app.

        ``deployments``, found in another platform's image of the same code, spare this one the import check
        (another platform's image runs under emulation, where importing Ray takes a minute: its smoke test,
        `raybuild test --platform`, runs it).
        """
        return self._build_plan(plan_for(self.config, app, platform), deployments)

    def _build_plan(
        self, plan: BuildPlan, deployments: tuple[dict[str, Any], ...] | None
    ) -> tuple[BuiltImage, BuiltImage | None]:
        app, platform, ref, main = plan.app, plan.platform, plan.ref, plan.main
        with tempfile.TemporaryDirectory(prefix=f"raybuild-{app.name}-") as tmp:
            context = Path(tmp)
            write_context(self.config, plan, context, self.progress)
            head = self._head(plan, context) if app.device == "cpu" else None
            found = self._resolve(ref)
            if found is not None:
                if found == "local":
                    self.progress(f"{app.name}: {ref} is up to date")
                recorded = load_build_record(self.config).get(app.name)
                if deployments is None:
                    deployments = (
                        recorded.deployments
                        if recorded is not None
                        and ImageRef.parse(ref) in recorded.refs
                        and recorded.deployments
                        else self._deployments(app, ref)
                    )
                image_id = self.engine.inspect(ref)["Id"]
                if found == "pulled" and main:
                    self.engine.tag(ref, latest_ref(self.config, app.name))
                pulled = found == "pulled"
                return BuiltImage(
                    app.name, ImageRef.parse(ref), image_id, app.device, True, deployments, pulled
                ), head
            # A CPU app's last stage is the head image; a GPU app's is its own base plus Ray.
            self._ensure_bases(*(("gpu",) if app.device == "gpu" else ()), platform=platform.name)
            self.progress(f"building {app.name} -> {ref}")
            change = self._last_change(app)
            args = {
                "SOURCE_DATE_EPOCH": str(epoch_of(self.config, change)),
                "RAY_SOURCE_DATE_EPOCH": str(epoch_of(self.config, self._last_change(None))),
            }
            if head is not None:
                args["HEAD_IMAGE"] = self._pinned(str(head.ref))
            labels = provenance_labels(
                self.engine, self.config, app, ref, change, platform.name, plan.lock_digests
            )
            what = f"build of app {app.name!r}{_for(platform)}"
            image_id = self._build(context, None, what, args, labels, platform)
        # A broken app fails here, before its content-addressed tag exists: nothing half-made is tagged.
        if deployments is None:
            deployments = self._deployments(app, image_id)
        self.engine.tag(image_id, ref)
        if main:
            self.engine.tag(ref, latest_ref(self.config, app.name))
        return BuiltImage(app.name, ImageRef.parse(ref), image_id, app.device, False, deployments), head

    def build_platforms(self, plans: tuple[BuildPlan, ...]) -> tuple[BuiltImage, dict[str, BuiltImage]]:
        """One app's image for each of its plans (the native platform first, where the import check runs),
        and what the build record keeps for the app."""
        images: dict[str, BuiltImage] = {}
        heads: dict[str, BuiltImage] = {}
        deployments: tuple[dict[str, Any], ...] | None = None
        for plan in plans:
            image, head = self._build_plan(plan, deployments)
            deployments = image.deployments
            images[plan.platform.name] = image
            if head is not None:
                heads[plan.platform.name] = head
        return self._as_one(plans[0].app.name, images), heads

    def _as_one(self, key: str, images: dict[str, BuiltImage]) -> BuiltImage:
        """The record entry of an image built for ``images``' platforms: the image itself when it was built
        for one platform, else the multi-platform tag on the image this machine runs."""
        names = platforms.ordered(images)
        if names == (platforms.DEFAULT,):
            return images[platforms.DEFAULT]
        refs = tuple((p, images[p].ref) for p in names)
        if len(names) == 1:  # one other platform: its own tag is the image's tag, no index needed
            return dataclasses.replace(images[names[0]], platform_refs=refs)
        local = next((images[p] for p in names if platforms.native(p)), images[names[0]])
        ref = multi_platform_ref(self.config, key, dict(refs))
        if ref != str(local.ref):
            self.engine.tag(str(local.ref), ref)
        return dataclasses.replace(
            local,
            ref=ImageRef.parse(ref),
            cached=all(i.cached for i in images.values()),
            pulled=all(i.pulled for i in images.values()),
            platform_refs=refs,
        )

    def build(self, apps: tuple[App, ...]) -> list[BuiltImage]:
        self.engine.ping()
        plans = plan_builds(self.config, apps)
        built: list[BuiltImage] = []
        heads: dict[str, BuiltImage] = {}
        for app in apps:
            image, app_heads = self.build_platforms(plans.of(app))
            built.append(image)
            for platform, head in app_heads.items():
                heads.setdefault(platform, head)
        if heads:
            head = self._as_one(HEAD_KEY, heads)
            self.engine.tag(str(head.ref), latest_ref(self.config, HEAD_KEY))
            built.insert(0, head)
        save_build_record(self.config, built)
        return built


def _for(platform: Platform) -> str:
    return "" if platform.default else f" for {platform.name}"
