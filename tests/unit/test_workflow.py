"""The GitHub Actions workflow parses, and every raybuild call in it matches the real Click CLI.

A renamed option or command breaks CI only after merge; this test breaks it in the PR that renames it.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from raybuild.cli import cli
from raybuild.config import parse_config

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "images.yml"

# Shell words that can precede a command on the same line.
_PREFIXES = {"then", "do", "else", "if", "elif", "while", "until", "!", "time", "exec", "{", "("}
_REDIRECT = re.compile(r"^\d*(>>?|<|>&|&>)")


def load(path: Path = WORKFLOW) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return data


def steps() -> list[dict[str, Any]]:
    return [step for job in load()["jobs"].values() for step in job["steps"]]


def app_names() -> set[str]:
    config = parse_config(tomllib.loads((ROOT / "raybuild.toml").read_text(encoding="utf-8")), ROOT)
    return {app.name for app in config.apps}


def expand(script: str, env: dict[str, str]) -> str:
    """Substitute the workflow's own env values, so that a value reaches the checker as the shell sees it."""
    return re.sub(r"\$\{?([A-Z_][A-Z0-9_]*)\}?", lambda m: env.get(m.group(1), m.group(0)), script)


def invocations(script: str) -> list[list[str]]:
    """The argument lists of every ``raybuild ...`` simple command in a ``run:`` script."""
    found = []
    for line in script.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        command: list[str] = []
        for token in [*lexer, ";"]:
            if token and set(token) <= set(";&|"):
                while command and command[0] in _PREFIXES:
                    command.pop(0)
                if command and command[0] == "raybuild":
                    words = command[1:]
                    cut = next((i for i, w in enumerate(words) if _REDIRECT.match(w)), len(words))
                    found.append(words[:cut])
                command = []
            else:
                command.append(token)
    return found


def all_invocations(data: dict[str, Any] | None = None) -> list[list[str]]:
    data, found = data or load(), []
    for job in data["jobs"].values():
        for step in job["steps"]:
            if "run" in step:
                env = {**data.get("env", {}), **job.get("env", {}), **step.get("env", {})}
                found += invocations(expand(step["run"], env))
    return found


def problems(command: click.Command, args: list[str]) -> list[str]:
    """What is wrong with ``args`` for ``command``: unknown options, missing values, bad choices."""
    ctx = click.Context(command)
    params = command.get_params(ctx)
    options = {
        name: p for p in params if isinstance(p, click.Option) for name in (*p.opts, *p.secondary_opts)
    }
    arguments = [p for p in params if isinstance(p, click.Argument)]
    errors, given, index = [], set(), 0
    while index < len(args):
        word = args[index]
        index += 1
        if not word.startswith("-") or word == "-":
            if not arguments:
                errors.append(f"unexpected argument {word!r}")
            # An `[APP]...` argument catches a value left behind by an option that turned out to be a flag.
            elif arguments[0].name == "apps" and "$" not in word and word not in app_names():
                errors.append(f"{word!r} is not an app in raybuild.toml")
            continue
        name, has_value, value = word.partition("=")
        option = options.get(name)
        if option is None:
            errors.append(f"no such option {name}")
            continue
        given.add(option.name)
        if option.is_flag or option.count:
            if has_value:
                errors.append(f"{name} is a flag and takes no value")
            continue
        if not has_value:
            if index >= len(args) or args[index].startswith("--"):
                errors.append(f"{name} needs a value")
                continue
            value = args[index]
            index += 1
        # Values with shell expansions, and paths (which need not exist here), are not checked.
        if "$" not in value and not isinstance(option.type, click.Path):
            try:
                option.type.convert(value, option, ctx)
            except click.BadParameter as exc:
                errors.append(f"{name} {value!r}: {exc.message}")
    for param in params:
        if isinstance(param, click.Option) and param.required and param.name not in given:
            errors.append(f"missing required option {param.opts[-1]}")
    return errors


def check_invocation(args: list[str]) -> list[str]:
    """Problems with one ``raybuild`` call: group options, then the command and its options."""
    group_args: list[str] = []
    while args and args[0].startswith("-"):
        group_args.append(args.pop(0))
        option = next(
            (p for p in cli.params if isinstance(p, click.Option) and group_args[-1] in p.opts), None
        )
        if option is not None and not option.is_flag and args:
            group_args.append(args.pop(0))
    errors = [f"raybuild: {e}" for e in problems(cli, group_args) if not e.startswith("missing")]
    if not args:
        return [*errors, "no command"]
    name, rest = args[0], args[1:]
    command = cli.commands.get(name)
    if command is None:
        return [*errors, f"no command {name!r}"]
    return errors + [f"raybuild {name}: {e}" for e in problems(command, rest)]


def workflow_problems(data: dict[str, Any]) -> list[str]:
    """Problems with every ``raybuild`` call in a workflow."""
    return [problem for args in all_invocations(data) for problem in check_invocation(list(args))]


def test_workflow_parses() -> None:
    data = load()
    triggers = data.get("on", data.get(True))  # YAML 1.1 reads a bare `on` key as True
    assert set(triggers) == {"pull_request", "push"}
    assert triggers["push"]["branches"] == ["main"]
    assert data["permissions"] == {"contents": "read"}
    assert "group" in data["concurrency"]
    assert set(data["jobs"]) == {"pr", "main"}
    for job in data["jobs"].values():
        assert job["steps"], "a job without steps"
        assert job["permissions"]["contents"] == "read"


def test_every_action_is_pinned_to_a_version() -> None:
    for step in steps():
        if "uses" in step:
            assert re.search(r"@(v\d+(\.\d+)*|[0-9a-f]{40})$", step["uses"]), step["uses"]


def test_workflow_calls_the_expected_commands() -> None:
    called = [args[0] for args in all_invocations() if args]
    for expected in ("lock", "build", "measure", "check", "publish", "render"):
        assert expected in called, f"the workflow never runs `raybuild {expected}`"


@pytest.mark.parametrize("args", all_invocations(), ids=lambda args: " ".join(args))
def test_raybuild_calls_match_the_cli(args: list[str]) -> None:
    assert check_invocation(list(args)) == []


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        ("raybuild publish", "raybuild ship", "no command 'ship'"),
        ("raybuild render --validate", "raybuild render --check", "raybuild render: no such option --check"),
        (
            "raybuild scan >",
            "raybuild scan --severity SEVERE >",
            "raybuild scan: --severity 'SEVERE': unknown severity SEVERE "
            "(a comma-separated list of UNKNOWN, LOW, MEDIUM, HIGH, CRITICAL)",
        ),
        # The old `measure --json FILE`: --json is a flag, so FILE lands in [APP]...
        (
            'raybuild measure --scan --out "$MEASURE_JSON"',
            'raybuild measure --scan --json "$MEASURE_JSON"',
            "raybuild measure: '.raybuild/measure.json' is not an app in raybuild.toml",
        ),
    ],
)
def test_a_broken_call_in_a_copy_of_the_workflow_is_caught(
    tmp_path: Path, old: str, new: str, problem: str
) -> None:
    # The real workflow passes; the same file with one call broken must not.
    assert workflow_problems(load()) == []
    text = WORKFLOW.read_text(encoding="utf-8")
    assert old in text
    copy = tmp_path / WORKFLOW.name
    copy.write_text(text.replace(old, new), encoding="utf-8")
    assert problem in workflow_problems(load(copy))


def test_raybuild_is_installed_as_users_install_it() -> None:
    installs = [step["run"] for step in steps() if "pip install" in step.get("run", "")]
    assert len(installs) == len(load()["jobs"]), "each job installs raybuild once"
    for command in installs:
        words = shlex.split(command)
        assert "." in words or "raybuild" in words, command
        assert "-e" not in words and "--editable" not in words, command
        assert not any("[dev]" in word for word in words), f"the tool needs no dev extras: {command}"


def test_render_validates_against_the_crds_raybuild_ships() -> None:
    # raybuild carries KubeRay's CRDs (manifest/crds/): CI fetches none and points at none.
    for step in steps():
        script = step.get("run", "")
        assert "RAYBUILD_CRD_DIR" not in script and "RAYBUILD_CRD_DIR" not in step.get("env", {}), step
        assert "ray.io_" not in script, step
    renders = [args for args in all_invocations() if args[0] == "render"]
    assert renders and all("--validate" in args and "--crd" not in args for args in renders)


def test_baseline_artifact_round_trip() -> None:
    by_name = {step.get("name"): step for step in steps()}
    upload = by_name["Upload the baseline"]["with"]
    download = by_name["Download main's baseline"]["with"]
    assert upload["name"] == download["name"] == "raybuild-baseline"
    assert download["workflow"] == WORKFLOW.name
    assert upload["include-hidden-files"] is True  # the file sits in .raybuild/
    gate = [args for args in invocations(by_name["Gate"]["run"]) if args[0] == "check"]
    assert gate and gate[0][gate[0].index("--baseline") + 1] == f"{download['path']}/measure.json"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("raybuild check --baseline b.json --bogus", ["raybuild check: no such option --bogus"]),
        ("raybuild check", ["raybuild check: missing required option --baseline"]),
        ("raybuild check --baseline", ["raybuild check: --baseline needs a value"]),
        (
            "raybuild check --baseline b.json --json=yes",
            ["raybuild check: --json is a flag and takes no value"],
        ),
        (
            "raybuild check --baseline b.json --max-size-growth -1",
            ["raybuild check: --max-size-growth '-1': -1.0 is not in the range x>=0."],
        ),
        ("raybuild check --baseline b.json extra", ["raybuild check: unexpected argument 'extra'"]),
        (
            "raybuild lock --resolver poetry",
            ["raybuild lock: --resolver 'poetry': 'poetry' is not one of 'uv', 'pip-tools'."],
        ),
        ("raybuild deploy", ["no command 'deploy'"]),
        (
            "raybuild lock --json .raybuild/measure.json",
            ["raybuild lock: '.raybuild/measure.json' is not an app in raybuild.toml"],
        ),
        ("raybuild lock hello sklearn", []),
        ("raybuild --config x/raybuild.toml --debug lock --check", []),
    ],
)
def test_checker_catches_mistakes(line: str, expected: list[str]) -> None:
    # The checker is what keeps the workflow honest, so it is tested against known-bad calls.
    (args,) = invocations(line)
    assert check_invocation(args) == expected


def test_invocations_read_shell() -> None:
    script = (
        "if [ -f b.json ]; then\n"
        "  raybuild check --baseline b.json \\\n    --markdown r.md > out.txt\n"
        "fi\n"
        "echo raybuild && raybuild lock --check  # comment --nope\n"
    )
    assert invocations(script) == [
        ["check", "--baseline", "b.json", "--markdown", "r.md"],
        ["lock", "--check"],
    ]


def test_env_values_are_expanded() -> None:
    assert expand('raybuild measure --out "$MEASURE_JSON" ${OTHER}', {"MEASURE_JSON": "m.json"}) == (
        'raybuild measure --out "m.json" ${OTHER}'
    )


# -- GitHub's own schema, for this repository's workflow and the one `raybuild init` writes ---------------


def _init_workflow(tmp_path: Path) -> Path:
    from raybuild.scaffold import workflow

    path = tmp_path / "raybuild.yml"
    path.write_text(workflow(), encoding="utf-8")
    return path


@pytest.mark.parametrize("which", ["repository", "init"])
def test_workflows_validate_against_githubs_workflow_schema(tmp_path: Path, which: str) -> None:
    import subprocess
    import sys

    path = WORKFLOW if which == "repository" else _init_workflow(tmp_path)
    checked = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_init_workflows_raybuild_calls_match_the_cli(tmp_path: Path) -> None:
    data = load(_init_workflow(tmp_path))
    called = {args[0] for args in all_invocations(data) if args}
    assert {
        "doctor",
        "lock",
        "build",
        "test",
        "measure",
        "check",
        "publish",
        "render",
        "sbom",
        "scan",
    } <= called
    assert workflow_problems(data) == []


@pytest.mark.parametrize("which", ["repository", "init"])
def test_both_workflows_scan_with_trivy_and_gate_on_it(tmp_path: Path, which: str) -> None:
    data = load(WORKFLOW if which == "repository" else _init_workflow(tmp_path))
    for job in data["jobs"].values():
        names = [step.get("uses", "").split("@")[0] for step in job["steps"]]
        # trivy from its official action, pinned, and installed before any scan runs.
        (setup,) = [
            step for step in job["steps"] if step.get("uses", "").startswith("aquasecurity/setup-trivy@")
        ]
        assert re.fullmatch(r"v\d+\.\d+\.\d+", setup["with"]["version"]), setup
        calls = [args for step in job["steps"] if "run" in step for args in invocations(step["run"])]
        commands = [args[0] for args in calls]
        assert {"sbom", "scan"} <= set(commands), which
        measures = [args for args in calls if args[0] == "measure"]
        assert measures and all("--scan" in args for args in measures), "the gate needs the scan in measure"
        # The SBOM folder is uploaded as an artifact, dot folder included.
        uploads = [
            s["with"] for s in job["steps"] if s.get("uses", "").startswith("actions/upload-artifact@")
        ]
        assert any(u["path"].rstrip("/") == ".raybuild/sbom" and u["include-hidden-files"] for u in uploads)
        assert names.index("aquasecurity/setup-trivy") < min(
            i for i, step in enumerate(job["steps"]) if "raybuild scan" in step.get("run", "")
        )


def _login_then_build(job: dict[str, Any]) -> tuple[int, int]:
    names = [step.get("run", "") for step in job["steps"]]
    login = next(i for i, run in enumerate(names) if "docker login" in run)
    build = next(i for i, run in enumerate(names) if run.strip() == "raybuild build")
    return login, build


@pytest.mark.parametrize("job", ["pr", "main"])
def test_each_job_logs_in_to_a_lasting_registry_before_it_builds(job: str) -> None:
    """So that `raybuild build` pulls what main published: the whole point of content-addressed tags."""
    data = load()["jobs"][job]
    login, build = _login_then_build(data)
    assert login < build
    registry = next(step["run"] for step in data["steps"] if "RAYBUILD_REGISTRY=" in step.get("run", ""))
    assert registry.index("RAYBUILD_REGISTRY=") < registry.index("GITHUB_ENV") and "ghcr.io" in registry
    checkout = next(step for step in data["steps"] if step.get("uses", "").startswith("actions/checkout@"))
    assert checkout["with"]["fetch-depth"] == 0  # image epochs come from the history


def test_the_pr_comment_says_whether_the_merge_upgrades_the_rayservice() -> None:
    by_name = {step.get("name"): step for step in steps()}
    deployed = by_name["Download the deployed RayService (main's last render)"]["with"]
    assert deployed["name"] == by_name["Upload the RayService manifest"]["with"]["name"]
    checks = [args for args in invocations(by_name["Gate"]["run"]) if args[0] == "check"]
    assert any(args[args.index("--deployed") + 1] == f"{deployed['path']}/rayservice.yaml"
               for args in checks if "--deployed" in args)  # fmt: skip
