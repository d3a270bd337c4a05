"""raybuild publish over a fake engine and the fake registry: skipping, retries, digests, the record, secrets.

Nothing here opens a socket; the real registry client is tested in tests/unit/test_registry.py.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import pytest

from raybuild import platforms
from raybuild.cli import publish as publish_cli
from raybuild.config import LoadedConfig, load_config
from raybuild.engine import Result
from raybuild.errors import DockerRetry, EngineError, PublishError, UsageError
from raybuild.images import image_references
from raybuild.interrupts import Interrupted
from raybuild.progress import Progress
from raybuild.records import BuiltImage, PublishedImage, PublishRecord, save_build_record
from raybuild.reference import ImageRef
from raybuild.registry import (
    OCI_MANIFEST,
    Manifest,
    RegistryUnreachable,
    RegistryUnverifiable,
    parse_manifest,
)
from raybuild.registry_retry import Backoff
from raybuild.ship.publish import Publisher
from raybuild.ship.push import PushStage, push_digest
from raybuild.ship.push_failures import classify_push_failure, redact, secret_values
from raybuild.state import HEAD_KEY, publish_record_path
from raybuild.tags import published_tag
from tests.conftest import other_app
from tests.unit.fakes import FakeRegistry

if TYPE_CHECKING:  # only for annotations: "conftest" is ambiguous when unit and integration run together
    from tests.conftest import MainResult, TmpProject

HEAD_ID = "sha256:" + "a" * 64
DEMO_ID = "sha256:" + "b" * 64
OTHER_ID = "sha256:" + "c" * 64
HEAD_REF = "127.0.0.1:5000/demo/ray-head:ray2.60.0-py3.11-111111111111"
DEMO_REF = "127.0.0.1:5000/demo/demo:ray2.60.0-py3.11-cpu-222222222222"
OTHER_REF = "127.0.0.1:5000/demo/other:ray2.60.0-py3.11-cpu-333333333333"
STAGING = "registry.example.com:5000/staging"
BASE, RAY, CODE = ("sha256:" + c * 64 for c in "def")

OTHER_APP = "\n" + other_app()


def stored(registry: FakeRegistry, ref: str) -> Manifest:
    repository, tag = ImageRef.parse(ref).path, ImageRef.parse(ref).tag_or_latest
    return registry.manifests[(repository, tag)]


def store(registry: FakeRegistry, ref: str, image_id: str, layers: tuple[int, ...] = (1000, 2000)) -> str:
    repository, tag = ImageRef.parse(ref).path, ImageRef.parse(ref).tag_or_latest
    return registry.store(repository, tag, image_id, layers).digest


@dataclass
class FakeEngine:
    """Local images by ref. A push takes the next scripted outcome, or else succeeds into ``registry``."""

    registry: FakeRegistry
    images: dict[str, dict[str, Any]] = field(default_factory=dict)
    script: list[EngineError | str | Callable[..., Result]] = field(default_factory=list)
    tags: list[tuple[str, str]] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    pushed: list[str] = field(default_factory=list)
    deadlines: list[float | None] = field(default_factory=list)
    print_digest: bool = True
    daemon_up: bool = True
    copied: list[tuple[str, str, str, int | None, bool]] = field(default_factory=list)
    zstd_layers: bool = True  # False: the copy left gzip layers, as skopeo does when it reuses a blob

    def copy_to_registry(
        self,
        ref: str,
        target: str,
        *,
        compression: str,
        level: int | None,
        plain_http: bool,
        on_line: Progress | None = None,
        timeout: float | None = None,
    ) -> str:
        """skopeo copy from the daemon: an OCI manifest whose config is rewritten (so its digest is not the
        image ID) but lists the image's diff IDs."""
        self.pushed.append(target)
        self.deadlines.append(timeout)
        self.copied.append((ref, target, compression, level, plain_http))
        outcome = self.script.pop(0) if self.script else None
        if isinstance(outcome, EngineError):
            raise outcome
        layers = self.images[ref]["RootFS"]["Layers"]
        return store_oci(self.registry, target, layers, zstd=self.zstd_layers)

    def ping(self) -> None:
        if not self.daemon_up:
            raise EngineError("the Docker daemon is not reachable", hint="start it")

    def inspect(self, ref: str) -> dict[str, Any]:
        if ref not in self.images:
            raise EngineError(f"docker image inspect {ref} failed (exit 1)")
        return self.images[ref]

    def image_exists(self, ref: str) -> bool:
        return ref in self.images

    def tag(self, source: str, target: str) -> None:
        self.tags.append((source, target))
        self.images[target] = self.images[source]

    def remove_image(self, ref: str) -> None:
        self.removed.append(ref)
        self.images.pop(ref, None)

    def push(self, ref: str, on_line: Progress | None = None, timeout: float | None = None) -> Result:
        self.pushed.append(ref)
        self.deadlines.append(timeout)
        outcome = self.script.pop(0) if self.script else None
        if callable(outcome):
            return outcome(ref, on_line, timeout)
        if isinstance(outcome, EngineError):
            for line in outcome.output_tail.splitlines():
                on_line and on_line(line)
            raise outcome
        digest = store(self.registry, ref, self.images[ref]["Id"])
        self.images[ref].setdefault("RepoDigests", []).append(f"{ref.rsplit(':', 1)[0]}@{digest}")
        lines = [
            f"The push refers to repository [{ref.rsplit(':', 1)[0]}]",
            "0123456789ab: Preparing",
            "0123456789ab: Waiting",
            "0123456789ab: Pushed",
            *(outcome or "").splitlines(),
        ]
        if self.print_digest:
            lines.append(f"{ref.rsplit(':', 1)[1]}: digest: {digest} size: 1234")
        for line in lines:
            on_line and on_line(line)
        return Result(["docker", "push", ref], 0, "\n".join(lines))


def store_oci(registry: FakeRegistry, ref: str, diff_ids: list[str], *, zstd: bool = True) -> str:
    """What `skopeo copy --format oci` leaves: a config listing ``diff_ids``, zstd (or gzip) layers."""
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    kind = "zstd" if zstd else "gzip"
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
                       "size": len(config)},
            "layers": [
                {"mediaType": f"application/vnd.oci.image.layer.v1.tar+{kind}", "size": 700,
                 "digest": "sha256:" + hashlib.sha256(f"{kind}{layer}".encode()).hexdigest()}
                for layer in diff_ids
            ],
        }
    ).encode()  # fmt: skip
    manifest = parse_manifest(body)
    repository, tag = ImageRef.parse(ref).path, ImageRef.parse(ref).tag_or_latest
    registry.manifests[(repository, tag)] = registry.manifests[(repository, manifest.digest)] = manifest
    registry.blobs[config_digest] = config
    return manifest.digest


def push_failure(*lines: str) -> EngineError:
    return EngineError("docker push failed (exit 1)", returncode=1, output_tail="\n".join(lines))


@pytest.fixture
def project(tmp_project: TmpProject) -> LoadedConfig:
    tmp_project.add_app("other")
    tmp_project.append_config(OTHER_APP)
    config = tmp_project.load()
    save_build_record(
        config,
        [
            BuiltImage(HEAD_KEY, HEAD_REF, HEAD_ID, "cpu", False),
            BuiltImage("demo", DEMO_REF, DEMO_ID, "cpu", False),
        ],
    )
    return config


@pytest.fixture
def registry() -> FakeRegistry:
    return FakeRegistry()


@pytest.fixture
def engine(registry: FakeRegistry) -> FakeEngine:
    images = {
        HEAD_REF: {"Id": HEAD_ID, "Size": 400_000_000, "RootFS": {"Layers": [BASE, RAY]}},
        DEMO_REF: {"Id": DEMO_ID, "Size": 450_000_000, "RootFS": {"Layers": [BASE, RAY, CODE]}},
        OTHER_REF: {"Id": OTHER_ID, "Size": 1, "RootFS": {"Layers": [BASE]}},
    }
    return FakeEngine(registry, images)


@dataclass
class Run:
    progress: list[str] = field(default_factory=list)
    sleeps: list[float] = field(default_factory=list)


@pytest.fixture
def run() -> Run:
    return Run()


@pytest.fixture
def publisher(project: LoadedConfig, engine: FakeEngine, registry: FakeRegistry, run: Run) -> Publisher:
    return Publisher(
        project,
        engine,
        connect=registry.connect,
        progress=run.progress.append,
        sleep=run.sleeps.append,
        secrets=(),
    )


# -- parsing -------------------------------------------------------------------------------------------------


def test_push_digest_is_the_last_digest_line() -> None:
    digest = "sha256:" + "d" * 64
    output = f"The push refers to repository [x/y]\nabc: Pushed\nlatest: digest: {digest} size: 529\n"
    assert push_digest(output) == digest
    assert push_digest(f"v1: digest: sha256:{'e' * 64} size: 1\n" + output) == digest
    assert push_digest("abc: Pushed\n") is None
    assert push_digest("digest: sha256:short size: 1") is None


@pytest.mark.parametrize(
    ("output", "down"),
    [
        ('Get "http://127.0.0.1:5999/v2/": dial tcp 127.0.0.1:5999: connect: connection refused', True),
        ('Get "https://nowhere.invalid/v2/": dial tcp: lookup nowhere.invalid: no such host', True),
        ("write tcp 127.0.0.1:40000->127.0.0.1:5000: write: connection reset by peer", False),
        ("net/http: TLS handshake timeout", False),
        ("dial tcp 10.0.0.1:443: i/o timeout", False),
        ("received unexpected HTTP status: 502 Bad Gateway", False),
        ("received unexpected HTTP status: 503 Service Unavailable", False),
    ],
)
def test_transient_and_down_push_failures_are_retryable(output: str, down: bool) -> None:
    failure = classify_push_failure(output)
    assert failure is not None
    assert failure.down is down


@pytest.mark.parametrize(
    "output",
    [
        "denied: requested access to the resource is denied",
        "unauthorized: authentication required",
        "An image does not exist locally with the tag: x/y",
        "http: server gave HTTP response to HTTPS client",
    ],
)
def test_permanent_push_failures_are_not_retried(output: str) -> None:
    assert classify_push_failure(output) is None


# -- skip, push, record --------------------------------------------------------------------------------------


def test_publish_pushes_head_and_apps_and_records_digests(
    publisher: Publisher, project: LoadedConfig, engine: FakeEngine, registry: FakeRegistry, run: Run
) -> None:
    results = publisher.publish()
    assert [(r.key, r.status) for r in results] == [(HEAD_KEY, "pushed"), ("demo", "pushed")]
    assert engine.pushed == [HEAD_REF, DEMO_REF]
    assert engine.tags == []  # the default registry: the local tags are the targets
    assert "not built yet, not published: other" in run.progress
    assert "  0123456789ab: Pushed" in run.progress
    assert not any("Preparing" in line or "Waiting" in line for line in run.progress)
    record = PublishRecord.load(publish_record_path(project))
    assert record is not None
    demo = record.images["demo"]
    assert demo == results[1].image
    assert str(demo.reference) == DEMO_REF
    assert demo.digest == stored(registry, DEMO_REF).digest
    assert set(registry.connected) == {"127.0.0.1:5000"}
    assert (demo.size, demo.compressed_size) == (450_000_000, 3000)
    assert str(record.images[HEAD_KEY].reference) == HEAD_REF


def test_another_registry_retags_and_names_the_head_ray_head(
    publisher: Publisher, engine: FakeEngine, registry: FakeRegistry
) -> None:
    publisher.registry = STAGING + "/"
    results = publisher.publish(("demo",))
    head_target = f"{STAGING}/ray-head:ray2.60.0-py3.11-111111111111"
    demo_target = f"{STAGING}/demo:ray2.60.0-py3.11-cpu-222222222222"
    assert engine.tags == [(HEAD_REF, head_target), (DEMO_REF, demo_target)]
    assert engine.pushed == [head_target, demo_target]
    assert [str(r.image.reference) for r in results] == [head_target, demo_target]
    assert results[1].image.pinned.startswith(demo_target + "@sha256:")
    assert set(registry.connected) == {"registry.example.com:5000"}


def test_images_the_registry_has_are_skipped(
    publisher: Publisher, project: LoadedConfig, engine: FakeEngine, registry: FakeRegistry
) -> None:
    head_digest = store(registry, HEAD_REF, HEAD_ID)
    demo_digest = store(registry, DEMO_REF, DEMO_ID, (5, 6))
    results = publisher.publish()
    assert [r.status for r in results] == ["skipped", "skipped"]
    assert engine.pushed == []
    assert engine.tags == []
    assert [r.image.digest for r in results] == [head_digest, demo_digest]
    assert results[1].image.compressed_size == 11
    record = PublishRecord.load(publish_record_path(project))
    assert record is not None and record.images["demo"].digest == demo_digest


def test_a_tag_holding_another_image_is_never_moved_and_nothing_is_pushed(
    publisher: Publisher, engine: FakeEngine, registry: FakeRegistry, project: LoadedConfig
) -> None:
    moved = store(registry, DEMO_REF, OTHER_ID)  # same tag, different bytes
    with pytest.raises(PublishError) as raised:
        publisher.publish()
    assert str(raised.value) == (
        f"refusing to move a content-addressed tag: {DEMO_REF} is {moved} (image {OTHER_ID}) in the "
        f"registry, but image {DEMO_ID} here"
    )
    assert "raybuild publish --force" in (raised.value.hint or "")
    # Refused before any push, the head's included: the registry and the record are as they were.
    assert engine.pushed == []
    assert stored(registry, DEMO_REF).config_digest == OTHER_ID
    assert not publish_record_path(project).exists()


def test_force_overwrites_a_tag_holding_another_image_with_a_warning(
    project: LoadedConfig, engine: FakeEngine, registry: FakeRegistry, run: Run
) -> None:
    moved = store(registry, DEMO_REF, OTHER_ID)
    store(registry, HEAD_REF, HEAD_ID)
    publisher = Publisher(project, engine, connect=registry.connect, progress=run.progress.append,
                          sleep=run.sleeps.append, secrets=(), force=True)  # fmt: skip
    results = publisher.publish()
    assert [r.status for r in results] == ["skipped", "pushed"]
    assert engine.pushed == [DEMO_REF]
    assert stored(registry, DEMO_REF).config_digest == DEMO_ID
    warning = f"warning: --force: overwriting {DEMO_REF} is {moved} (image {OTHER_ID}) in the registry"
    assert any(line.startswith(warning) for line in run.progress)


def test_a_publish_that_pushes_nothing_leaves_the_record_untouched(
    publisher: Publisher, engine: FakeEngine, registry: FakeRegistry, project: LoadedConfig
) -> None:
    publisher.publish()
    path = publish_record_path(project)
    # Writes are atomic (a new file renamed over the old one), so any write shows as a new inode.
    before, written, inode = path.read_bytes(), path.stat().st_mtime_ns, path.stat().st_ino
    results = publisher.publish()
    assert [r.status for r in results] == ["skipped", "skipped"]
    assert path.read_bytes() == before
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == (inode, written)


def test_publishing_one_app_keeps_the_others_in_the_record(
    publisher: Publisher, project: LoadedConfig
) -> None:
    kept = PublishedImage(OTHER_REF, "sha256:" + "f" * 64, 1, 1)
    stale_demo = PublishedImage(DEMO_REF, "sha256:" + "9" * 64, 1, 1)
    PublishRecord({"other": kept, "demo": stale_demo}).save(publish_record_path(project))
    publisher.publish(("demo",))
    record = PublishRecord.load(publish_record_path(project))
    assert record is not None
    assert sorted(record.images) == [HEAD_KEY, "demo", "other"]
    assert record.images["other"] == kept
    assert record.images["demo"].digest != stale_demo.digest


def test_digest_falls_back_to_repo_digests(
    publisher: Publisher, engine: FakeEngine, registry: FakeRegistry
) -> None:
    engine.print_digest = False
    results = publisher.publish()
    assert results[1].image.digest == stored(registry, DEMO_REF).digest


def test_registry_that_hides_manifests_still_gets_a_push(
    publisher: Publisher, registry: FakeRegistry, run: Run
) -> None:
    registry.failures = [RegistryUnverifiable("HTTP 401 Unauthorized")] * 4
    results = publisher.publish()
    assert [r.status for r in results] == ["pushed", "pushed"]
    assert results[0].image.compressed_size == 0  # its manifest could not be read
    assert any("anonymously (HTTP 401 Unauthorized)" in line for line in run.progress)


# -- retries and failures ------------------------------------------------------------------------------------


def test_transient_push_errors_are_retried_with_backoff(
    publisher: Publisher, engine: FakeEngine, run: Run
) -> None:
    engine.script = [
        push_failure("write: connection reset by peer"),
        push_failure("received unexpected HTTP status: 503 Service Unavailable"),
    ]
    results = publisher.publish()
    assert [r.status for r in results] == ["pushed", "pushed"]
    assert engine.pushed == [HEAD_REF, HEAD_REF, HEAD_REF, DEMO_REF]
    assert run.sleeps == [1.0, 2.0]
    assert any("connection reset; attempt 2/4 in 1s" in line for line in run.progress)


def test_transient_registry_check_errors_are_retried(
    publisher: Publisher, registry: FakeRegistry, run: Run
) -> None:
    registry.failures = [RegistryUnreachable("i/o timeout", down=False)]
    assert [r.status for r in publisher.publish()] == ["pushed", "pushed"]
    assert run.sleeps == [1.0]


def _record_bytes(project: LoadedConfig) -> bytes:
    other = PublishedImage(OTHER_REF, "sha256:" + "f" * 64, 1, 1)
    PublishRecord({"other": other}).save(publish_record_path(project))
    return publish_record_path(project).read_bytes()


def test_registry_down_fails_clearly_and_leaves_the_record(
    publisher: Publisher, project: LoadedConfig, engine: FakeEngine, registry: FakeRegistry, run: Run
) -> None:
    before = _record_bytes(project)
    registry.failures = [RegistryUnreachable("connection refused", down=True) for _ in range(10)]
    with pytest.raises(PublishError) as failed:
        publisher.publish()
    assert str(failed.value) == (
        "registry 127.0.0.1:5000 is not reachable (connection refused, 4 attempts); nothing was recorded"
    )
    assert failed.value.hint is not None and "curl http://127.0.0.1:5000/v2/" in failed.value.hint
    assert run.sleeps == [1.0, 2.0, 4.0]
    assert engine.pushed == []
    assert publish_record_path(project).read_bytes() == before


def test_registry_going_down_during_pushes_leaves_the_record(
    publisher: Publisher, project: LoadedConfig, engine: FakeEngine, run: Run
) -> None:
    before = _record_bytes(project)
    refused = 'Get "http://127.0.0.1:5000/v2/": dial tcp 127.0.0.1:5000: connect: connection refused'
    engine.script = [
        "",
        *(push_failure(refused) for _ in range(4)),
    ]  # the head goes through, the app does not
    with pytest.raises(PublishError, match="not reachable"):
        publisher.publish()
    assert engine.pushed == [HEAD_REF] + [DEMO_REF] * 4
    assert run.sleeps == [1.0, 2.0, 4.0]
    assert publish_record_path(project).read_bytes() == before
    assert not list(publish_record_path(project).parent.glob("*.tmp"))


def test_persistent_server_errors_say_the_registry_kept_failing(
    publisher: Publisher, engine: FakeEngine
) -> None:
    engine.script = [push_failure("received unexpected HTTP status: 500 Internal Server Error")] * 4
    with pytest.raises(PublishError, match=r"kept failing \(unexpected http status: 500"):
        publisher.publish()


def test_denied_is_not_retried_and_points_at_docker_login(
    publisher: Publisher, engine: FakeEngine, project: LoadedConfig, run: Run
) -> None:
    before = _record_bytes(project)
    engine.script = [
        push_failure(
            "The push refers to repository [x]", "denied: requested access to the resource is denied"
        )
    ]
    with pytest.raises(PublishError) as failed:
        publisher.publish()
    assert (
        str(failed.value)
        == f"docker push {HEAD_REF} failed: denied: requested access to the resource is denied"
    )
    assert failed.value.hint is not None and "docker login" in failed.value.hint
    assert run.sleeps == []
    assert publish_record_path(project).read_bytes() == before


def test_a_daemon_failure_is_not_blamed_on_the_registry(publisher: Publisher, engine: FakeEngine) -> None:
    engine.script = [
        EngineError(
            "docker push failed",
            returncode=1,
            hint="the Docker daemon is not running",
            output_tail="dial unix /var/run/docker.sock: connect: connection refused",
        )
    ]
    with pytest.raises(PublishError) as failed:
        publisher.publish()
    assert failed.value.hint == "the Docker daemon is not running"


def test_credentials_and_env_secrets_are_never_shown(
    publisher: Publisher, engine: FakeEngine, run: Run
) -> None:
    publisher.secrets = secret_values(
        {"REGISTRY_TOKEN": "tok-0123456789", "HOME": "/root", "DB_PASSWORD": "x"}
    )
    assert publisher.secrets == ("tok-0123456789",)
    engine.script = [
        "Authorization: Bearer abc.def.ghi\nusing password hunter2\nlogin as tok-0123456789 ok",
        push_failure(
            "Authorization: Basic dXNlcjpodW50ZXIy", "denied: token tok-0123456789 has no push rights"
        ),
    ]
    with pytest.raises(PublishError) as failed:
        publisher.publish()
    shown = "\n".join([*run.progress, str(failed.value), failed.value.hint or ""])
    for secret in ("abc.def.ghi", "hunter2", "tok-0123456789", "dXNlcjpodW50ZXIy", "Authorization"):
        assert secret not in shown
    assert "  login as *** ok" in run.progress
    assert str(failed.value).endswith("denied: token *** has no push rights")


def test_an_error_line_that_mentions_a_password_is_withheld(publisher: Publisher, engine: FakeEngine) -> None:
    engine.script = [
        push_failure("The push refers to repository [x]", "unauthorized: incorrect username or password")
    ]
    with pytest.raises(PublishError) as failed:
        publisher.publish()
    assert str(failed.value) == f"docker push {HEAD_REF} failed: exit 1 (output withheld)"
    assert failed.value.hint is not None and "docker login" in failed.value.hint


def test_redact_drops_lines_and_masks_values() -> None:
    text = "ok line\nAuthorization: Bearer x\nPassword: y\nuses s3cr3t!!\n"
    assert redact(text, ("s3cr3t!!",)) == "ok line\nuses ***"


# -- what gets published -------------------------------------------------------------------------------------


def test_unknown_app_is_a_usage_error(publisher: Publisher) -> None:
    with pytest.raises(UsageError, match="unknown app 'nope'"):
        publisher.publish(("nope",))


def test_a_named_app_that_was_not_built_fails_before_pushing(
    publisher: Publisher, engine: FakeEngine
) -> None:
    with pytest.raises(PublishError, match="not built yet: other") as failed:
        publisher.publish(("demo", "other"))
    assert failed.value.hint == "run `raybuild build other`"
    assert engine.pushed == []


@pytest.mark.parametrize(
    "bad", ["http://127.0.0.1:5000/x", "127.0.0.1:5000", "Registry.example.com/NS", "a/b@c"]
)
def test_registry_must_be_host_and_namespace(publisher: Publisher, bad: str) -> None:
    publisher.registry = bad
    with pytest.raises(UsageError, match="is not HOST"):
        publisher.publish()


def test_nothing_built_is_an_error(
    tmp_project: TmpProject, engine: FakeEngine, registry: FakeRegistry
) -> None:
    with pytest.raises(PublishError, match="nothing to publish"):
        Publisher(tmp_project.load(), engine, connect=registry.connect).publish()


def test_a_local_image_that_changed_since_the_build_is_refused(
    publisher: Publisher, engine: FakeEngine
) -> None:
    engine.images[DEMO_REF] = {"Id": OTHER_ID, "Size": 1}
    with pytest.raises(PublishError, match="no longer the image that was built"):
        publisher.publish(("demo",))


# -- the command ---------------------------------------------------------------------------------------------


@pytest.fixture
def fake_cli(
    monkeypatch: pytest.MonkeyPatch,
    engine: FakeEngine,
    registry: FakeRegistry,
    project: LoadedConfig,
    run: Run,
) -> Callable[..., MainResult]:
    monkeypatch.setattr(publish_cli, "engine_for", lambda state: engine)
    monkeypatch.setattr(
        publish_cli, "Publisher", partial(Publisher, connect=registry.connect, sleep=run.sleeps.append)
    )
    # SBOMs need an engine that runs containers: tests/unit/ship/test_attach.py covers them.
    monkeypatch.setattr(publish_cli, "SbomAttacher", lambda *args, **kwargs: None)
    return lambda run_main, *args: run_main("--config", str(project.path), "publish", *args)


def test_cli_prints_a_table(fake_cli: Callable[..., MainResult], run_main: Callable[..., MainResult]) -> None:
    result = fake_cli(run_main)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["APP", "STATUS", "IMAGE", "COMPRESSED", "SBOM"]
    assert lines[2].split()[:2] == ["demo", "pushed"]
    assert lines[2].split()[2].startswith(DEMO_REF + "@sha256:")
    assert lines[2].split()[3:] == ["0.0", "MB", "-"]
    assert "pushing demo" in result.stderr
    assert "0123456789ab: Pushed" in result.stderr


def test_cli_json(fake_cli: Callable[..., MainResult], run_main: Callable[..., MainResult]) -> None:
    result = fake_cli(run_main, "demo", "--registry", STAGING, "--json")
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [(r["app"], r["status"]) for r in rows] == [(HEAD_KEY, "pushed"), ("demo", "pushed")]
    assert rows[1]["reference"] == f"{STAGING}/demo:ray2.60.0-py3.11-cpu-222222222222"
    assert rows[1]["pinned"] == f"{rows[1]['reference']}@{rows[1]['digest']}"
    assert (rows[1]["size"], rows[1]["compressed_size"]) == (450_000_000, 3000)


def test_cli_registry_down_is_one_line_and_exit_1(
    fake_cli: Callable[..., MainResult],
    run_main: Callable[..., MainResult],
    registry: FakeRegistry,
    project: LoadedConfig,
) -> None:
    registry.failures = [RegistryUnreachable("connection refused", down=True) for _ in range(4)]
    result = fake_cli(run_main)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "error: registry 127.0.0.1:5000 is not reachable (connection refused" in result.stderr
    assert "Traceback" not in result.stderr
    assert not publish_record_path(project).exists()


def test_cli_daemon_down_is_named_before_any_image_is_looked_at(
    fake_cli: Callable[..., MainResult],
    run_main: Callable[..., MainResult],
    engine: FakeEngine,
    project: LoadedConfig,
) -> None:
    engine.daemon_up = False
    result = fake_cli(run_main)
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == "error: the Docker daemon is not reachable"
    assert "is gone" not in result.stderr  # not blamed on the image
    assert not publish_record_path(project).exists()


def test_publish_has_help() -> None:
    assert publish_cli.publish.help and "digest" in publish_cli.publish.help
    assert Backoff().attempts == 4 and [Backoff().delay(i) for i in range(3)] == [1.0, 2.0, 4.0]


# -- bounded registry work: deadlines, raybuild's own retries, tags removed on failure ---------------------


def _stalls(*lines: str) -> Callable[..., Result]:
    """A push that prints ``lines`` and then hangs until the engine kills it at its timeout."""

    def push(ref: str, on_line: Progress | None, timeout: float | None) -> Result:
        for line in lines:
            on_line and on_line(line)
        raise EngineError(
            f"docker push {ref} timed out after {timeout:g}s", output_tail="\n".join(lines), timed_out=True
        )

    return push


@pytest.mark.parametrize(
    ("lines", "stage"),
    [
        ((), "before any layer upload started (checking the registry)"),
        (
            ("aaaaaaaaaaaa: Preparing", "bbbbbbbbbbbb: Preparing", "aaaaaaaaaaaa: Layer already exists",
             "bbbbbbbbbbbb: Pushing [=>    ] 1MB/90MB"),
            "uploading layer bbbbbbbbbbbb (1 of 2 layers done)",
        ),
        (("aaaaaaaaaaaa: Preparing", "aaaaaaaaaaaa: Pushed"), "uploading the manifest (1 of 1 layers done)"),
    ],
)  # fmt: skip
def test_a_stalled_push_fails_at_the_deadline_naming_the_registry_and_the_stage(
    publisher: Publisher, project: LoadedConfig, engine: FakeEngine, lines: tuple[str, ...], stage: str
) -> None:
    before = _record_bytes(project)
    publisher.deadline, publisher.clock = 120.0, lambda: 1000.0
    engine.script = [_stalls(*lines)]
    with pytest.raises(PublishError) as failed:
        publisher.publish()
    assert str(failed.value) == (
        f"registry 127.0.0.1:5000: push of {HEAD_REF} stalled {stage}; stopped at the 120s deadline, "
        "nothing was recorded"
    )
    assert failed.value.hint is not None and "[limits].registry_deadline_s" in failed.value.hint
    assert engine.deadlines == [120.0], "the push itself is bounded, and not retried past its deadline"
    assert publish_record_path(project).read_bytes() == before


def test_retries_stop_where_the_next_would_start_after_the_deadline(
    publisher: Publisher, engine: FakeEngine, run: Run
) -> None:
    now = [0.0]
    publisher.deadline, publisher.clock = 2.5, lambda: now[0]
    publisher.sleep = lambda seconds: now.__setitem__(0, now[0] + seconds)
    engine.script = [push_failure("received unexpected HTTP status: 500 Internal Server Error")] * 4
    with pytest.raises(PublishError, match=r"kept failing \(.*, 2 attempts\)"):
        publisher.publish()
    assert engine.pushed == [HEAD_REF, HEAD_REF], "a third attempt would start at 3 s, past 2.5 s"
    assert engine.deadlines == [2.5, 1.5], "each attempt gets what is left of the deadline"


def test_limits_come_from_the_config(
    tmp_project: TmpProject, engine: FakeEngine, registry: FakeRegistry
) -> None:
    tmp_project.append_config("[limits]\nregistry_attempts = 2\nregistry_deadline_s = 60\n")
    config = tmp_project.load()
    save_build_record(config, [BuiltImage(HEAD_KEY, HEAD_REF, HEAD_ID, "cpu", False)])
    sleeps: list[float] = []
    publisher = Publisher(config, engine, connect=registry.connect, sleep=sleeps.append, secrets=())
    assert (publisher.deadline, publisher.backoff) == (60.0, Backoff(attempts=2))
    engine.script = [push_failure("received unexpected HTTP status: 502 Bad Gateway")] * 3
    with pytest.raises(PublishError, match="2 attempts"):
        publisher.publish()
    assert sleeps == [1.0]


def test_a_failed_publish_removes_the_tags_it_made_and_only_those(
    publisher: Publisher, project: LoadedConfig, engine: FakeEngine
) -> None:
    before = _record_bytes(project)
    publisher.registry = STAGING
    head_target = f"{STAGING}/ray-head:ray2.60.0-py3.11-111111111111"
    demo_target = f"{STAGING}/demo:ray2.60.0-py3.11-cpu-222222222222"
    engine.images[head_target] = engine.images[HEAD_REF]  # tagged by an earlier publish: not ours to remove
    engine.script = ["", push_failure("denied: requested access to the resource is denied")]
    with pytest.raises(PublishError, match="denied"):
        publisher.publish()
    assert engine.removed == [demo_target]
    assert head_target in engine.images and demo_target not in engine.images
    assert publish_record_path(project).read_bytes() == before


def test_an_interrupted_publish_removes_its_tags_and_keeps_the_record(
    publisher: Publisher, project: LoadedConfig, engine: FakeEngine
) -> None:
    before = _record_bytes(project)
    publisher.registry = STAGING

    def interrupted(ref: str, on_line: Progress | None, timeout: float | None) -> Result:
        raise Interrupted(15)

    engine.script = [interrupted]
    with pytest.raises(Interrupted):
        publisher.publish()
    assert engine.removed == [f"{STAGING}/ray-head:ray2.60.0-py3.11-111111111111"]
    assert publish_record_path(project).read_bytes() == before
    assert not list(publish_record_path(project).parent.glob("*.tmp"))


def test_dockers_own_retry_becomes_one_of_raybuilds_attempts(
    publisher: Publisher, engine: FakeEngine, run: Run
) -> None:
    # What Engine.push raises when Docker announces a retry (see tests/unit/test_engine.py).
    docker_retry = DockerRetry(
        f"docker push {HEAD_REF}: a layer upload failed and Docker began to retry it",
        output_tail="aaaaaaaaaaaa: Preparing",
    )
    engine.script = [docker_retry, ""]
    publisher.publish(("demo",))
    assert engine.pushed[:2] == [HEAD_REF, HEAD_REF]
    assert run.sleeps == [1.0]
    said = "registry 127.0.0.1:5000: a layer upload failed and Docker began to retry it; attempt 2/4 in 1s"
    assert run.progress.count(said) == 1


def test_a_registry_that_keeps_failing_uploads_is_reported_after_raybuilds_attempts(
    publisher: Publisher, engine: FakeEngine, run: Run
) -> None:
    engine.script = [DockerRetry("docker push: a layer upload failed and Docker began to retry it")] * 4
    with pytest.raises(PublishError) as failed:
        publisher.publish()
    assert str(failed.value) == (
        "registry 127.0.0.1:5000 kept failing (a layer upload failed and Docker began to retry it, "
        "4 attempts); nothing was recorded"
    )
    assert run.sleeps == [1.0, 2.0, 4.0]


# -- several platforms ---------------------------------------------------------------------------------------

AMD64_REF = "127.0.0.1:5000/demo/demo:ray2.60.0-py3.11-cpu-222222222222"
ARM64_REF = "127.0.0.1:5000/demo/demo:ray2.60.0-py3.11-cpu-444444444444-arm64"
BOTH_REF = "127.0.0.1:5000/demo/demo:ray2.60.0-py3.11-cpu-555555555555"
ARM64_ID = "sha256:" + "e" * 64


@pytest.fixture
def multi(project: LoadedConfig, engine: FakeEngine) -> LoadedConfig:
    refs = (("linux/amd64", AMD64_REF), ("linux/arm64", ARM64_REF))
    save_build_record(project, [BuiltImage("demo", BOTH_REF, DEMO_ID, "cpu", False, (), False, refs)])
    arm64_layers = ["sha256:" + c * 64 for c in "789"]  # another platform: other binaries, other layers
    engine.images[ARM64_REF] = {"Id": ARM64_ID, "Size": 460_000_000, "RootFS": {"Layers": arm64_layers}}
    engine.images[BOTH_REF] = engine.images[AMD64_REF]  # locally, the multi-platform tag is this host's image
    return project


def test_a_multi_platform_image_is_each_platforms_image_then_one_index(
    multi: LoadedConfig, publisher: Publisher, engine: FakeEngine, registry: FakeRegistry
) -> None:
    results = publisher.publish(("demo",))
    assert engine.pushed == [HEAD_REF, AMD64_REF, ARM64_REF]  # never the local multi-platform tag itself
    (demo,) = [r for r in results if r.key == "demo"]
    index = json.loads(registry.bodies[("demo/demo", BOTH_REF.rsplit(":", 1)[1])])
    assert [(m["digest"], m["platform"]) for m in index["manifests"]] == [
        (stored(registry, AMD64_REF).digest, {"architecture": "amd64", "os": "linux"}),
        (stored(registry, ARM64_REF).digest, {"architecture": "arm64", "os": "linux"}),
    ]
    record = PublishRecord.load(publish_record_path(multi))
    assert record is not None
    # The record, and so render, names the index: the tag every platform shares, pinned by its digest.
    assert str(record.images["demo"].reference) == BOTH_REF
    assert record.images["demo"].digest == demo.image.digest
    assert (
        demo.image.digest
        == "sha256:" + hashlib.sha256(registry.bodies[("demo/demo", BOTH_REF.rsplit(":", 1)[1])]).hexdigest()
    )
    # Sizes are the default platform's image.
    assert demo.image.size == 450_000_000


def test_a_multi_platform_tag_holding_an_image_is_not_moved(
    multi: LoadedConfig, publisher: Publisher, engine: FakeEngine, registry: FakeRegistry
) -> None:
    store(registry, BOTH_REF, OTHER_ID)
    with pytest.raises(PublishError, match="not an image index"):
        publisher.publish(("demo",))
    assert engine.pushed == []


def test_only_this_machines_platform_gets_the_sbom_that_describes_it(
    multi: LoadedConfig, engine: FakeEngine, registry: FakeRegistry, run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(platforms, "host", lambda: platforms.get("linux/amd64"))
    attached: list[str] = []

    def attach(registry_: object, key: str, image: PublishedImage, manifest: Manifest) -> str:
        attached.append(str(image.reference))
        return "sha256:" + "f" * 64

    publisher = Publisher(
        multi, engine, connect=registry.connect, progress=run.progress.append, secrets=(), attach_sbom=attach
    )
    publisher.publish(("demo",))
    # `raybuild sbom` inventories the local image, which is amd64's here.
    assert [ref for ref in attached if "/demo:" in ref] == [AMD64_REF]
    assert any("no SBOM attached to " + ARM64_REF in line for line in run.progress)


# -- zstd layers ([publish].compression) ---------------------------------------------------------------------

ZSTD = '\n[publish]\ncompression = "zstd"\n'


@pytest.fixture
def zstd_publisher(project: LoadedConfig, engine: FakeEngine, registry: FakeRegistry, run: Run) -> Publisher:
    project.path.write_text(project.path.read_text() + ZSTD)
    config = load_config(project.path)
    return Publisher(
        config,
        engine,
        connect=registry.connect,
        progress=run.progress.append,
        sleep=run.sleeps.append,
        secrets=(),
    )


def test_zstd_is_copied_from_the_daemon_under_a_tag_of_its_own(
    zstd_publisher: Publisher, engine: FakeEngine, registry: FakeRegistry
) -> None:
    results = {r.key: r for r in zstd_publisher.publish()}
    assert engine.tags == []  # skopeo reads the daemon's image: no local tag to make or clean up
    head_tag = published_tag(zstd_publisher.config, ImageRef.parse(HEAD_REF).tag_or_latest)
    demo_tag = published_tag(zstd_publisher.config, ImageRef.parse(DEMO_REF).tag_or_latest)
    assert [(c[0], c[1], c[2], c[3], c[4]) for c in engine.copied] == [
        (HEAD_REF, f"127.0.0.1:5000/demo/ray-head:{head_tag}", "zstd", 19, True),
        (DEMO_REF, f"127.0.0.1:5000/demo/demo:{demo_tag}", "zstd", 19, True),
    ]
    assert demo_tag != ImageRef.parse(DEMO_REF).tag_or_latest  # the gzip tag is never moved
    record = PublishRecord.load(publish_record_path(zstd_publisher.config))
    assert record is not None
    pushed = stored(registry, str(results["demo"].image.reference))
    assert record.images["demo"].digest == pushed.digest
    assert set(pushed.layer_media_types) == {"application/vnd.oci.image.layer.v1.tar+zstd"}
    # The record's zstd tags are what the build made, not stale ones: render pins them.
    refs = image_references(zstd_publisher.config, record)
    assert refs["demo"].ref == record.images["demo"].pinned


def test_zstd_published_again_is_recognised_by_its_layers_and_skipped(
    zstd_publisher: Publisher, engine: FakeEngine
) -> None:
    zstd_publisher.publish()
    again = zstd_publisher.publish()
    assert {r.status for r in again} == {"skipped"}
    assert len(engine.copied) == 2


def test_a_zstd_push_that_left_gzip_layers_fails_naming_them(
    zstd_publisher: Publisher, engine: FakeEngine
) -> None:
    engine.zstd_layers = False
    with pytest.raises(PublishError, match=r"layer\(s\) not zstd: sha256:.*tar\+gzip") as raised:
        zstd_publisher.publish(("demo",))
    assert "--force" in (raised.value.hint or "")
    assert not publish_record_path(zstd_publisher.config).exists()


def test_a_zstd_tag_holding_other_layers_is_not_moved(
    zstd_publisher: Publisher, engine: FakeEngine, registry: FakeRegistry
) -> None:
    demo_tag = published_tag(zstd_publisher.config, ImageRef.parse(DEMO_REF).tag_or_latest)
    store_oci(registry, f"127.0.0.1:5000/demo/demo:{demo_tag}", [BASE, RAY, OTHER_ID])
    with pytest.raises(PublishError, match="refusing to move a content-addressed tag"):
        zstd_publisher.publish(("demo",))
    assert engine.copied == []


def test_a_zstd_push_is_retried_like_a_docker_push(
    zstd_publisher: Publisher, engine: FakeEngine, run: Run
) -> None:
    engine.script = [push_failure("dial tcp 127.0.0.1:5000: connect: connection refused")]
    zstd_publisher.publish(("demo",))
    assert len(engine.copied) == 3 and run.sleeps == [1.0]


def _service_unavailable(times: int) -> list[Exception]:
    return [RegistryUnreachable("HTTP 503 Service Unavailable", down=False) for _ in range(times)]


def test_a_zstd_config_blob_that_keeps_failing_is_one_line_after_the_retries(
    zstd_publisher: Publisher, engine: FakeEngine, registry: FakeRegistry, run: Run
) -> None:
    """A zstd image is recognised by its config's diff IDs: a 503 on that blob read was a traceback."""
    zstd_publisher.publish(("demo",))
    registry.blob_failures = _service_unavailable(10)
    with pytest.raises(PublishError) as raised:
        zstd_publisher.publish(("demo",))
    assert str(raised.value) == (
        "registry 127.0.0.1:5000 kept failing (HTTP 503 Service Unavailable, 4 attempts); "
        "nothing was recorded"
    )
    assert "\n" not in str(raised.value) and raised.value.hint
    assert run.sleeps == [1.0, 2.0, 4.0]  # the publisher's backoff, [limits].registry_attempts in all
    assert len(registry.blob_failures) == 6  # four reads, then it stopped
    assert len(engine.copied) == 2  # nothing was pushed again (the head and demo of the first publish)


def test_a_zstd_config_blob_that_fails_once_is_read_again_and_the_image_skipped(
    zstd_publisher: Publisher, registry: FakeRegistry, run: Run
) -> None:
    zstd_publisher.publish(("demo",))
    registry.blob_failures = _service_unavailable(1)
    assert {r.status for r in zstd_publisher.publish(("demo",))} == {"skipped"}
    assert run.sleeps == [1.0]
    retried = "registry 127.0.0.1:5000: HTTP 503 Service Unavailable; attempt 2/4 in 1s"
    assert retried in run.progress


def test_cli_a_zstd_config_blob_503_is_one_error_line_not_a_traceback(
    fake_cli: Callable[..., MainResult],
    run_main: Callable[..., MainResult],
    registry: FakeRegistry,
    project: LoadedConfig,
) -> None:
    project.path.write_text(project.path.read_text() + ZSTD)
    assert fake_cli(run_main).exit_code == 0
    registry.blob_failures = _service_unavailable(10)
    result = fake_cli(run_main)
    assert result.exit_code == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: registry 127.0.0.1:5000 kept failing (HTTP 503 Service Unavailable, 4 attempts); "
        "nothing was recorded"
    ]


def test_a_permanent_registry_error_on_the_config_blob_is_not_retried(
    zstd_publisher: Publisher, registry: FakeRegistry, run: Run, engine: FakeEngine
) -> None:
    """A 401 is permanent: asking again gets the same answer, so it is not retried."""
    zstd_publisher.publish(("demo",))
    registry.blob_failures = [RegistryUnverifiable("HTTP 401 Unauthorized")]
    with pytest.raises(PublishError, match="refusing to move a content-addressed tag"):
        zstd_publisher.publish(("demo",))
    assert run.sleeps == [] and registry.blob_failures == []


def test_a_stalled_skopeo_copy_names_the_blob_it_was_copying() -> None:
    stage = PushStage()
    for line in (
        "Getting image source signatures",
        f"Copying blob sha256:{'1' * 64}",
        f"Copying blob sha256:{'2' * 64}",
    ):
        stage.feed(line)
    assert str(stage) == f"uploading layer {'2' * 12} (1 of 2 layers done)"
    stage.feed("Writing manifest to image destination")
    assert str(stage) == "after the manifest was uploaded"


def test_a_multi_platform_zstd_image_is_each_platforms_zstd_image_then_an_index_under_a_zstd_tag(
    multi: LoadedConfig, engine: FakeEngine, registry: FakeRegistry, run: Run
) -> None:
    multi.path.write_text(multi.path.read_text() + ZSTD)
    config = load_config(multi.path)
    publisher = Publisher(config, engine, connect=registry.connect, progress=run.progress.append, secrets=())
    results = {r.key: r for r in publisher.publish(("demo",))}
    # Each platform's image is copied with zstd under its own rehashed tag; none moves a gzip tag.
    zstd = {ref: f"127.0.0.1:5000/demo/demo:{published_tag(config, ImageRef.parse(ref).tag_or_latest)}"
            for ref in (AMD64_REF, ARM64_REF)}  # fmt: skip
    assert [(c[0], c[1], c[2]) for c in engine.copied if "/demo:" in c[0]] == [
        (AMD64_REF, zstd[AMD64_REF], "zstd"),
        (ARM64_REF, zstd[ARM64_REF], "zstd"),
    ]
    index_tag = published_tag(config, ImageRef.parse(BOTH_REF).tag_or_latest)
    assert index_tag != ImageRef.parse(BOTH_REF).tag_or_latest
    index = json.loads(registry.bodies[("demo/demo", index_tag)])
    assert [m["digest"] for m in index["manifests"]] == [
        stored(registry, zstd[AMD64_REF]).digest,
        stored(registry, zstd[ARM64_REF]).digest,
    ]
    for ref in zstd.values():
        assert set(stored(registry, ref).layer_media_types) == {"application/vnd.oci.image.layer.v1.tar+zstd"}
    assert str(results["demo"].image.reference) == f"127.0.0.1:5000/demo/demo:{index_tag}"
