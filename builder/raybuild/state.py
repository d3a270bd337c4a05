"""The layout of ``.raybuild/``, where raybuild's commands leave what they record for each other.

`build` records the content-addressed tag of each image it made (``build.json``), `publish` the registry
digest each was pushed as (``publish.json``), `up` the cluster it started (``up.json``); records.py reads and
writes them. This module is the only one that knows the folder's layout, the head image's key and the id of
this checkout.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from raybuild.config import LoadedConfig

# Relative to the project root (the folder holding raybuild.toml).
STATE_DIR = Path(".raybuild")
BUILD_RECORD = STATE_DIR / "build.json"
PUBLISH_RECORD = STATE_DIR / "publish.json"
CLUSTER_RECORD = STATE_DIR / "up.json"
DOCKERFILES_DIR = STATE_DIR / "dockerfiles"
DEFAULT_MEASURE_PATH = STATE_DIR / "measure.json"  # what `measure` always writes and `check` reads
# What a failed Serve deploy leaves behind (its whole traceback, the replica's log): its containers are gone.
LOGS_DIR = STATE_DIR / "logs"
SBOM_DIR = STATE_DIR / "sbom"  # `raybuild sbom` writes <image>.cdx.json here; `scan` and CI read them
WHEEL_HASHES = STATE_DIR / "wheel-hashes.json"  # which wheel file each lockfile hash is (see ship/wheels.py)

# The key of the head's image in every record, beside the apps': a leading underscore cannot collide with an
# app name. (Its image's name is tags.HEAD_IMAGE.)
HEAD_KEY = "_head"


def project_id(config: LoadedConfig) -> str:
    """This checkout's id, for the Docker objects it makes (engine.PROJECT_LABEL).

    A hash of the config file's absolute path: stable across runs, and different for a second checkout or
    a second config in the same folder, even when both name the same cluster.
    """
    return hashlib.sha256(str(config.path).encode()).hexdigest()[:16]


def state_dir(config: LoadedConfig) -> Path:
    return config.root / STATE_DIR


def build_record_path(config: LoadedConfig) -> Path:
    return config.root / BUILD_RECORD


def publish_record_path(config: LoadedConfig) -> Path:
    return config.root / PUBLISH_RECORD


def cluster_record_path(config: LoadedConfig) -> Path:
    """What `raybuild up` started, for `down` and the drills."""
    return config.root / CLUSTER_RECORD


def dockerfiles_dir(config: LoadedConfig) -> Path:
    return config.root / DOCKERFILES_DIR


def failure_log_path(config: LoadedConfig, command: str, app: str) -> Path:
    """Where ``command`` (test, up, measure) keeps what Serve said when ``app`` failed to deploy."""
    return config.root / LOGS_DIR / f"{command}-{app}.log"


def sbom_dir(config: LoadedConfig) -> Path:
    return config.root / SBOM_DIR


def wheel_hashes_path(config: LoadedConfig) -> Path:
    return config.root / WHEEL_HASHES
