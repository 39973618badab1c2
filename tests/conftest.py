"""Shared fixtures: a project root with params.yaml in a temp dir, prepared embedded datasets."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")


@pytest.fixture
def repo_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def write_params(root: Path, params: dict) -> Path:
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def prepared_root(tmp_path_factory) -> Path:
    """A project root with wikipedia, digits and synthetic fetched and prepared (once per session)."""
    from pipeline.data.registry import get_dataset
    from pipeline.paths import ProjectPaths

    root = tmp_path_factory.mktemp("project")
    paths = ProjectPaths.at(root)
    for name in ("wikipedia", "digits", "synthetic"):
        spec = get_dataset(name)
        params = spec.Params()
        spec.fetch(params, paths.raw(name))
        spec.prepare(params, paths.raw(name), paths.prepared(name))
    return root
