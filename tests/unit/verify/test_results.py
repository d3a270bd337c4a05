"""The measure document: model round trip, the published JSON Schema, and one-line errors."""

from __future__ import annotations

import json
from copy import deepcopy
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pydantic import BaseModel

from raybuild.errors import GateError
from raybuild.verify.results import (
    SCHEMA_ID,
    AppResult,
    Dive,
    Finding,
    Layer,
    Measurement,
    Package,
    Size,
    Startup,
    Stat,
    Vulnerabilities,
    schema,
    stat,
)


def example() -> Measurement:
    return Measurement.model_validate_json(json.dumps(EXAMPLE))


EXAMPLE: dict[str, Any] = {
    "schema": "raybuild.measure/v1",
    "created": "2026-11-02T10:15:00Z",
    "ray_version": "2.60.0",
    "python": "3.11",
    "runs": 3,
    "apps": {
        "hello": {
            "image": "127.0.0.1:5000/raybuild/hello:3f2a9c1e",
            "device": "cpu",
            "size": {
                "uncompressed": 412_000_000,
                "compressed": 131_500_000,
                "layers": [
                    {
                        "digest": "sha256:aa",
                        "size": 80_000_000,
                        "compressed": 30_000_000,
                        "created_by": "base: debian bookworm rootfs",
                    },
                    {
                        "digest": "sha256:bb",
                        "size": 332_000_000,
                        "compressed": None,
                        "created_by": "COPY --from=ray /opt/venv /opt/venv",
                    },
                ],
                "largest_packages": [
                    {"name": "ray", "size": 190_000_000},
                    {"name": "grpcio", "size": 21_000_000},
                ],
                "shared_bytes": 400_000_000,
                "dive": {"efficiency": 0.987, "wasted_bytes": 1_200_000},
                "prune_saved": {"tests": 9_400_000, "ray/dashboard/client": 31_000_000},
            },
            "startup": {
                "t_head": {"median": 4.2, "min": 4.0, "max": 4.9, "samples": [4.0, 4.2, 4.9]},
                "t_worker": None,
                "t_serve": {"median": 7.5, "min": 7.1, "max": 8.0, "samples": [7.1, 7.5, 8.0]},
                "t_pull": None,
                "t_cold": {"median": 12, "min": 11, "max": 13, "samples": [11, 12, 13]},
            },
        },
        "cuda": {
            "image": "127.0.0.1:5000/raybuild/cuda:0d9e11aa",
            "device": "gpu",
            "size": {
                "uncompressed": 3_100_000_000,
                "compressed": 1_400_000_000,
                "layers": [],
                "largest_packages": [],
                "shared_bytes": 0,
                "dive": None,
                "prune_saved": {},
            },
            "startup": {"t_head": None, "t_worker": None, "t_serve": None, "t_pull": None, "t_cold": None},
        },
    },
}


def broken(path: str, value: Any = ..., *, delete: bool = False) -> dict[str, Any]:
    """EXAMPLE with the dotted ``path`` set to ``value`` (or deleted)."""
    doc = deepcopy(EXAMPLE)
    *parents, last = path.split(".")
    node: Any = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if delete:
        del node[last]
    else:
        node[last] = value
    return doc


BROKEN = {
    "missing apps": broken("apps", delete=True),
    "missing size": broken("apps.hello.size", delete=True),
    "missing startup key": broken("apps.hello.startup.t_pull", delete=True),
    "size as float": broken("apps.hello.size.compressed", 131_500_000.5),
    "size as string": broken("apps.hello.size.uncompressed", "412MB"),
    "negative size": broken("apps.hello.size.uncompressed", -1),
    "bad device": broken("apps.hello.device", "tpu"),
    "wrong schema": broken("schema", "raybuild.measure/v2"),
    "unknown key": broken("apps.hello.size.extra", 1),
    "stat without samples": broken("apps.hello.startup.t_head.samples", []),
    "stat as number": broken("apps.hello.startup.t_head", 4.2),
    "layer missing compressed": broken("apps.hello.size.layers.0.compressed", delete=True),
    "negative prune saving": broken("apps.hello.size.prune_saved.tests", -5),
    "dive efficiency over 1": broken("apps.hello.size.dive.efficiency", 1.5),
}


def test_round_trip_is_lossless() -> None:
    doc = example()
    text = doc.to_json()
    again = Measurement.from_json(text)
    assert again == doc
    assert again.to_json() == text
    assert json.loads(text)["schema"] == SCHEMA_ID


def test_to_json_matches_the_example_document() -> None:
    # Floats written as JSON integers (t_cold) come back as floats; everything else is byte-for-byte.
    written = json.loads(example().to_json())
    expected = deepcopy(EXAMPLE)
    assert written["created"] == "2026-11-02T10:15:00Z"
    assert written == expected


def test_write_and_load(tmp_path: Path) -> None:
    target = tmp_path / ".raybuild" / "measure.json"
    example().write(target)
    assert Measurement.load(target) == example()
    assert [p.name for p in target.parent.iterdir()] == ["measure.json"]  # no temporary file left


def test_example_validates_against_the_published_schema() -> None:
    validator = jsonschema.Draft202012Validator(schema(), format_checker=jsonschema.FormatChecker())
    jsonschema.Draft202012Validator.check_schema(schema())
    validator.validate(EXAMPLE)
    validator.validate(json.loads(example().to_json()))


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_documents_fail_both_schema_and_model(name: str) -> None:
    doc = BROKEN[name]
    errors = list(jsonschema.Draft202012Validator(schema()).iter_errors(doc))
    assert errors, f"the JSON Schema accepted a document with {name}"
    with pytest.raises(GateError) as caught:
        Measurement.from_json(json.dumps(doc), source="new.json")
    message = str(caught.value)
    assert message.startswith("new.json: ")
    assert "\n" not in message


def test_error_names_file_and_key() -> None:
    with pytest.raises(
        GateError,
        match=r"^m\.json: malformed measure document: key 'apps\.hello\.size\.compressed': "
        r".*got 131500000\.5",
    ):
        Measurement.from_json(json.dumps(BROKEN["size as float"]), source="m.json")
    with pytest.raises(
        GateError,
        match=r"^m\.json: malformed measure document: key 'apps\.hello\.size': missing required key$",
    ):
        Measurement.from_json(json.dumps(BROKEN["missing size"]), source="m.json")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{not json", r"^b\.json: malformed measure document: not valid JSON \(.*line 1 column 2\)$"),
        ("", r"^b\.json: malformed measure document: not valid JSON"),
        ("[1, 2]", r"^b\.json: malformed measure document: expected a JSON object, got list$"),
        (
            '{"apps": {}}',
            r"^b\.json: measure document with no 'schema' key, expected 'raybuild\.measure/v1'$",
        ),
        (
            '{"schema": "raybuild.measure/v2"}',
            r"^b\.json: measure document with schema 'raybuild\.measure/v2', expected",
        ),
    ],
)
def test_malformed_text_is_one_gate_error(text: str, expected: str) -> None:
    with pytest.raises(GateError, match=expected):
        Measurement.from_json(text, source="b.json")


def test_load_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(GateError, match=r"nope\.json: no such file"):
        Measurement.load(tmp_path / "nope.json")


def test_created_needs_a_time_zone() -> None:
    with pytest.raises(GateError, match="key 'created'"):
        Measurement.from_json(json.dumps(broken("created", "2026-11-02T10:15:00")))


def test_stat_summarises_samples() -> None:
    odd = stat([3.0, 1.0, 2.0])
    assert (odd.median, odd.min, odd.max, odd.samples) == (2.0, 1.0, 3.0, [3.0, 1.0, 2.0])
    assert stat([1, 2, 3, 10]).median == 2.5
    assert stat([5]).samples == [5.0]
    with pytest.raises(ValueError, match="at least one sample"):
        stat([])


def test_stat_rejects_median_outside_range() -> None:
    with pytest.raises(ValueError, match="min <= median <= max"):
        Stat(median=9.0, min=1.0, max=2.0, samples=[1.0, 2.0])


def test_now_stamps_utc() -> None:
    doc = Measurement.now(ray_version="2.60.0", python="3.11", runs=0, apps={})
    assert doc.created.utcoffset() is not None
    assert Measurement.from_json(doc.to_json()) == doc


# The schema is written by hand for its descriptions; this keeps its keys in step with the models.
SCHEMA_OBJECTS: dict[str, type[BaseModel]] = {
    "app": AppResult,
    "size": Size,
    "layer": Layer,
    "package": Package,
    "dive": Dive,
    "startup": Startup,
    "stat": Stat,
    "vulnerabilities": Vulnerabilities,
    "finding": Finding,
}


def _keys(model: type[BaseModel], *, required: bool = False) -> set[str]:
    fields = model.model_fields.items()
    return {field.alias or name for name, field in fields if field.is_required() or not required}


@pytest.mark.parametrize("definition", sorted(SCHEMA_OBJECTS))
def test_schema_keys_match_the_models(definition: str) -> None:
    node = schema()["$defs"][definition]
    model = SCHEMA_OBJECTS[definition]
    assert set(node["properties"]) == _keys(model)
    # Optional keys (vulnerabilities, added to v1 later) are optional in both.
    assert set(node["required"]) == _keys(model, required=True)
    assert node["additionalProperties"] is False


def test_schema_top_level_matches_measurement() -> None:
    top = schema()
    assert set(top["properties"]) == _keys(Measurement) == set(top["required"])
    assert top["properties"]["schema"]["const"] == SCHEMA_ID
