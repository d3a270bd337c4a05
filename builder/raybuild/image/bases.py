"""Base images: their content-addressed names, and how they are made.

Three images per project, each named by a hash of what goes into it, so a changed suite, snapshot or
template gives a new name and an unchanged one is never rebuilt:

- the rootfs: Debian from mmdebstrap (``bootstrap``) or a registry image (``image``);
- the runtime base: rootfs plus the ray user and environment (the GPU base adds the NVIDIA variables on
  top of the CPU base, sharing all its layers);
- the builder: a rootfs with binutils, plus uv, used only in build stages.

Each platform has its own three (tags end in ``-arm64`` for linux/arm64; the default platform's names are
unchanged). Another platform's rootfs is bootstrapped with ``mmdebstrap --arch`` under emulation and
loaded with the right architecture in its image config (see archive.py); its base and builder are built
with BuildKit's ``--platform``, so the builder's binutils and uv are that platform's own, and strip works
on its binaries.
"""

from __future__ import annotations

import hashlib
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from raybuild import platforms
from raybuild.config import BaseImage, LoadedConfig
from raybuild.engine import Engine, which
from raybuild.errors import RaybuildError
from raybuild.image import epoch
from raybuild.image.archive import write_archive
from raybuild.image.dockerfile import render_base, template_dir
from raybuild.labels import ROLE_LABEL
from raybuild.progress import Progress, silent

RUNTIME_PACKAGES = ("python3-minimal", "libpython3-stdlib", "bash", "wget", "ca-certificates", "libstdc++6")
BUILDER_PACKAGES = (*RUNTIME_PACKAGES, "binutils")
REDIS_PACKAGES = ("bash", "redis-server")
# The front of `raybuild up`: Debian's HAProxy, standing in for the serve Service (or an Ingress).
FRONT_PACKAGES = ("bash", "haproxy")
# usrmerge pulls in perl (about 50 MB); once the system is merged, none of it is needed at run time, and
# neither is perl-base, which only dpkg's and debconf's maintainer scripts use (the images have no apt).
PURGE_AFTER_BOOTSTRAP = (
    "usrmerge",
    "libfile-find-rule-perl",
    "libnumber-compare-perl",
    "libtext-glob-perl",
    "perl",
    "libperl5.36",
    "perl-modules-5.36",
    "perl-base",
)
# glibc's iconv modules: nothing in a Ray node uses iconv (Python has its own codecs).
REMOVE_AFTER_BOOTSTRAP = (
    "/usr/lib/x86_64-linux-gnu/gconv",
    "/var/lib/apt/lists/*",
    "/var/cache/*",
    "/var/log/*",
)
# mmdebstrap copies the build host's resolv.conf and hostname into the root filesystem. Empty files instead:
# the output no longer depends on the host, and BuildKit, which mounts its own /etc/hosts and
# /etc/resolv.conf over them during each RUN step, no longer creates and deletes them, which stamped /etc
# with the build's clock in every layer.
EMPTY_FILES = ("/etc/hosts", "/etc/resolv.conf", "/etc/hostname")
# Debian's .pyc files are compiled during the bootstrap, where SOURCE_DATE_EPOCH makes py_compile choose
# checked-hash mode. The base's compileall writes unchecked-hash files, takes those for stale and compiles
# the same modules again into its own layer (4.9 MB twice). Without them, each module is compiled once.
BYTECODE_UNDER = ("/usr/lib/python3*", "/usr/share/python3")
NAMESPACE = "raybuild"


@dataclass(frozen=True)
class BaseSpec:
    """The runtime base or the builder image of one device."""

    kind: str  # "base" or "builder"
    device: str
    python: str
    rootfs: str
    install_packages: bool
    packages: tuple[str, ...] = ()
    uv_image: str = ""
    parent: str = ""
    extra: dict[str, str] = field(default_factory=dict)
    platform: str = platforms.DEFAULT  # what BuildKit builds it for; not in the Dockerfile's text

    def template(self) -> str:
        if self.kind == "builder":
            return "cpu/builder.Dockerfile.j2"
        if self.kind in ("redis", "front"):
            return f"common/{self.kind}.Dockerfile.j2"
        return f"{self.device}/base.Dockerfile.j2"

    def context(self) -> dict[str, object]:
        return {
            "device": self.device,
            "python": self.python,
            "rootfs": self.rootfs,
            "install_packages": self.install_packages,
            "packages": list(self.packages),
            "uv_image": self.uv_image,
            "parent": self.parent,
        }


def _digest(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:12]


def uv_version() -> str:
    from importlib.metadata import version

    return version("uv")


def uv_image(platform: str = platforms.DEFAULT) -> str:
    return f"{NAMESPACE}/uv:{uv_version()}{platforms.get(platform).suffix}"


@dataclass(frozen=True)
class Rootfs:
    """A root filesystem image: what it is called and how to make it."""

    ref: str
    settings: BaseImage
    packages: tuple[str, ...]
    platform: str = platforms.DEFAULT

    @property
    def bootstrapped(self) -> bool:
        return self.settings.source == "bootstrap"

    @property
    def removals(self) -> tuple[str, ...]:
        """REMOVE_AFTER_BOOTSTRAP, with the multiarch folder of this platform's glibc."""
        machine = platforms.get(self.platform).machine
        return tuple(
            p.replace("/x86_64-linux-gnu/", f"/{machine}-linux-gnu/") for p in REMOVE_AFTER_BOOTSTRAP
        )


def rootfs(settings: BaseImage, kind: str, platform: str = platforms.DEFAULT) -> Rootfs:
    packages = {"builder": BUILDER_PACKAGES, "redis": REDIS_PACKAGES, "front": FRONT_PACKAGES}.get(
        kind, RUNTIME_PACKAGES
    )
    if settings.source == "image":
        if platform != platforms.DEFAULT:
            raise RaybuildError(
                f'[base.cpu] source = "image" gives {platforms.DEFAULT} bases only; {platform} needs a '
                "bootstrapped base",
                hint='set [base.cpu] source = "bootstrap", or leave the platform out of [project].platforms',
            )
        return Rootfs(settings.image, settings, packages)
    # Another platform's tag also hashes its name; the default platform's is what it always was.
    other = () if platform == platforms.DEFAULT else (platform,)
    tag = _digest(
        "rootfs-v2",
        settings.suite,
        settings.mirror,
        settings.snapshot or "",
        *packages,
        *PURGE_AFTER_BOOTSTRAP,
        *REMOVE_AFTER_BOOTSTRAP,
        *EMPTY_FILES,
        *BYTECODE_UNDER,
        *other,
    )
    suffix = platforms.get(platform).suffix
    return Rootfs(f"{NAMESPACE}/rootfs-{kind}:{settings.suite}-{tag}{suffix}", settings, packages, platform)


def _on_rootfs(
    config: LoadedConfig, kind: str, rootfs_kind: str, uv: str = "", platform: str = platforms.DEFAULT
) -> BaseSpec:
    """An image made on one of the project's rootfs images (apt-installing its packages on a registry one)."""
    root = rootfs(config.config.base.cpu, rootfs_kind, platform)
    return BaseSpec(
        kind,
        "cpu",
        config.project.python,
        rootfs=root.ref,
        install_packages=not root.bootstrapped,
        packages=root.packages,
        uv_image=uv,
        platform=platform,
    )


def base_spec(config: LoadedConfig, device: str, platform: str = platforms.DEFAULT) -> BaseSpec:
    if device == "gpu":
        gpu = config.config.base.gpu
        parent = gpu.cuda_runtime_image or base_ref(config, "cpu", platform)
        return BaseSpec(
            "base",
            "gpu",
            config.project.python,
            rootfs="",
            install_packages=False,
            parent=parent,
            platform=platform,
        )
    return _on_rootfs(config, "base", "runtime", platform=platform)


def builder_spec(config: LoadedConfig, platform: str = platforms.DEFAULT) -> BaseSpec:
    return _on_rootfs(config, "builder", "builder", uv=uv_image(platform), platform=platform)


def redis_spec(config: LoadedConfig) -> BaseSpec:
    return _on_rootfs(config, "redis", "redis")


def redis_ref(config: LoadedConfig) -> str:
    return _ref(config, redis_spec(config), "gcs-redis")


def ensure_redis(config: LoadedConfig, engine: Engine, progress: Progress = silent) -> str:
    """The Redis image that `raybuild up` uses as its GCS store, made on first use."""
    engine.ping()
    ensure_rootfs(engine, rootfs(config.config.base.cpu, "redis"), progress, config)
    ref = redis_ref(config)
    _build_image(engine, config, redis_spec(config), ref, progress)
    return ref


def front_ref(config: LoadedConfig) -> str:
    return _ref(config, _on_rootfs(config, "front", "front"), "front-haproxy")


def ensure_front(config: LoadedConfig, engine: Engine, progress: Progress = silent) -> str:
    """The HAProxy image that `raybuild up` puts in front of the workers, made on first use."""
    engine.ping()
    ensure_rootfs(engine, rootfs(config.config.base.cpu, "front"), progress, config)
    ref = front_ref(config)
    _build_image(engine, config, _on_rootfs(config, "front", "front"), ref, progress)
    return ref


def _ref(config: LoadedConfig, spec: BaseSpec, name: str) -> str:
    text = render_base(spec, template_dir(config.root))
    suffix = platforms.get(spec.platform).suffix
    return f"{NAMESPACE}/{name}:py{config.project.python}-{_digest(text)}{suffix}"


def base_ref(config: LoadedConfig, device: str, platform: str = platforms.DEFAULT) -> str:
    return _ref(config, base_spec(config, device, platform), f"base-{device}")


def builder_ref(config: LoadedConfig, platform: str = platforms.DEFAULT) -> str:
    return _ref(config, builder_spec(config, platform), "builder")


# -- making them ----------------------------------------------------------------------------------------

_DPKG_EXCLUDES = (
    "/usr/share/man/*",
    "/usr/share/doc/*",
    "/usr/share/locale/*",
    "/usr/share/info/*",
    "/usr/share/lintian/*",
    "/usr/share/common-licenses/*",
)


def mmdebstrap_command(root: Rootfs, out: Path) -> list[str]:
    """The mmdebstrap call for a bootstrapped rootfs: minimal, no docs, no apt lists, no perl."""
    settings = root.settings
    mirror = settings.mirror
    if settings.snapshot:
        mirror = f"http://snapshot.debian.org/archive/debian/{settings.snapshot}"
    command = ["mmdebstrap", "--variant=essential", "--include=" + ",".join(root.packages)]
    if root.platform != platforms.DEFAULT:
        command.insert(1, f"--arch={platforms.get(root.platform).debian}")
    command += [f"--dpkgopt=path-exclude={pattern}" for pattern in _DPKG_EXCLUDES]
    # Keep the copyright files: licences must ship with the binaries.
    command.append("--dpkgopt=path-include=/usr/share/doc/*/copyright")
    purge = " ".join(PURGE_AFTER_BOOTSTRAP)
    purge_flags = "--force-depends --force-remove-essential"
    command.append(f'--customize-hook=chroot "$1" dpkg --purge {purge_flags} {purge}')
    command.append("--customize-hook=rm -rf " + " ".join(f'"$1"{path}' for path in root.removals))
    command.append("--customize-hook=truncate -s 0 " + " ".join(f'"$1"{path}' for path in EMPTY_FILES))
    if any(package.startswith("python3") for package in root.packages):
        # Only a rootfs with Python has Debian's bytecode to drop (the Redis store's has none, and find
        # fails on the missing folders).
        bytecode = " ".join(f'"$1"{path}' for path in BYTECODE_UNDER)
        command.append(f"--customize-hook=find {bytecode} -name __pycache__ -prune -exec rm -rf {{}} +")
    if settings.snapshot:
        command.append('--aptopt=Acquire::Check-Valid-Until "false"')
    command += [settings.suite, str(out), mirror]
    return command


def uv_download_command(uv: str, platform: str, target: Path, index_url: str | None) -> list[str]:
    """Install the uv release raybuild runs, as ``platform``'s wheel, into ``target`` (binary: bin/uv)."""
    machine = platforms.get(platform).machine
    command = [
        uv,
        "pip",
        "install",
        "--quiet",
        "--no-deps",
        "--only-binary",
        ":all:",
        "--target",
        str(target),
    ]
    command += ["--python-platform", f"{machine}-manylinux_2_28", f"uv=={uv_version()}"]
    return command + (["--index-url", index_url] if index_url else [])


def ensure_uv_image(
    engine: Engine, progress: Progress, platform: str = platforms.DEFAULT, index_url: str | None = None
) -> str:
    """A one-file image holding the uv binary raybuild itself uses, for build stages to copy from.

    Another platform's gets the same uv release's wheel for that platform from the package index.
    """
    ref = uv_image(platform)
    if engine.image_exists(ref):
        return ref
    from raybuild.lock.resolve import uv_binary

    with tempfile.TemporaryDirectory(prefix="raybuild-uv-") as tmp:
        tarball = Path(tmp) / "uv.tar"
        binary = Path(uv_binary())
        if platform != platforms.DEFAULT:
            progress(f"downloading uv {uv_version()} for {platform}")
            engine.runner.run(
                uv_download_command(str(binary), platform, Path(tmp) / "wheel", index_url),
                what=f"download of uv for {platform}",
            )
            binary = Path(tmp) / "wheel" / "bin" / "uv"
        progress(f"importing {ref} from {binary}")
        with tarfile.open(tarball, "w") as tar:
            tar.add(binary, arcname="uv")
        _import(engine, tarball, ref, platform, {ROLE_LABEL: "uv"})
    return ref


def _import(engine: Engine, tarball: Path, ref: str, platform: str, labels: dict[str, str]) -> None:
    if platform == platforms.DEFAULT:
        engine.import_tarball(tarball, ref, changes=[f"LABEL {k}={v}" for k, v in labels.items()])
        return
    archive = tarball.with_name(tarball.name + ".image.tar")
    write_archive(tarball, archive, ref, platforms.get(platform), labels)
    engine.load(archive, what=f"docker load {ref}")


def ensure_rootfs(engine: Engine, root: Rootfs, progress: Progress, config: LoadedConfig) -> None:
    """Bootstrap the root filesystem unless it exists, reproducibly (SOURCE_DATE_EPOCH, see `epoch`)."""
    if not root.bootstrapped or engine.image_exists(root.ref):
        return
    if which("mmdebstrap") is None:
        raise RaybuildError(
            f"cannot bootstrap {root.ref}: mmdebstrap is not installed",
            hint='run scripts/setup (apt-get install mmdebstrap), or set [base.cpu] source = "image"',
        )
    if root.platform != platforms.DEFAULT:
        problem = platforms.emulation_problem(root.platform)
        if problem is not None:
            raise RaybuildError(f"cannot bootstrap {root.ref}: {problem}", hint=platforms.EMULATION_HINT)
    source_date = epoch.rootfs_epoch(config, root.settings)
    progress(f"bootstrapping {root.ref} from Debian {root.settings.suite} with mmdebstrap")
    with tempfile.TemporaryDirectory(prefix="raybuild-rootfs-") as tmp:
        tarball = Path(tmp) / "rootfs.tar"
        engine.runner.run(
            mmdebstrap_command(root, tarball),
            env={"SOURCE_DATE_EPOCH": str(source_date)},
            what=f"mmdebstrap {root.settings.suite}",
            on_line=lambda line: progress(f"  {line}") if line.startswith("I: ") else None,
        )
        labels = {ROLE_LABEL: "rootfs", epoch.EPOCH_LABEL: str(source_date)}
        _import(engine, tarball, root.ref, root.platform, labels)


def base_epoch(config: LoadedConfig, engine: Engine, spec: BaseSpec) -> int:
    """The epoch a base image's RUN steps clamp to: its bootstrapped rootfs's, so that both agree."""
    if config.project.source_date_epoch is not None:
        return config.project.source_date_epoch
    if not spec.rootfs or spec.install_packages:  # a registry image: no rootfs of raybuild's to agree with
        return epoch.FALLBACK_EPOCH
    labels = engine.inspect(spec.rootfs).get("Config", {}).get("Labels") or {}
    value = str(labels.get(epoch.EPOCH_LABEL, ""))
    return int(value) if value.isdigit() else epoch.FALLBACK_EPOCH


def _build_image(engine: Engine, config: LoadedConfig, spec: BaseSpec, ref: str, progress: Progress) -> None:
    if engine.image_exists(ref):
        return
    progress(f"building {ref}")
    with tempfile.TemporaryDirectory(prefix="raybuild-base-") as tmp:
        context = Path(tmp)
        dockerfile = context / "Dockerfile"
        dockerfile.write_text(render_base(spec, template_dir(config.root)))
        image_id = engine.build(
            context,
            dockerfile,
            iidfile=context / "iid",
            build_args={"SOURCE_DATE_EPOCH": str(base_epoch(config, engine, spec))},
            what=f"build of {ref}",
            platform=None if spec.platform == platforms.DEFAULT else spec.platform,
            on_line=lambda line: progress(f"  {line}") if line.startswith("#") else None,
        )
    engine.tag(image_id, ref)


def ensure_bases(
    config: LoadedConfig,
    engine: Engine,
    devices: tuple[str, ...] = ("cpu", "gpu"),
    progress: Progress = silent,
    platform: str = platforms.DEFAULT,
) -> dict[str, str]:
    """Make (only) the missing base images of ``platform``; returns {"builder": ref, "cpu": ref, ...}."""
    engine.ping()
    cpu_settings = config.config.base.cpu
    refs = {"builder": builder_ref(config, platform)}
    ensure_uv_image(engine, progress, platform, config.project.index_url)
    ensure_rootfs(engine, rootfs(cpu_settings, "builder", platform), progress, config)
    _build_image(engine, config, builder_spec(config, platform), refs["builder"], progress)
    wanted = ("cpu", *devices) if "gpu" in devices else devices
    for device in dict.fromkeys(wanted):
        if device == "cpu":
            ensure_rootfs(engine, rootfs(cpu_settings, "runtime", platform), progress, config)
        refs[device] = base_ref(config, device, platform)
        _build_image(engine, config, base_spec(config, device, platform), refs[device], progress)
    return refs
