"""Which files of an app folder go into its image: raybuild's defaults, then `.raybuildignore` files.

The rules use `.dockerignore` syntax and semantics, matched with pathspec's gitignore patterns anchored at
the app folder:

- a pattern is relative to the app folder (``*.log`` matches only at its top; ``**/*.log`` anywhere);
- a pattern that matches a folder excludes everything in it;
- ``!pattern`` takes files back in; the last rule that matches a file decides;
- blank lines and lines starting with ``#`` are ignored.

Rules are read in order, later ones winning: ``DEFAULT_RULES`` (secrets, version control, caches,
dependency and virtualenv folders, the ignore files themselves), then ``.raybuildignore`` at the project
root (for every app), then ``.raybuildignore`` in the app folder. So ``!.env.example`` in either file
ships that one file. The app's own ``.dockerignore`` is not read (raybuild builds its own context) and
never copied.

A file larger than [limits].code_file_mb fails the build unless the rule that decided it was a ``!`` line
of an ignore file: a stray dataset or core dump should not silently become a layer that every node pulls.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pathspec.patterns.gitignore import GitIgnorePatternError
from pathspec.patterns.gitignore.basic import GitIgnoreBasicPattern

from raybuild.errors import BuildError, ConfigError

IGNORE_FILE = ".raybuildignore"
DEFAULT_RULES = (
    "**/.env*",  # dotenv files: API keys, passwords
    "**/.git",
    "**/.hg",
    "**/.svn",
    "**/__pycache__",
    "**/*.pyc",
    "**/.pytest_cache",
    "**/.mypy_cache",
    "**/.ruff_cache",
    "**/.ipynb_checkpoints",
    "**/.DS_Store",
    "**/node_modules",
    "**/.venv",
    "**/venv",
    "**/.tox",
    "**/.nox",
    f"**/{IGNORE_FILE}",
    "**/.dockerignore",
    "**/requirements.in",  # locked into the image's packages; the code layer needs no copy
)
_WILDCARDS = frozenset("*?[")
MB = 1_000_000


@dataclass(frozen=True)
class Rule:
    """One line of rules, compiled, with where it came from (for messages)."""

    text: str
    source: str  # "defaults", or the ignore file's path relative to the project root
    pattern: GitIgnoreBasicPattern
    segments: tuple[str, ...]  # the anchored pattern's path segments, for pruning whole folders

    @property
    def include(self) -> bool:
        """True for a rule that excludes (a match means ignored), False for a ``!`` rule."""
        return bool(self.pattern.include)


def parse_rules(lines: Iterable[str], source: str) -> list[Rule]:
    """Rules from ``.dockerignore``-style lines; ConfigError naming ``source`` for a pattern that is none."""
    rules = []
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        body = line[1:].strip() if negated else line
        # Docker cleans each pattern as a path and anchors it at the context root.
        cleaned = posixpath.normpath(body.replace("\\", "/")).lstrip("/")
        if cleaned in ("", "."):
            cleaned = "**"
        if cleaned.startswith(".."):
            raise ConfigError(f"{source}:{number}: {line!r} points outside the app folder")
        try:
            pattern = GitIgnoreBasicPattern(("!" if negated else "") + "/" + cleaned)
        except (GitIgnorePatternError, ValueError) as exc:
            raise ConfigError(f"{source}:{number}: {line!r} is not a valid pattern ({exc})") from exc
        rules.append(Rule(line, source, pattern, tuple(cleaned.split("/"))))
    return rules


def read_rules(path: Path, source: str) -> list[Rule]:
    if not path.is_file():
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: cannot read ({exc})", hint="save it as UTF-8 text") from exc
    return parse_rules(text.splitlines(), source)


@dataclass(frozen=True)
class CodeFiles:
    """The files that go into the image (relative path -> file), and how many entries (files or whole
    folders) the rules left out."""

    files: dict[str, Path]
    ignored: int


class IgnoreRules:
    """The rules for one app folder; ``select`` walks it."""

    def __init__(self, rules: list[Rule]) -> None:
        self.rules = rules
        self._negations = [rule for rule in rules if not rule.include]

    @classmethod
    def for_app(cls, project_root: Path, app_dir: Path) -> IgnoreRules:
        rules = parse_rules(DEFAULT_RULES, "raybuild's default rules")
        for folder in dict.fromkeys((project_root, app_dir)):
            path = folder / IGNORE_FILE
            rules += read_rules(path, _shown(path, project_root))
        return cls(rules)

    def deciding(self, rel: str) -> Rule | None:
        """The last rule that matches ``rel`` (a path relative to the app folder, with / separators)."""
        found = None
        for rule in self.rules:
            if rule.pattern.match_file(rel) is not None:
                found = rule
        return found

    def ignored(self, rel: str) -> bool:
        rule = self.deciding(rel)
        return rule is not None and rule.include

    def _may_take_back(self, folder: str) -> bool:
        """Whether a ``!`` rule could match something inside ``folder`` (so it must be walked)."""
        parts = folder.split("/")
        for rule in self._negations:
            for have, want in zip(parts, rule.segments, strict=False):
                if _WILDCARDS & set(want):
                    return True
                if have != want:
                    break
            else:
                return True
        return False

    def select(self, app_dir: Path, limit_mb: int, app: str) -> CodeFiles:
        """The files to copy, in a stable order; BuildError for a file over ``limit_mb`` nobody asked for."""
        files: dict[str, Path] = {}
        ignored = 0
        for top, dirs, names in os.walk(app_dir):
            base = Path(top).relative_to(app_dir).as_posix()
            prefix = "" if base == "." else base + "/"
            kept_dirs = []
            for name in sorted(dirs):
                rel = prefix + name
                if self.ignored(rel) and not self._may_take_back(rel):
                    ignored += 1
                else:
                    kept_dirs.append(name)
            dirs[:] = kept_dirs
            for name in sorted(names):
                rel, path = prefix + name, Path(top) / name
                rule = self.deciding(rel)
                if (rule is not None and rule.include) or not path.is_file():
                    ignored += 1
                    continue
                size = path.stat().st_size
                # Past the rules above, a deciding rule can only be a `!` line: the user asked for the file.
                if size > limit_mb * MB and rule is None:
                    raise BuildError(
                        f"app {app!r}: {rel} is {size / MB:.0f} MB, over the {limit_mb} MB limit for "
                        "app code",
                        hint=f"ignore it in {IGNORE_FILE}, add a line `!{rel}` there to ship it, or raise "
                        "[limits].code_file_mb",
                    )
                files[rel] = path
        return CodeFiles(dict(sorted(files.items())), ignored)


def _shown(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)
