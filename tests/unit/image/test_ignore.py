"""Which app files reach the image: the default rules, `.raybuildignore` files in `.dockerignore` syntax, and
the size limit."""

from __future__ import annotations

from pathlib import Path

import pytest

from raybuild.errors import BuildError, ConfigError
from raybuild.image.ignore import IGNORE_FILE, IgnoreRules, parse_rules

MB = 1_000_000


def tree(root: Path, files: dict[str, str | int]) -> Path:
    """Files under ``root``: text, or a size in bytes (a sparse file, so big ones cost no disk)."""
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, int):
            with path.open("wb") as handle:
                handle.truncate(content)
        else:
            path.write_text(content)
    return root


def selected(project: Path, app: Path, limit_mb: int = 50) -> list[str]:
    return list(IgnoreRules.for_app(project, app).select(app, limit_mb, "demo").files)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return tmp_path / "project"


@pytest.fixture
def app(project: Path) -> Path:
    return tree(project / "apps" / "demo", {"demo_app.py": "app = 1\n"})


def test_the_defaults_keep_secrets_vcs_caches_and_dependency_folders_out(project: Path, app: Path) -> None:
    tree(
        app,
        {
            ".env": "API_KEY=s3cret\n",
            ".env.production": "API_KEY=s3cret\n",
            "config/.env.local": "API_KEY=s3cret\n",
            ".git/HEAD": "ref: refs/heads/main\n",
            "pkg/__pycache__/x.cpython-311.pyc": "",
            "pkg/mod.pyc": "",
            "pkg/mod.py": "",
            ".pytest_cache/v": "",
            "node_modules/left-pad/index.js": "",
            "web/node_modules/x.js": "",
            ".venv/bin/python": "",
            "venv/lib/site.py": "",
            ".dockerignore": "*\n",
            IGNORE_FILE: "",
            "requirements.in": "orjson\n",
            "data/weights.json": "{}",
        },
    )
    assert selected(project, app) == ["data/weights.json", "demo_app.py", "pkg/mod.py"]


def test_patterns_follow_dockerignore_semantics(project: Path, app: Path) -> None:
    tree(
        app,
        {
            "top.log": "",
            "deep/inner.log": "",
            "docs/a.md": "",
            "docs/api/b.md": "",
            "docs/keep.md": "",
            "scratch/x.txt": "",
            "scratch/y/z.txt": "",
            "notes.txt": "",
        },
    )
    (app / IGNORE_FILE).write_text(
        "# comments and blank lines are skipped\n\n"
        "*.log\n"  # anchored: only at the top, as in .dockerignore
        "/docs/**/*.md\n"  # a leading slash is the same anchor
        "!docs/keep.md\n"  # the last matching rule decides
        "scratch\n"  # a folder takes everything in it
        "  notes.txt  \n"  # surrounding spaces are trimmed
    )
    assert selected(project, app) == ["deep/inner.log", "demo_app.py", "docs/keep.md"]


def test_the_project_roots_file_applies_to_every_app_and_the_apps_own_file_wins(
    project: Path, app: Path
) -> None:
    tree(app, {"fixtures/big.json": "{}", "fixtures/small.json": "{}", ".env.example": "API_KEY=\n"})
    (project / IGNORE_FILE).write_text("fixtures\n")
    (app / IGNORE_FILE).write_text("!fixtures/small.json\n!.env.example\n")
    assert selected(project, app) == [".env.example", "demo_app.py", "fixtures/small.json"]


def test_a_file_over_the_limit_fails_the_build_with_its_path(project: Path, app: Path) -> None:
    tree(app, {"data/dump.bin": 51 * MB})
    with pytest.raises(BuildError) as raised:
        selected(project, app)
    assert raised.value.message == "app 'demo': data/dump.bin is 51 MB, over the 50 MB limit for app code"
    assert raised.value.hint is not None
    assert "`!data/dump.bin`" in raised.value.hint and "[limits].code_file_mb" in raised.value.hint
    assert selected(project, app, limit_mb=60) == ["data/dump.bin", "demo_app.py"]


def test_a_big_file_listed_as_wanted_or_ignored_passes(project: Path, app: Path) -> None:
    tree(app, {"model.bin": 51 * MB, "junk.bin": 200 * MB})
    (app / IGNORE_FILE).write_text("junk.bin\n!model.bin\n")
    assert selected(project, app) == ["demo_app.py", "model.bin"]


def test_ignored_folders_are_not_walked_unless_a_rule_may_take_something_back(
    project: Path, app: Path
) -> None:
    tree(app, {"node_modules/a/b.js": "", "node_modules/keep.js": "", "other/x.py": ""})
    rules = IgnoreRules.for_app(project, app)
    assert rules._may_take_back("node_modules") is False
    (app / IGNORE_FILE).write_text("!node_modules/keep.js\n")
    rules = IgnoreRules.for_app(project, app)
    assert rules._may_take_back("node_modules") is True
    assert rules._may_take_back("other") is False
    assert list(rules.select(app, 50, "demo").files) == ["demo_app.py", "node_modules/keep.js", "other/x.py"]


def test_a_bad_line_names_the_file_and_the_line(project: Path, app: Path) -> None:
    (app / IGNORE_FILE).write_text("ok\n../secrets\n")
    with pytest.raises(ConfigError, match=r"^apps/demo/\.raybuildignore:2: '\.\./secrets' points outside"):
        IgnoreRules.for_app(project, app)


def test_an_unreadable_ignore_file_is_a_config_error(project: Path, app: Path) -> None:
    (app / IGNORE_FILE).write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ConfigError, match=r"^apps/demo/\.raybuildignore: cannot read"):
        IgnoreRules.for_app(project, app)


def test_rules_keep_their_order_and_source() -> None:
    rules = parse_rules(["# c", "a", "!b/c", "/d/"], "x")
    assert [(rule.text, rule.include, rule.segments) for rule in rules] == [
        ("a", True, ("a",)),
        ("!b/c", False, ("b", "c")),
        ("/d/", True, ("d",)),
    ]
