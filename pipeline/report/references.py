"""The report's sanity references per (dataset, protocol): the classifier one-hot row and the leakage audit,
computed by the evaluate stage (:func:`pipeline.eval.sanity.profile_sanity`, written to
``results/eval/<profile>/_references.json``). :func:`load_references` reads that file; :func:`reference_rows`
and :func:`leakage_table` turn one result into what the templates show.
"""

from __future__ import annotations

import json
from pathlib import Path

CLASSIFIER_LABEL = "classifier one-hot (reference)"


def load_references(path: Path) -> dict[tuple[str, str], dict]:
    """The evaluate stage's ``_references.json`` as {(dataset, protocol): result}; empty when the file is absent."""
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return {tuple(k.split("/", 1)): v for k, v in data.items()}


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
