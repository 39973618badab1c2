"""Published numbers beside ours: one report table per published table (:mod:`pipeline.report.published`).

Each cell shows the paper's value; ours computed the paper's way (its cut-off, ties in index order as the
classic reference code does: the ``paper:map@K/index`` view of the evaluate stage,
:mod:`pipeline.eval.stored`) as mean ± std over seeds with n; the tie-aware expectation beside it; the
difference ours - paper; and the setup flags that explain a gap before anyone argues about it:

* *other dataset*: the run is on a stand-in dataset named in the table's ``ours.stand_ins``;
* *other code length*: a stand-in run at the nearest code length the profile has;
* *random init*: a ``weights.*`` provenance tag of the run says a stream was randomly initialised;
* *other backbone*: ``ours.method_flags`` of the table, or a row backbone that differs;
* *fewer seeds*: fewer seeds than the paper averaged;
* the setup flags F (frozen features), B (another image network) and T (another recipe) of
  :mod:`pipeline.report.flags`.

A paper row that maps to none of our runs shows the paper's value with "not run"; a paper row without
an implementation in HashBench says so; a table whose numbers are not in our copy of the paper is listed
with the reason.

Which of our runs fill a cell is decided only by the table's explicit ``ours`` mapping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pipeline.eval.stored import Convention, view_metrics
from pipeline.report.flags import LEGEND, setup_flags
from pipeline.report.published import PublishedCell, PublishedTable, dataset_matches, our_methods

_RANDOM = ("random-init", "random init")


@dataclass
class Ours:
    values: list[float]  # per seed, the paper's convention (index-order ties)
    expected: list[float]  # per seed, tie-aware
    seeds: list[int]
    methods: list[str]
    flags: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def std(self) -> float:
        return float(np.std(self.values, ddof=1)) if self.n > 1 else 0.0


@dataclass
class CellView:
    paper: PublishedCell
    ours: Ours | None
    status: str  # "ok" | "not run" | "no implementation" | "not evaluated"

    def diff(self) -> float | None:
        return None if self.ours is None else self.ours.mean - self.paper.value


def run_flags(row: pd.Series) -> list[str]:
    """Setup flags carried by one run's tags."""
    flags = []
    weights = row.get("weights")
    if isinstance(weights, str) and any(r in weights for r in _RANDOM):
        flags.append("random init")
    # the other setup flags of pipeline/report/flags.py (R is the one above; P: stand-ins are flagged by the table)
    flags += [f"{c}: {LEGEND[c]}" for c in setup_flags(row) if c in ("F", "B", "T")]
    return flags


def _candidates(runs: pd.DataFrame, table: PublishedTable, cell: PublishedCell) -> tuple[pd.DataFrame, list[str]]:
    """Our runs for one published cell (exact code length, or the nearest for a stand-in) and the flags of the match."""
    methods = our_methods(table.spec).get(cell.method, [])
    sub = runs[runs["method"].isin(methods)] if methods and not runs.empty else runs.iloc[0:0]
    if cell.direction:
        sub = sub[sub["direction_list"].apply(lambda ds: cell.direction in ds)] if not sub.empty else sub
    best, flags = sub.iloc[0:0], []
    for (dataset, protocol), g in sub.groupby(["dataset", "protocol"]) if not sub.empty else []:
        for m in dataset_matches(table.spec, dataset, protocol):
            if m.paper_dataset != cell.dataset or m.paper_protocol != cell.protocol:
                continue
            gf = []
            exact = g[g["bits"] == cell.bits] if cell.bits else g
            if exact.empty and m.flag and cell.bits:  # a stand-in: the nearest code length we ran
                nearest = min(g["bits"].unique(), key=lambda b: (abs(b - cell.bits), -b))
                exact = g[g["bits"] == nearest]
                gf.append(f"other code length: ours {int(nearest)} bits, paper {cell.bits}")
            if not exact.empty and (best.empty or (not m.flag and flags)):
                best, flags = exact, ([m.flag] if m.flag else []) + gf
    return best, flags


def compare_cell(runs: pd.DataFrame, evals: dict[str, dict], table: PublishedTable, cell: PublishedCell) -> CellView:
    if cell.method not in table.spec.ours.methods:
        return CellView(cell, None, "no implementation")
    sub, flags = _candidates(runs, table, cell)
    if sub.empty:
        return CellView(cell, None, "not run")
    cutoff = cell.cutoff if isinstance(cell.cutoff, int) else None
    idx, exp = Convention(cutoff, "index"), Convention(cutoff, "expected")
    key = f"{cell.direction or 'i2i'}/{idx.metric}"
    values, expected, seeds = [], [], []
    for _, r in sub.iterrows():
        res = evals.get(r["suite"], {})
        a, b = view_metrics(res, r["trial_key"], idx.name), view_metrics(res, r["trial_key"], exp.name)
        if a is None or b is None or key not in a:
            continue
        values.append(float(a[key]))
        expected.append(float(b[key]))
        seeds.append(int(r["seed"]))
    if not values:
        return CellView(cell, None, "not evaluated")
    methods = sorted(set(sub["method"]))
    for m in methods:
        f = table.spec.ours.method_flags.get(m)
        if f:
            flags.append(f)
    for _, r in sub.iterrows():
        for f in run_flags(r):
            if f not in flags:
                flags.append(f)
    if table.spec.seeds and len(values) < table.spec.seeds:
        flags.append(f"fewer seeds: {len(values)} vs the paper's {table.spec.seeds}")
    return CellView(cell, Ours(values, expected, seeds, methods, flags), "ok")


def how_computed(table: PublishedTable) -> str:
    """The one-paragraph box under a table: the paper's convention and ours."""
    t = table.spec
    cut = {None: "not stated by the paper (we use the whole ranking, mAP@all)", "all": "the whole ranking (mAP@all)"}.get(t.cutoff, f"the top {t.cutoff} (mAP@{t.cutoff})")
    if t.cutoff == "all" and not t.cutoff_stated:
        cut = "not stated by the paper; read as the whole ranking (mAP@all), the convention of its baselines' code"
    ties = {"unknown": "not stated by the paper", "index": "index order (stable sort by Hamming distance)", "expected": "the tie-aware expectation"}[t.ties]
    parts = [
        f"Paper: {table.citation}; {t.source.table}" + (f", Sec. {t.source.section}" if t.source.section else "") + ".",
        f"Cut-off: {cut}. Ties in the paper: {ties}" + (f" ({t.ties_note})" if t.ties_note else "") + ".",
        "Ours: the same cut-off from the stored codes (evaluate stage), ties broken in index order (database order within a Hamming distance, "
        "as classic reference code does); 'tie-aware' is the expectation over all orders of the ties (McSherry & Najork 2008). "
        "Mean ± std over seeds (n); Δ = ours (index ties) − paper.",
    ]
    if t.protocol:
        parts.append(f"Paper protocol: {t.protocol}.")
    if t.note:
        parts.append(f"Note: {t.note}.")
    return " ".join(parts)


def _fmt(v: float, scale: int) -> str:
    return f"{v * scale:.2f}" if scale == 100 else f"{v:.4f}"


def render_table(runs: pd.DataFrame, evals: dict[str, dict], table: PublishedTable) -> dict:
    """Context for one published table: header columns, rows of cells, the how-computed box."""
    t = table.spec
    cols = []
    for c in t.columns:
        bits = c.bits or t.bits
        label = " ".join(str(x) for x in (c.dataset or t.dataset, c.protocol if c.protocol and c.protocol != t.protocol else None, c.direction or t.direction, f"{bits} bits" if bits else None) if x)
        cols.append(label or "value")
    by_row: dict[tuple, dict] = {}
    order = []
    for cell in table.cells:
        rk = (cell.method, cell.direction if any(r.direction for r in t.rows) else None)
        if rk not in by_row:
            by_row[rk] = {"method": cell.method + (f" ({cell.direction})" if rk[1] else ""), "cells": []}
            order.append(rk)
        view = compare_cell(runs, evals, table, cell)
        s = t.scale
        entry = {"paper": _fmt(cell.value, s), "status": view.status, "flags": [], "ours": None}
        if view.ours is not None:
            o = view.ours
            entry.update(
                ours=f"{_fmt(o.mean, s)} ± {_fmt(o.std, s)}",
                n=o.n,
                expected=_fmt(float(np.mean(o.expected)), s),
                diff=f"{(view.diff() or 0.0) * s:+.2f}" if s == 100 else f"{view.diff():+.4f}",
                flags=o.flags,
                methods=", ".join(o.methods),
            )
        by_row[rk]["cells"].append(entry)
    return {
        "key": table.key,
        "title": f"{table.paper.upper()} {t.source.table}: {t.title}",
        "columns": cols,
        "rows": [by_row[k] for k in order],
        "missing": t.values_missing,
        "how": how_computed(table),
        "unit": "%" if t.scale == 100 else "",
        "any_ours": any(c["ours"] for r in by_row.values() for c in r["cells"]),
    }


def prepare_runs(df: pd.DataFrame) -> pd.DataFrame:
    """The report's runs with the directions each has metrics for (``direction_list``)."""
    if df.empty:
        return df.assign(direction_list=[])
    out = df.copy()
    dirs = [c[2:].split("/")[0] for c in df.columns if c.startswith("m:") and c.endswith("/map@all") and c.count("/") == 1]
    out["direction_list"] = [[d for d in dirs if not (isinstance(r.get(f"m:{d}/map@all"), float) and math.isnan(r.get(f"m:{d}/map@all")))] for _, r in df.iterrows()]
    return out


def published_sections(df: pd.DataFrame, evals: dict[str, dict], tables: list[PublishedTable], *, only_with_runs: bool) -> list[dict]:
    """One context per published table; with ``only_with_runs`` only the tables some run of ours fills."""
    runs = prepare_runs(df)
    out = [render_table(runs, evals, t) for t in tables]
    return [s for s in out if s["any_ours"]] if only_with_runs else out
