"""The containerd cold node for `raybuild measure`: a node's pull and head start as kubelet sees them.

Kubernetes nodes pull through containerd, not dockerd. Each run starts a containerd of its own (Debian's,
installed with docker.io) with its root, state and socket under a new temporary folder, so its content
store and snapshotter are empty: the pull (`ctr images pull`, in kubelet's ``k8s.io`` namespace) fetches
and unpacks every layer, in parallel as kubelet's does. The head is then started there with KubeRay's
command line and probed with KubeRay's exec probes (`ctr tasks exec`), like the dockerd cold node's.

What the container gets, as a pod would: an /etc/hosts with localhost (kubelet always mounts one; without
it `localhost` does not resolve and the probes never pass) and a 1 GiB /dev/shm (Ray's object store; the
dockerd node passes --shm-size=1g). It gets no network but loopback, like the dockerd node's
`--network none`. ctr's default RLIMIT_NOFILE is 1024, so `ulimit -n 65536` prints "cannot modify limit"
and goes on, as it does in Docker on this host.

`stop()` kills the head's task, then containerd, and removes the folder: measure calls it in a
``finally``, which Ctrl-C and SIGTERM unwind too.
"""

from __future__ import annotations

import shlex
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from raybuild import kuberay
from raybuild.config_apps import App
from raybuild.engine import Engine, Result, which
from raybuild.errors import EngineError, SmokeTestError
from raybuild.kuberay import required_cpus
from raybuild.loopback import wait_until
from raybuild.progress import Progress, silent
from raybuild.reference import ImageRef

NAMESPACE = "k8s.io"  # kubelet's containerd namespace
SHM_SIZE = "1g"
_HOSTS = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"


def containerd_config(folder: Path) -> str:
    """A containerd config whose every path is under ``folder``; CRI off (no kubelet talks to it)."""
    return (
        "version = 2\n"
        f'root = "{folder / "root"}"\n'
        f'state = "{folder / "state"}"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{folder / "containerd.sock"}"\n'
        f'[ttrpc]\n  address = "{folder / "containerd.sock.ttrpc"}"\n'
        '[debug]\n  address = ""\n'
        '[metrics]\n  address = ""\n'
    )


def parse_version(output: str) -> str:
    """``containerd 1.6.20~ds1`` from `containerd --version` (``containerd <module> <version> <rev>``)."""
    words = output.split()
    return f"containerd {words[2]}" if len(words) >= 3 and words[0] == "containerd" else "containerd"


@dataclass
class _Ctr:
    """`ctr` against one containerd; ``exec`` makes it a ``kuberay.Executes`` for the probes."""

    engine: Engine
    binary: str
    socket: Path

    def __call__(
        self, *args: str, check: bool = True, timeout: float | None = None, what: str | None = None
    ) -> Result:
        command = [self.binary, "-a", str(self.socket), "-n", NAMESPACE, *args]
        return self.engine.runner.run(command, check=check, timeout=timeout, what=what)

    def exec(
        self, container: str, command: list[str], check: bool = False, timeout: float | None = None
    ) -> Result:
        exec_id = f"probe-{uuid.uuid4().hex[:8]}"
        return self("tasks", "exec", "--exec-id", exec_id, container, *command, check=check, timeout=timeout)


@dataclass
class ContainerdNode:
    """A freshly started containerd with an empty content store: a node that has never pulled the image."""

    engine: Engine
    progress: Progress = field(default=silent)
    parent: Path | None = None  # where the temporary folder goes; None: the system's temporary folder
    _folder: Path | None = field(default=None, init=False, repr=False)
    _pid: str = field(default="", init=False, repr=False)
    _ctr: _Ctr | None = field(default=None, init=False, repr=False)
    version: str = field(default="containerd", init=False)

    @property
    def socket(self) -> Path:
        assert self._folder is not None, "start() first"
        return self._folder / "containerd.sock"

    @property
    def ctr(self) -> _Ctr:
        assert self._ctr is not None, "start() first"
        return self._ctr

    def running(self) -> bool:
        if self._folder is None or not self.socket.exists():
            return False
        return self.ctr("version", check=False, timeout=10).returncode == 0

    def start(self, timeout: float = 60.0) -> None:
        """Start a new containerd on an empty folder (the one before, if any, is stopped and removed)."""
        self.stop()
        containerd, ctr = which("containerd"), which("ctr")
        if containerd is None or ctr is None:
            raise EngineError(
                "containerd or ctr not found: the cold node pulls through containerd, as kubelet does",
                hint="install docker.io (scripts/setup), or pass --runtime docker or --no-pull",
            )
        said = self.engine.runner.run([containerd, "--version"], what="containerd --version").output
        self.version = parse_version(said)
        self._folder = Path(tempfile.mkdtemp(prefix="raybuild-containerd-", dir=self.parent))
        self._ctr = _Ctr(self.engine, ctr, self.socket)
        config = self._folder / "config.toml"
        config.write_text(containerd_config(self._folder), encoding="utf-8")
        (self._folder / "hosts").write_text(_HOSTS, encoding="utf-8")
        log = shlex.quote(str(self._folder / "containerd.log"))
        command = shlex.join([containerd, "--config", str(config)])
        self.progress(f"starting a cold containerd ({self.version}, {self._folder})")
        started = self.engine.runner.run(
            ["sh", "-c", f"setsid {command} >{log} 2>&1 </dev/null & echo $!"],
            what="start the cold node's containerd",
        )
        self._pid = started.output.strip().splitlines()[-1] if started.output.strip() else ""
        if not wait_until(self.running, timeout, interval=0.25):
            tail = _tail(self._folder / "containerd.log")
            self.stop()
            raise EngineError(
                f"the cold node's containerd did not come up within {timeout:.0f}s",
                output_tail=tail,
                hint="it must run as root; see its log above",
            )

    def clear(self) -> None:
        """An empty content store and snapshotter for the next pull: a new containerd on a new folder."""
        self.start()

    def pull(self, ref: str, deadline: float | None = None) -> float:
        """Seconds to fetch and unpack ``ref``, as kubelet's pull does; an error past ``deadline`` seconds."""
        args = ["images", "pull"]
        if ImageRef.parse(ref).is_loopback:
            args.append("--plain-http")  # as Docker allows for 127.0.0.0/8
        started = time.monotonic()
        self.ctr(*args, ref, timeout=deadline, what=f"ctr images pull {ref} on the cold node")
        return time.monotonic() - started

    @contextmanager
    def _running(self, name: str, ref: str, command: str, gpu: bool) -> Iterator[str]:
        assert self._folder is not None
        hosts = self._folder / "hosts"
        args = [
            "run",
            "-d",
            "--mount",
            f"type=bind,src={hosts},dst=/etc/hosts,options=rbind:ro",
            "--mount",
            f"type=tmpfs,src=tmpfs,dst=/dev/shm,options=nosuid:nodev:size={SHM_SIZE}",
            *(["--gpus", "0"] if gpu else []),
            ref,
            name,
            "/bin/bash",
            "-c",
            "--",
            command,
        ]
        try:
            self.ctr(*args, what=f"ctr run {name} ({ref}) on the cold node")
            yield name
        finally:
            self._remove(name)

    def _remove(self, name: str) -> None:
        self.ctr("tasks", "kill", "--signal", "SIGKILL", name, check=False, timeout=30)
        # `tasks rm` fails while the task is still stopping; --force would leave its shim to linger.
        wait_until(lambda: self.ctr("tasks", "rm", name, check=False, timeout=30).returncode == 0, 10)
        self.ctr("containers", "rm", name, check=False, timeout=30)

    def head(self, app: App, ref: str, *, gpu: bool = False, timeout: float = 180.0) -> float:
        """Seconds from `ctr run` until KubeRay's exec probes pass, on the cold node."""
        name = f"raybuild-measure-cold-{uuid.uuid4().hex[:8]}"
        started = time.monotonic()
        with self._running(name, ref, kuberay.head_command(required_cpus(app)), gpu):
            if not wait_until(lambda: kuberay.probe(self.ctr, name), timeout):
                raise SmokeTestError(
                    f"app {app.name!r}: cold-node head never passed KubeRay's probes within "
                    f"{timeout:.0f}s on {self.version}"
                )
            return time.monotonic() - started

    def stop(self, timeout: float = 30.0) -> None:
        """Stop containerd (its shims first) and remove its folder; a no-op when it never started."""
        if self._folder is None:
            return
        folder, pid = self._folder, self._pid
        if self.running():
            for task in self.ctr("tasks", "ls", "-q", check=False, timeout=30).output.split():
                self._remove(task)
        if pid.isdigit():
            self.engine.runner.run(["kill", "-TERM", pid], check=False)
            if not wait_until(lambda: not Path(f"/proc/{pid}").exists(), timeout, interval=0.25):
                self.engine.runner.run(["kill", "-KILL", pid], check=False)
        # Snapshots are plain folders once nothing runs; a mount left by a killed shim is unmounted first.
        unmount = f"grep -o ' {folder}/[^ ]*' /proc/mounts | xargs -r -n1 umount -l"
        self.engine.runner.run(["sh", "-c", unmount], check=False)
        shutil.rmtree(folder, ignore_errors=True)
        self._folder, self._pid, self._ctr = None, "", None


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
