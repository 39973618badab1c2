"""Shared fixtures: a project root with params.yaml in a temp dir, prepared embedded datasets."""

from __future__ import annotations

import copy
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
    from pipeline.core.paths import ProjectPaths

    root = tmp_path_factory.mktemp("project")
    paths = ProjectPaths.at(root)
    for name in ("wikipedia", "digits", "synthetic"):
        spec = get_dataset(name)
        params = spec.Params()
        spec.fetch(params, paths.raw(name))
        spec.prepare(params, paths.raw(name), paths.prepared(name))
    return root


@pytest.fixture
def one_torch_thread():
    """Tiny models: one intra-op thread is faster, and immune to oversubscription on a busy machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def trial_spec(tmp_path, repo_params, method, bits, epochs, seed=0, method_params=None, dataset="digits"):
    """A TrialSpec for one method on a prepared dataset, built through the real config path."""
    from pipeline.config import expand_suite, load_params

    p = copy.deepcopy(repo_params)
    p["methods"][method] = dict(method_params or {})
    p["suites"] = {
        "t": {"profile": "demo", "dataset": dataset, "methods": [method], "bits": [bits], "seeds": [seed], "train": {"epochs": epochs}}
    }
    return expand_suite(load_params(write_params(tmp_path, p)), "t")[0]
