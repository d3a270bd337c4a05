"""Each concept has one home: the strings that name it appear, as code, in one module only.

Docstrings and comments may mention them; string literals in code may not, outside their owner.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import raybuild

PACKAGE = Path(raybuild.__file__).parent


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "templates" not in p.relative_to(PACKAGE).parts)


def _code_strings(path: Path) -> list[str]:
    """Every string constant in the module's code, docstrings left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


def _owners(predicate: object) -> set[str]:
    assert callable(predicate)
    return {
        path.relative_to(PACKAGE).as_posix()
        for path in _modules()
        if any(predicate(text) for text in _code_strings(path))
    }


@pytest.mark.parametrize(
    ("what", "predicate", "owner"),
    [
        ("the head key", lambda s: s == "_head", "state.py"),
        ("the head image name", lambda s: "ray-head" in s, "tags.py"),
        ("paths under .raybuild/", lambda s: s == ".raybuild" or s.startswith(".raybuild/"), "state.py"),
        (
            "ray start command lines",
            lambda s: "ray start" in s or s in ("--head", "ulimit -n 65536; "),
            "kuberay.py",
        ),
        ("KubeRay's probe endpoints", lambda s: "healthz" in s, "kuberay.py"),
        ("the dashboard's REST paths", lambda s: s.startswith(("/api/serve/", "/api/v0/")), "dashboard.py"),
        ("Docker object label keys", lambda s: s.startswith("io.raybuild."), "labels.py"),
        (
            "platform names and the node arch label",
            lambda s: s.startswith(("linux/amd64", "linux/arm64")) or s == "kubernetes.io/arch",
            "platforms.py",
        ),
    ],
)
def test_a_concept_lives_in_one_module(what: str, predicate: object, owner: str) -> None:
    assert _owners(predicate) <= {owner}, f"{what} must be written only in {owner}"


def test_no_code_reads_a_folder_beside_the_project() -> None:
    assert _owners(lambda s: s in ("shared", "../shared") or "/shared/" in s) == set()


def test_the_checks_see_what_they_look_for() -> None:
    # Guards the guard: if the scan found nothing at all, every test above would pass vacuously.
    assert _owners(lambda s: s == "_head") == {"state.py"}
    assert _owners(lambda s: s == "--head") == {"kuberay.py"}


# -- image references are parsed in reference.py only --------------------------------------------------------

_SPLITS = ("split", "rsplit", "partition", "rpartition")
# ':' and '@' split a reference into its tag and digest whatever is split; '/' splits file paths everywhere,
# so only its partitions (host from repository) are a reference's.
_REFERENCE_SEPARATORS = {":": _SPLITS, "@": _SPLITS, "/": ("partition", "rpartition")}
_NOT_REFERENCES = {
    ("reference.py", ":"): "the grammar itself",
    ("reference.py", "@"): "the grammar itself",
    ("reference.py", "/"): "the grammar itself",
    ("platforms.py", ":"): "/proc/cpuinfo's 'flags: ...' line",
    ("registry.py", ":"): "a digest's algorithm:hex, for the OCI referrers fallback tag",
    ("verify/scan.py", ":"): "trivy's 'Version: X' line",
    ("verify/smoke.py", ":"): "a Serve import path, module:attribute",
}
_EXEMPT_MODULES: set[str] = set()


def _separator_splits(path: Path) -> set[str]:
    """The separators that the module splits or partitions any string on (``x.rsplit(":", 1)`` and kin)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and node.func.attr in _REFERENCE_SEPARATORS.get(str(node.args[0].value), ())
        ):
            found.add(str(node.args[0].value))
    return found


def _reference_splits() -> set[tuple[str, str]]:
    return {
        (module, separator)
        for path in _modules()
        if (module := path.relative_to(PACKAGE).as_posix()) not in _EXEMPT_MODULES
        for separator in _separator_splits(path)
    }


def test_only_reference_py_parses_image_references() -> None:
    unexplained = sorted(_reference_splits() - set(_NOT_REFERENCES))
    assert unexplained == [], (
        f"split on a reference separator outside reference.py: {unexplained}; use "
        "raybuild.reference.ImageRef (or, for text that is not a reference, add it to _NOT_REFERENCES "
        "saying what it is)"
    )


def test_the_reference_check_sees_what_it_looks_for() -> None:
    # Guards the guard: the grammar's own splits are found, and each allowed use is still there.
    found = _reference_splits()
    assert {("reference.py", ":"), ("reference.py", "@"), ("reference.py", "/")} <= found
    assert set(_NOT_REFERENCES) <= found, "an allowed use is gone: drop it from _NOT_REFERENCES"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module.split(".")[0])
    return found


def _uses(path: Path, attribute: str) -> bool:
    """The module reads ``X.<attribute>`` somewhere in its code."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return any(isinstance(node, ast.Attribute) and node.attr == attribute for node in ast.walk(tree))


def test_only_the_runner_starts_processes() -> None:
    starters = {p.relative_to(PACKAGE).as_posix() for p in _modules() if "subprocess" in _imports(p)}
    assert starters == {"runner.py"}, "run commands through raybuild.runner.Runner"


def test_only_the_engine_builds_a_docker_command_line() -> None:
    # The docker binary's path and the build prefix are what a docker argv starts with; `_docker` runs one.
    for attribute in ("build_prefix", "_docker", "docker_cmd"):
        users = {p.relative_to(PACKAGE).as_posix() for p in _modules() if _uses(p, attribute)}
        assert users <= {"engine.py"}, f"{attribute} is the engine's: add a verb to raybuild.docker_verbs"
    builders = {p.relative_to(PACKAGE).as_posix() for p in _modules() if _lists_the_docker_binary(p)}
    assert builders <= {"engine.py", "docker_client.py"}, "a command line that starts with the docker binary"


def _lists_the_docker_binary(path: Path) -> bool:
    """A list literal holding ``<docker or client>.path``: the start of a docker command line."""

    def is_docker_path(node: ast.expr) -> bool:
        if not (isinstance(node, ast.Attribute) and node.attr == "path"):
            return False
        owner = node.value
        name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
        return name in ("docker", "client")

    tree = ast.parse(path.read_text(encoding="utf-8"))
    return any(
        isinstance(node, ast.List) and any(is_docker_path(e) for e in node.elts) for node in ast.walk(tree)
    )


def test_the_docker_command_line_check_sees_the_engine() -> None:
    assert _lists_the_docker_binary(PACKAGE / "engine.py")
    assert _uses(PACKAGE / "engine.py", "_docker")
