"""The report's sanity references per (dataset, protocol): the classifier one-hot row and the leakage audit
(computed by :mod:`pipeline.eval.sanity`, cached by prepared-data manifest and evaluation settings).

:func:`collect_references` is called by the report stage; :func:`reference_rows` and :func:`leakage_table`
turn one result into what the templates show.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import pandas as pd

from pipeline.config import EvalConfig
from pipeline.core.errors import HashBenchError
from pipeline.data.formats import PreparedDataset
from pipeline.eval.sanity import dataset_sanity

log = logging.getLogger(__name__)

_MODALITY = {"i": "image", "t": "text"}
CLASSIFIER_LABEL = "classifier one-hot (reference)"


def _modalities(direction: str) -> tuple[str, str]:
    q, _, d = direction.partition("2")
    return _MODALITY.get(q, q), _MODALITY.get(d, d)


def collect_references(df: pd.DataFrame, prepared: Callable[[str], Path], eval_of: Callable[[str], EvalConfig], cache_dir: Path | None) -> dict[tuple[str, str], dict]:
    """{(dataset, protocol): sanity result} for every (dataset, protocol) of the report's runs; a dataset that is
    not prepared here gets ``{"error": ...}`` instead of failing the report."""
    out: dict[tuple[str, str], dict] = {}
    if df.empty or "protocol" not in df:
        return out
    for (dataset, protocol), g in df.dropna(subset=["dataset", "protocol"]).groupby(["dataset", "protocol"]):
        dirs = sorted({c[2:].split("/")[0] for c in g.dropna(axis=1, how="all").columns if c.startswith("m:") and c.endswith("/map@all") and c.count("/") == 1})
        try:
            ds = PreparedDataset(prepared(dataset))
            out[(dataset, protocol)] = dataset_sanity(ds, protocol, [_modalities(d) for d in dirs], eval_of(str(g["suite"].iloc[0])), cache_dir)
        except (HashBenchError, OSError, ValueError) as exc:
            log.warning("sanity references of %s/%s: %s", dataset, protocol, exc)
            out[(dataset, protocol)] = {"error": str(exc)}
    return out


def reference_rows(ref: dict | None, direction: str) -> list[dict]:
    """Rows under a headline table: the classifier's one-hot codes (independent of our code length)."""
    if not ref or "classifier" not in ref:
        return []
    c = ref["classifier"].get(direction)
    if not c:
        return []
    if "skipped" in c:
        return [{"label": CLASSIFIER_LABEL, "text": c["skipped"]}]
    return [{"label": CLASSIFIER_LABEL, "text": f"{c['map@all']:.4f}", "value": c["map@all"]}]


_PAIRS = (("query_database", "query ∩ database"), ("query_train", "query ∩ train"), ("database_train", "database ∩ train"))


def leakage_table(ref: dict | None) -> dict | None:
    """Context of the leakage box: one row per modality (and ``item``: all modalities), counts by index / content."""
    if not ref:
        return None
    if "error" in ref:
        return {"error": ref["error"], "rows": [], "columns": []}
    a = ref["leakage"]
    rows = []
    for name, m in a["modalities"].items():
        cells = [f"{m[k]['by_index']} / {m[k]['by_content']}" for k, _ in _PAIRS]
        rows.append({"modality": "all modalities" if name == "item" else name, "cells": cells, "query_duplicates": m["query_duplicates"],
                     "alarm": m["query_database"]["by_content"] > 0 or m["query_train"]["by_content"] > 0})
    notes = []
    if a["train_is_database"]:
        notes.append("database = training set (by design of this protocol)")
    elif a["train_in_database"]:
        notes.append("the training set is part of the database")
    return {"sizes": a["sizes"], "columns": [label for _, label in _PAIRS], "rows": rows, "notes": notes, "protocol": ref["leakage"]["protocol"]}
