"""The labels of raybuild's containers and networks, the filters a sweep may use, and what counts as an ID."""

from __future__ import annotations

import pytest

from raybuild import labels
from raybuild.errors import EngineError

MINE = labels.object_labels("a" * 16, "cluster", cluster="raybuild-serve", role="head")


def test_object_labels_name_the_project_and_the_purpose() -> None:
    assert labels.object_labels("p" * 16, "measure") == {
        "io.raybuild.managed": "true",
        "io.raybuild.project": "p" * 16,
        "io.raybuild.purpose": "measure",
    }
    assert MINE == {
        "io.raybuild.managed": "true",
        "io.raybuild.project": "a" * 16,
        "io.raybuild.purpose": "cluster",
        "io.raybuild.cluster": "raybuild-serve",
        "io.raybuild.role": "head",
    }
    with pytest.raises(ValueError, match="project"):
        labels.object_labels("", "smoke")


def test_filters_select_by_every_label_and_always_by_the_project() -> None:
    assert labels.label_filters(labels.object_labels("a" * 16, "smoke")) == [
        "--filter", "label=io.raybuild.managed=true",
        "--filter", "label=io.raybuild.project=" + "a" * 16,
        "--filter", "label=io.raybuild.purpose=smoke",
    ]  # fmt: skip
    for unscoped in ({"io.raybuild.managed": "true"}, {"io.raybuild.project": "a" * 16}, {}):
        with pytest.raises(ValueError, match="a sweep must select by"):
            labels.label_filters(unscoped)


def test_parse_ids_takes_full_ids_only() -> None:
    assert labels.parse_ids("\n" + "a" * 64 + "\n\n" + "b" * 64 + "\n" + "a" * 64, "docker ps") == [
        "a" * 64,
        "b" * 64,
    ]
    with pytest.raises(EngineError, match="docker ps printed 'Error', which"):
        labels.parse_ids("Error", "docker ps")
