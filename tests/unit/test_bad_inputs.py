"""Bad input, the way a careful new user would try it: every case is one `error:` line, the right exit code,
no traceback, and not one file changed.

Each case breaks a working project (config, lockfiles, records, paths, command-line options, measure files)
and runs the console script's main() in-process. Nothing here starts Docker: the engine is a fake, the
resolver a fake, and the bases are taken as made. The whole folder the test works in (the project and
the folders beside it) is hashed before and after, so a command that writes, truncates or creates anything
on its way to failing is caught, whatever the file.
"""

from __future__ import annotations

import errno
import hashlib
import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import raybuild.cli as cli_package
from raybuild import fsutil
from raybuild.image import bases
from raybuild.lock import resolve as locking
from raybuild.records import BuiltImage, PublishedImage, PublishRecord, save_build_record
from raybuild.runner import Result
from raybuild.templating import BUNDLED_TEMPLATES
from raybuild.verify.results import Measurement
from tests.conftest import MainResult, TmpProject, other_app
from tests.unit.fakes import FakeEngine, FakeResolver
from tests.unit.lock.test_resolve import UV_INDEX_DOWN, UV_NO_RAY_VERSION, UV_NO_WHEELS
from tests.unit.verify.test_gate import app as measured_app

CLI_MODULES = [module for module in vars(cli_package).values() if hasattr(module, "engine_for")]


@dataclass
class Bad:
    """The working project a case breaks, and the folder beside it."""

    project: TmpProject
    outside: Path
    monkeypatch: pytest.MonkeyPatch
    resolver_output: str | None = None  # what the fake resolver prints when it fails; None: it succeeds

    @property
    def root(self) -> Path:
        return self.project.root

    def file(self, relative: str) -> Path:
        return self.root / relative

    def replace(self, relative: str, old: str, new: str) -> None:
        path = self.file(relative)
        text = path.read_text(encoding="utf-8")
        assert old in text, f"{old!r} is not in {relative}"
        path.write_text(text.replace(old, new, 1), encoding="utf-8")

    def config(self, old: str, new: str) -> None:
        self.replace("raybuild.toml", old, new)

    def append(self, relative: str, data: bytes) -> None:
        with self.file(relative).open("ab") as handle:
            handle.write(data)

    def json(self, relative: str, edit: Callable[[Any], Any]) -> None:
        path = self.file(relative)
        path.write_text(json.dumps(edit(json.loads(path.read_text()))))


def tree(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file and folder under ``folder``: its content hash (folders: "dir") and its mode."""
    found = {}
    for path in sorted(folder.rglob("*")):
        kind = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
        found[path.relative_to(folder).as_posix()] = (kind, path.stat().st_mode)
    return found


@pytest.fixture
def bad(tmp_project: TmpProject, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Bad:
    """A project that works: two apps, fresh lockfiles, a build and a publish record, two measurements."""
    case = Bad(tmp_project, tmp_path / "outside", monkeypatch)
    case.outside.mkdir()
    tmp_project.add_app("other", "rich\n")
    tmp_project.append_config(other_app())
    config = tmp_project.load()
    locking.lock(config, config.apps, runner=FakeResolver())
    save_build_record(
        config,
        [
            BuiltImage("_head", "127.0.0.1:5000/demo/ray-head:1", "sha256:" + "1" * 64, "cpu", cached=False),
            BuiltImage("demo", "127.0.0.1:5000/demo/demo:1", "sha256:" + "2" * 64, "cpu", cached=False),
        ],
    )
    published = PublishedImage("127.0.0.1:5000/demo/demo:1", "sha256:" + "3" * 64, 10, 5)
    PublishRecord({"demo": published}).save(config.root / ".raybuild" / "publish.json")
    measurement = Measurement.now(ray_version="2.60.0", python="3.11", runs=3, apps={"demo": measured_app()})
    measurement.write(config.root / ".raybuild" / "measure.json")
    measurement.write(config.root / "baseline.json")

    # No Docker, no index: a fake engine and a fake resolver; the base images are taken as made.
    engine = FakeEngine()
    for module in CLI_MODULES:
        monkeypatch.setattr(module, "engine_for", lambda state: engine)
    monkeypatch.setattr(bases, "ensure_bases", lambda *args, **kwargs: {})

    def resolve(command: list[str]) -> Result:
        if case.resolver_output is not None:
            return Result(command, 1, "", case.resolver_output)
        return FakeResolver()(command)

    monkeypatch.setattr(locking, "_run", resolve)
    return case


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]  # after `--config <project>`; {root} and {outside} are filled in
    code: int
    error: str  # a regular expression the text after "error: " must match from its start
    setup: Callable[[Bad], None] = lambda bad: None
    config: bool = True  # pass --config (init takes no project)
    hint: str | None = None  # a regular expression the hint must contain, where the hint is the point


def _utf8(relative: str) -> Callable[[Bad], None]:
    return lambda bad: bad.append(relative, b"\n\xff\xfe bad bytes\n")


def _edit_pin(relative: str = "lockfiles/demo.txt") -> Callable[[Bad], None]:
    return lambda bad: bad.replace(relative, "orjson==1.0", "orjson==0.0.1")


def _truncate(relative: str, cut_bytes: int) -> Callable[[Bad], None]:
    def cut(bad: Bad) -> None:
        path = bad.file(relative)
        path.write_bytes(path.read_bytes()[:-cut_bytes])

    return cut


def _read_only(bad: Bad) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.EROFS, "Read-only file system")

    bad.monkeypatch.setattr(fsutil, "tempfile", SimpleNamespace(mkstemp=refuse))


def _resolver_fails(output: str, old: str = "", new: str = "") -> Callable[[Bad], None]:
    def setup(bad: Bad) -> None:
        bad.resolver_output = output
        if old:
            bad.config(old, new)

    return setup


def _write(relative: str, text: str) -> Callable[[Bad], None]:
    def setup(bad: Bad) -> None:
        bad.file(relative).parent.mkdir(parents=True, exist_ok=True)
        bad.file(relative).write_text(text)

    return setup


def _measure(relative: str, edit: Callable[[dict[str, Any]], Any]) -> Callable[[Bad], None]:
    def setup(bad: Bad) -> None:
        def change(data: dict[str, Any]) -> Any:
            return edit(data) or data

        bad.json(relative, change)

    return setup


def _nan(data: dict[str, Any]) -> None:
    data["apps"]["demo"]["startup"]["t_head"]["median"] = float("nan")


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for key in parents:
            data = data[key]
        data[last] = value

    return edit


def _old_header(bad: Bad) -> None:
    path = bad.file("lockfiles/demo.txt")
    path.write_text(re.sub(r"# raybuild-body-sha256: .*\n", "", path.read_text()))


def _user_files_in_init_target(bad: Bad) -> None:
    app = bad.outside / "svc" / "apps" / "hello"
    app.mkdir(parents=True)
    (app / "hello_app.py").write_text("# the user's own app\n")
    (app / "requirements.in").write_text("numpy\n")


def _templates(bad: Bad) -> None:
    """The project's own copy of the templates (images/, deploy/), with a bad byte in each."""
    shutil.copytree(
        BUNDLED_TEMPLATES, bad.root / "images", ignore=shutil.ignore_patterns("deploy", "init", "probe")
    )
    shutil.copytree(BUNDLED_TEMPLATES / "deploy", bad.root / "deploy")
    bad.append("images/common/app.Dockerfile.j2", b"\n# \xff\n")
    bad.append("deploy/rayservice.yaml.j2", b"\n# \xff\n")


def _mkdir(relative: str) -> Callable[[Bad], None]:
    def setup(bad: Bad) -> None:
        path = bad.file(relative)
        if path.exists():
            path.unlink()
        path.mkdir(parents=True)

    return setup


TOML = "raybuild.toml"
DEMO_PATH = 'path = "apps/demo"'
DEMO_REQ = 'requirements = "apps/demo/requirements.in"'
CHECK = ("check", "--baseline", "{root}/baseline.json")

CASES = [
    # -- raybuild.toml ------------------------------------------------------------------------------------
    Case("toml syntax", ("list",), 1, r"raybuild.toml: not valid TOML", _write(TOML, "[project\n")),
    Case("toml not utf-8", ("list",), 1, r"raybuild.toml: not valid UTF-8 \(byte 0xff", _utf8(TOML)),
    Case("unknown top-level key", ("list",), 1, r"raybuild.toml: unknown key 'projct'",
         lambda b: b.config("[project]", "[projct]")),
    Case("misspelt project key", ("list",), 1, r"raybuild.toml: unknown key 'project.ray_versoin'",
         lambda b: b.config("ray_version =", "ray_versoin =")),
    Case("no apps", ("list",), 1, r"raybuild.toml: missing required key 'apps'",
         _write(TOML, '[project]\nname = "x"\n')),
    Case("app without import_path", ("list",), 1,
         r"raybuild.toml: missing required key 'apps\[0\].import_path'",
         lambda b: b.config('import_path = "demo_app:app"\n', "")),
    Case("bad app name", ("list",), 1, r"raybuild.toml: key 'apps\[0\].name': must be lowercase",
         lambda b: b.config('name = "demo"', 'name = "Demo_App"')),
    Case("import path without attribute", ("list",), 1, r".*'demo_app' is not of the form module:attr",
         lambda b: b.config('"demo_app:app"', '"demo_app"')),
    Case("route without slash", ("list",), 1, r".*key 'apps\[0\].route_prefix': 'demo' must start with '/'",
         lambda b: b.config('route_prefix = "/demo"', 'route_prefix = "demo"')),
    Case("duplicate app name", ("list",), 1, r".*duplicate name 'demo'",
         lambda b: b.config('name = "other"', 'name = "demo"')),
    Case("duplicate route", ("list",), 1, r".*duplicate route_prefix '/demo'",
         lambda b: b.config('route_prefix = "/other"', 'route_prefix = "/demo"')),
    Case("python 3.7", ("list",), 1,
         r"raybuild.toml: key 'project.python': Python 3.7 is not one Ray publishes",
         lambda b: b.config('python = "3.11"', 'python = "3.7"')),
    Case("python not a version", ("list",), 1, r".*key 'project.python': 'three' must be a minor version",
         lambda b: b.config('python = "3.11"', 'python = "three"')),
    Case("ray version not exact", ("list",), 1, r".*key 'project.ray_version': '2.60' must be an exact",
         lambda b: b.config('ray_version = "2.60.0"', 'ray_version = "2.60"')),
    Case("unknown resolver", ("list",), 1, r".*key 'project.resolver'",
         lambda b: b.config('python = "3.11"', 'python = "3.11"\nresolver = "poetry"')),
    Case("unknown torch backend", ("list",), 1, r".*key 'project.torch_backend': 'cuda12' must be",
         lambda b: b.config('python = "3.11"', 'python = "3.11"\ntorch_backend = "cuda12"')),
    Case("app path leaves the project", ("list",), 1,
         r"raybuild.toml: key 'apps\[0\].path': '../../../../etc' lies outside the project",
         lambda b: b.config(DEMO_PATH, 'path = "../../../../etc"')),
    Case("absolute app path", ("list",), 1, r".*key 'apps\[0\].path': '/etc' lies outside the project",
         lambda b: b.config(DEMO_PATH, 'path = "/etc"')),
    Case("requirements outside the project", ("list",), 1,
         r".*key 'apps\[0\].requirements': '../requirements.in' lies outside the project",
         lambda b: b.config(DEMO_REQ, 'requirements = "../requirements.in"')),
    Case("app path is a file", ("list",), 1,
         r".*key 'apps\[0\].path': app 'demo' directory 'apps/demo/demo_app.py' is a file, not a folder",
         lambda b: b.config(DEMO_PATH, 'path = "apps/demo/demo_app.py"')),
    Case("requirements is a folder", ("list",), 1,
         r".*key 'apps\[0\].requirements': app 'demo' requirements file 'apps/demo' is a folder, not a file",
         lambda b: b.config(DEMO_REQ, 'requirements = "apps/demo"')),
    Case("app folder missing", ("list",), 1, r".*app 'demo' directory 'apps/nope' does not exist",
         lambda b: b.config(DEMO_PATH, 'path = "apps/nope"')),
    Case("requirements missing", ("list",), 1, r".*requirements file 'apps/demo/req.in' does not exist",
         lambda b: b.config(DEMO_REQ, 'requirements = "apps/demo/req.in"')),
    Case("lock_dir is a file", ("lock", "--check"), 1,
         r"raybuild.toml: key 'project.lock_dir': 'apps/demo/demo_app.py' is a file, not a folder",
         lambda b: b.config('python = "3.11"', 'python = "3.11"\nlock_dir = "apps/demo/demo_app.py"')),
    Case("env name", ("list",), 1, r".*'1BAD' is not a valid environment variable name",
         lambda b: b.config('route_prefix = "/demo"', 'route_prefix = "/demo"\nenv = { 1BAD = "x" }')),
    Case("env value with a newline", ("list",), 1, r".*the value of 'A' must be a single line",
         lambda b: b.config('route_prefix = "/demo"', 'route_prefix = "/demo"\nenv = { A = "x\\ny" }')),
    Case("zero replicas", ("list",), 1, r".*key 'apps\[0\].deployments\[0\].num_replicas'",
         lambda b: b.config("num_replicas = 1", "num_replicas = 0")),
    Case("negative gate", ("list",), 1, r".*key 'gate.max_size_growth'",
         lambda b: b.append(TOML, b"\n[gate]\nmax_size_growth = -1\n")),
    Case("config file missing", ("list",), 1, r".*/nothing.toml: no such file", lambda b: None, config=False),
    Case("config path too long", ("--config", "x" * 100_000, "list"), 1,
         r"--config x{60}\.\.\.x{40} \(100000 characters\): the path is too long", config=False),
    Case("requirements not utf-8", ("lock", "--check"), 1, r".*apps/demo/requirements.in: not valid UTF-8",
         _utf8("apps/demo/requirements.in")),
    # -- lockfiles ----------------------------------------------------------------------------------------
    Case("pin edited by hand", ("lock", "--check"), 1,
         r"lockfiles/demo.txt: edited by hand or cut short since raybuild wrote it", _edit_pin(),
         hint=r"^hint: run `raybuild lock demo` and commit the result$"),
    Case("lockfile cut short", ("lock", "--check"), 1, r"lockfiles/demo.txt: edited by hand or cut short",
         _truncate("lockfiles/demo.txt", 20)),
    Case("ray lock edited", ("lock", "--check"), 1, r"lockfiles/ray.txt: edited by hand",
         lambda b: b.replace("lockfiles/ray.txt", "ray==1.0", "ray==9.9"), hint=r"run `raybuild lock` and"),
    Case("lockfile not utf-8", ("lock", "--check"), 1, r"lockfiles/demo.txt: not valid UTF-8 \(byte 0xff",
         _utf8("lockfiles/demo.txt")),
    Case("lockfile emptied", ("lock", "--check"), 1, r"lockfiles/demo.txt: empty",
         _write("lockfiles/demo.txt", "")),
    Case("lockfile not raybuild's", ("lock", "--check"), 1, r"lockfiles/demo.txt: not written by raybuild",
         _write("lockfiles/demo.txt", "orjson==3.0\n"), hint="never writes over a file it did not make"),
    Case("lockfile from an older raybuild", ("lock", "--check"), 1,
         r"lockfiles/demo.txt: written by an older raybuild", _old_header),
    Case("lockfile is a folder", ("lock", "--check"), 1, r"lockfiles/demo.txt: a folder, not a file",
         _mkdir("lockfiles/demo.txt")),
    Case("requirements changed", ("lock", "--check", "demo"), 1, r"lockfiles/demo.txt: out of date",
         lambda b: b.file("apps/demo/requirements.in").write_text("orjson\nnumpy\n")),
    Case("edited lockfile, generate --stdout", ("generate", "--stdout"), 1,
         r"lockfiles/demo.txt: edited by hand", _edit_pin()),
    Case("edited lockfile, generate", ("generate",), 1, r"lockfiles/demo.txt: edited by hand", _edit_pin()),
    Case("edited ray lock, generate", ("generate", "--stdout"), 1, r"lockfiles/ray.txt: edited by hand",
         lambda b: b.replace("lockfiles/ray.txt", "ray==1.0", "ray==9")),
    Case("edited lockfile, build", ("build", "demo"), 1, r"lockfiles/demo.txt: edited by hand", _edit_pin()),
    Case("ray lock not raybuild's, lock", ("lock", "other"), 1, r"lockfiles/ray.txt: not written by raybuild",
         _write("lockfiles/ray.txt", "ray==2.60.0\n"), hint="never writes over a file it did not make"),
    Case("python without wheels, lock", ("lock",), 1,
         r'project.python = "3.9": ray\[serve\]==2.60.0 has no wheels for Python 3.9 \(it has wheels for 3.1',
         _resolver_fails(UV_NO_WHEELS, 'python = "3.11"', 'python = "3.9"')),
    Case("ray version missing, lock", ("lock",), 1,
         r'project.ray_version = "2.99.0": Ray 2.99.0 is not on the index',
         _resolver_fails(UV_NO_RAY_VERSION, 'ray_version = "2.60.0"', 'ray_version = "2.99.0"')),
    Case("index down, lock", ("lock",), 1,
         r"the package index http://127.0.0.1:9/simple \(\[project\].index_url\) did not answer",
         _resolver_fails(UV_INDEX_DOWN, 'python = "3.11"', 'python = "3.11"\nindex_url = "http://127.0.0.1:9/simple"')),
    # -- records under .raybuild/ --------------------------------------------------------------------------
    Case("build record entry without image_id", ("publish",), 1,
         r".*build.json: malformed build record: key 'images.demo.image_id': missing required key",
         lambda b: b.json(".raybuild/build.json", lambda d: d["images"]["demo"].pop("image_id") and d)),
    Case("build record not json", ("render",), 1, r".*build.json: malformed build record",
         _write(".raybuild/build.json", "{not json")),
    Case("build record not utf-8", ("render",), 1,
         r".*build.json: cannot read the build record: not valid UTF-8 \(byte 0xff",
         _utf8(".raybuild/build.json")),
    Case("build record version", ("list",), 1, r".*build.json: build record with version 7, expected 1",
         lambda b: b.json(".raybuild/build.json", lambda d: {**d, "version": 7})),
    Case("build record deployments", ("list",), 1,
         r".*key 'images.demo.deployments': Input should be a valid array \(got 3\)",
         lambda b: b.json(".raybuild/build.json", lambda d: d["images"]["demo"].update(deployments=3) or d)),
    Case("publish record digest", ("render",), 1,
         r".*publish.json: malformed publish record: key 'images.demo.digest'",
         lambda b: b.json(".raybuild/publish.json", lambda d: d["images"]["demo"].update(digest="x") or d)),
    Case("publish record not json", ("publish",), 1,
         r".*publish.json: malformed publish record: not valid JSON",
         _write(".raybuild/publish.json", "][")),
    Case("cluster record malformed", ("drill", "head-restart"), 1,
         r".*up.json: malformed cluster record: key 'name': Input should be a valid string",
         _write(".raybuild/up.json", '{"name": 1}')),
    Case("app never built", ("test", "other"), 1, r"app 'other' has not been built"),
    # -- paths ----------------------------------------------------------------------------------------------
    Case("render --out under a file", ("render", "--out", "{root}/apps/demo/demo_app.py/rs.yaml"), 1,
         r"cannot write .*/rs.yaml: .*/apps/demo/demo_app.py is a file, not a folder"),
    Case("render --out is a folder", ("render", "--out", "{root}/apps"), 2, r"Invalid value for '--out'"),
    Case("render --out read-only", ("render", "--out", "{outside}/rs.yaml"), 1,
         r"cannot write .*/rs.yaml: the file system is read-only", _read_only),
    Case("check --markdown under a file", (*CHECK, "--markdown", "{root}/baseline.json/report.md"), 1,
         r"cannot write .*report.md: .*baseline.json is a file, not a folder"),
    Case("measure --out under a file", ("measure", "--out", "{root}/baseline.json/m.json"), 1,
         r"cannot write .*/baseline.json/m.json: .*/baseline.json is a file, not a folder"),
    Case("measure --markdown under a file", ("measure", "--markdown", "{root}/baseline.json/m.md"), 1,
         r"cannot write .*/m.md: .*/baseline.json is a file, not a folder"),
    Case("generate --out-dir is a file", ("generate", "--out-dir", "{root}/baseline.json"), 1,
         r"cannot write .*demo.Dockerfile: .*baseline.json is a file, not a folder"),
    Case("template not utf-8, generate", ("generate", "--stdout"), 1,
         r".*/images/common/app.Dockerfile.j2: not valid UTF-8 \(byte 0xff", _templates),
    Case("template not utf-8, render", ("render",), 1,
         r".*/deploy/rayservice.yaml.j2: not valid UTF-8 \(byte 0xff", _templates),
    Case("generate over the user's Dockerfile", ("generate", "--out-dir", "{root}/apps/demo"), 2,
         r".*/apps/demo/demo.Dockerfile already exists and raybuild did not generate them",
         _write("apps/demo/demo.Dockerfile", "FROM python:3.11\n")),
    Case(".raybuild/dockerfiles is a file", ("generate",), 1,
         r"cannot write .*/.raybuild/dockerfiles/demo.Dockerfile: .*/.raybuild/dockerfiles is a file",
         _write(".raybuild/dockerfiles", "")),
    Case("init on a file", ("init", "{root}/baseline.json"), 2, r".*baseline.json exists and is not a folder",
         config=False),
    Case("init over the user's files", ("init", "{outside}/svc", "--name", "hello"), 2,
         r"init would overwrite 2 existing file\(s\)", _user_files_in_init_target, config=False),
    Case("init over a project", ("init", "{root}"), 2, r".*raybuild.toml already exists", config=False),
    Case("serve config not utf-8",
         ("init", "{outside}/new", "--from-serve-config", "{root}/apps/demo/requirements.in"), 2,
         r"--from-serve-config .*requirements.in: not valid UTF-8 \(byte 0xff",
         _utf8("apps/demo/requirements.in"), config=False),
    Case("ca bundle missing", ("build", "demo", "--ca-bundle", "{outside}/ca.pem"), 2,
         r"--ca-bundle .*/ca.pem: no such file"),
    # -- command-line options -------------------------------------------------------------------------------
    Case("negative test timeout", ("test", "demo", "--timeout", "-5"), 2,
         r"Invalid value for '--timeout': -5.0 is not in the range x>0"),
    Case("test timeout not a number", ("test", "demo", "--timeout", "soon"), 2,
         r"Invalid value for '--timeout'"),
    Case("zero up timeout", ("up", "--timeout", "0"), 2, r"Invalid value for '--timeout'"),
    Case("zero measure runs", ("measure", "--runs", "0"), 2, r"Invalid value for '--runs'"),
    Case("negative drill duration", ("drill", "head-restart", "--duration", "-1"), 2,
         r"Invalid value for '--duration': -1.0 is not in the range x>0"),
    Case("unknown drill", ("drill", "meteor"), 2, r"Invalid value for '\{head-restart"),
    Case("unknown kind", ("render", "--kind", "Deployment"), 2, r"Invalid value for '--kind'"),
    Case("unknown gcs store", ("render", "--with-gcs-store", "mongo"), 2,
         r"Invalid value for '--with-gcs-store'"),
    Case("unknown resolver flag", ("lock", "--resolver", "poetry"), 2, r"Invalid value for '--resolver'"),
    Case("unknown device", ("base", "tpu"), 2,
         r"Invalid value for '\[cpu\|gpu\]...': 'tpu' is not one of 'cpu', 'gpu'"),
    Case("unknown app", ("generate", "--stdout", "demo", "nope"), 2, r"unknown app 'nope' in raybuild.toml"),
    Case("unknown option", ("list", "--nope"), 2, r"No such option '--nope'"),
    Case("registry with a scheme", ("publish", "--registry", "http://127.0.0.1:5000/x"), 2,
         r"registry 'http://127.0.0.1:5000/x' is not HOST\[:PORT\]/NAMESPACE"),
    Case("negative gate flag", (*CHECK, "--max-size-growth", "-1"), 2,
         r"Invalid value for '--max-size-growth'"),
    # -- measure files --------------------------------------------------------------------------------------
    Case("baseline missing", ("check", "--baseline", "{outside}/nope.json"), 1, r".*nope.json: no such file"),
    Case("baseline not json", CHECK, 1, r".*baseline.json: malformed measure document: not valid JSON",
         _write("baseline.json", "{")),
    Case("baseline not utf-8", CHECK, 1,
         r".*baseline.json: cannot read the measure document: not valid UTF-8 \(byte 0xff",
         _utf8("baseline.json")),
    Case("baseline of another schema", CHECK, 1,
         r".*baseline.json: measure document with schema 'raybuild.measure/v0'",
         _measure("baseline.json", _set("schema", "raybuild.measure/v0"))),
    Case("baseline is a folder", ("check", "--baseline", "{root}/apps"), 2,
         r"Invalid value for '--baseline'"),
    Case("nan in a measurement", CHECK, 1,
         r".*measure.json: malformed measure document: key 'apps.demo.startup.t_head.median': "
         r"Input should be a finite number",
         _measure(".raybuild/measure.json", _nan)),
    Case("negative size", CHECK, 1,
         r".*key 'apps.demo.size.uncompressed': Input should be greater than or equal",
         _measure(".raybuild/measure.json", _set("apps.demo.size.uncompressed", -1))),
    Case("unknown measure key", CHECK, 1, r".*key 'apps.demo.size.extra': unknown key",
         _measure(".raybuild/measure.json", _set("apps.demo.size.extra", 1))),
    Case("median out of order", CHECK, 1, r".*need min <= median <= max",
         _measure(".raybuild/measure.json", _set("apps.demo.startup.t_head.min", 99.0))),
    Case("current without apps", CHECK, 1, r".*measure.json: the measurement has no apps",
         _measure(".raybuild/measure.json", _set("apps", {}))),
    Case("naive timestamp", CHECK, 1, r".*key 'created'",
         _measure(".raybuild/measure.json", _set("created", "2026-11-30T10:00:00"))),
]  # fmt: skip


def _run(bad: Bad, case: Case, run_main: Callable[..., MainResult], *extra: str) -> MainResult:
    args = [arg.format(root=bad.root, outside=bad.outside) for arg in case.args]
    config = ["--config", str(bad.project.config_path)] if case.config else []
    if case.id == "config file missing":
        config = ["--config", str(bad.outside / "nothing.toml")]
    return run_main(*config, *args, *extra)


def _one_error_line(result: MainResult, case: Case) -> str:
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    assert not any(line.startswith("Error:") for line in result.stderr.splitlines()), result.stderr
    assert len(errors[0]) < 400, "one readable line, not a dump"
    assert re.match(case.error, errors[0].removeprefix("error: ")), errors[0]
    if case.hint is not None:
        hints = [line for line in result.stderr.splitlines() if line.startswith("hint: ")]
        assert len(hints) == 1 and re.search(case.hint, hints[0]), result.stderr
    return errors[0]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_one_error_line_and_changes_nothing(
    bad: Bad, case: Case, run_main: Callable[..., MainResult], tmp_path: Path
) -> None:
    case.setup(bad)
    before = tree(tmp_path)
    result = _run(bad, case, run_main)
    assert result.exit_code == case.code, result.stderr
    _one_error_line(result, case)
    assert tree(tmp_path) == before, "a failed command changed, created or removed a file"


JSON_CASES = [case for case in CASES if case.id in {
    "pin edited by hand", "toml syntax", "build record entry without image_id", "negative test timeout",
    "render --out under a file", "init over the user's files", "baseline not json", "edited lockfile, build",
    "unknown app", "cluster record malformed", "zero measure runs", "app never built",
}]  # fmt: skip


@pytest.mark.parametrize("case", JSON_CASES, ids=[case.id for case in JSON_CASES])
def test_with_json_a_failure_is_one_object_on_stdout(
    bad: Bad, case: Case, run_main: Callable[..., MainResult], tmp_path: Path
) -> None:
    case.setup(bad)
    before = tree(tmp_path)
    result = _run(bad, case, run_main, "--json")
    assert result.exit_code == case.code, result.stderr
    line = _one_error_line(result, case)
    payload = json.loads(result.stdout)  # exactly one JSON document: json.loads refuses trailing data
    assert payload["ok"] is False
    assert payload["error"] == line.removeprefix("error: ")
    assert "hint" in payload
    assert tree(tmp_path) == before


def test_lock_check_json_lists_what_is_stale(bad: Bad, run_main: Callable[..., MainResult]) -> None:
    _edit_pin()(bad)
    result = run_main("--config", str(bad.project.config_path), "lock", "--check", "--json")
    assert result.exit_code == 1
    payload = json.loads(result.stdout)
    assert (payload["ok"], payload["stale"]) == (False, ["lockfiles/demo.txt"])
    assert payload["hint"] == "run `raybuild lock demo` and commit the result"


def test_the_suite_covers_every_kind_of_bad_input() -> None:
    assert len(CASES) >= 60
    assert len({case.id for case in CASES}) == len(CASES), "case ids are unique"
    commands = {case.args[0] for case in CASES if case.config}
    assert {"list", "lock", "generate", "build", "publish", "render", "check", "test", "drill"} <= commands


def test_every_path_in_the_project_keeps_its_mode_after_a_successful_lock(
    bad: Bad, run_main: Callable[..., MainResult]
) -> None:
    # Lockfiles are committed: `raybuild lock` must leave them as readable as any file the user made.
    lockfile = bad.file("lockfiles/demo.txt")
    lockfile.chmod(0o644)
    bad.file("apps/demo/requirements.in").write_text("orjson\nnumpy\n")
    result = run_main("--config", str(bad.project.config_path), "lock", "demo")
    assert result.exit_code == 0, result.stderr
    assert "numpy==1.0" in lockfile.read_text()
    assert oct(lockfile.stat().st_mode & 0o777) == oct(0o644)
    assert not [p for p in bad.root.rglob("*") if p.is_file() and p.stat().st_mode & 0o777 == 0o600]


def _takes_json(command: Any) -> bool:
    return any("--json" in getattr(param, "opts", ()) for param in command.params)


JSON_COMMANDS = sorted(name for name, command in cli_package.cli.commands.items() if _takes_json(command))
# What each command needs on its command line besides --json, to get as far as reading the config.
ARGUMENTS = {"drill": ["head-restart"], "test": ["demo"], "check": ["--baseline", "{root}/baseline.json"]}


@pytest.mark.parametrize("name", JSON_COMMANDS)
def test_every_command_with_json_fails_as_one_json_object(
    bad: Bad, name: str, run_main: Callable[..., MainResult], monkeypatch: pytest.MonkeyPatch
) -> None:
    bad.file(TOML).write_text("[project\n")
    if name == "doctor":  # reads no config: a required check fails instead
        from raybuild import doctor
        from raybuild.doctor import Check

        monkeypatch.setattr(
            doctor, "run_checks", lambda engine: [Check("docker-daemon", False, "down", "start")]
        )
    args = [arg.format(root=bad.root) for arg in ARGUMENTS.get(name, [])]
    if name == "init":
        args = [str(bad.project.config_path.parent / "baseline.json")]  # a file, not a folder
    result = run_main("--config", str(bad.project.config_path), name, *args, "--json")
    assert result.exit_code in (1, 2, 3), result.stderr  # 3: `scan` finds no trivy first
    payload = json.loads(result.stdout)
    assert payload["ok"] is False
    assert result.stderr.splitlines()[0] == f"error: {payload['error']}"
    assert "Traceback" not in result.stderr


def test_the_commands_with_json_are_all_there() -> None:
    # Guards the test above: a rename must not leave it checking nothing.
    assert {"lock", "build", "publish", "test", "check", "doctor", "list", "init", "measure"} <= set(
        JSON_COMMANDS
    )


def test_ctrl_c_is_one_line_and_exit_130(
    bad: Bad, run_main: Callable[..., MainResult], monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(locking, "check", interrupted)
    result = run_main("--config", str(bad.project.config_path), "lock", "--check")
    assert (result.exit_code, result.stdout) == (130, "")
    # One line, and no blank one before it (Click's own main() prints one).
    assert result.stderr == (
        "interrupted (SIGINT): cleaned up what this command started; nothing half-written was kept\n"
    )
