"""Paper 000's evaluation matrix (Sec. 5): baseline, +loss, +representation (training variants) x
plain / +code (serving), every cell with mAP, NDCG@K, Recall@K and the index's build time, query latency
and memory, its change against the baseline and whether that change exceeds seed noise.

Input: the evaluate stage's results of a profile (``results/eval/<profile>/<suite>.json``), the view
``profile`` (mAP@all, exact, tie-aware) and the view ``code`` (:func:`pipeline.eval.codelayer.evaluate_code_layer`)
of every trial whose suite sets ``eval.code_layer``. A matrix suite is just a suite: its methods are the
rows, so +representation rows (or any plug-in alone or combined) are added by listing their variants in
the suite. The baseline of a row is the first method of the suite with the same registered
implementation (``baselines``, from params.yaml), e.g. ``dcmh-adam`` for ``dcmh-adam-gradbal``; the
baseline row itself with code on is the "+code" cell.

Seed noise: the change of a cell is paired over seeds (the same seed's baseline trial); it counts as
beyond noise when ``|mean d| > 2 sd(d) / sqrt(n)`` (two standard errors of the paired differences, n
seeds >= 2); the paired t-test p-value (:func:`scipy.stats.ttest_rel`) is shown beside it. With three
seeds the 2-SE rule is looser than the t-test at 0.05 (t_{0.975, 2} = 4.3): a flag is a hint, the p-value
the test. Also: the code-length table (one model, several lengths): mAP@all of the first b bits of a
K-bit model's importance-ordered code against the stored order, the reversed order, and a model trained
at b bits (same dataset, method and seed).
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

TRAIN_KEY_PARTS = ("dataset", "method", "bits", "seed")


@dataclass
class Trial:
    suite: str
    dataset: str
    method: str
    bits: int
    seed: int
    profile: dict
    code: dict | None


def parse_key(key: str) -> dict:
    """``dataset/method/16b/s0/<hash>`` -> its parts (training key layout, :meth:`TrialSpec.key`)."""
    parts = key.split("/")
    return {"dataset": parts[0], "method": parts[1], "bits": int(parts[2].rstrip("b")), "seed": int(parts[3].lstrip("s"))}


def suite_baselines(methods: list[str], implementation) -> dict[str, str]:
    """Each method's baseline: the first method of the list with the same registered implementation."""
    first: dict[str, str] = {}
    for m in methods:
        first.setdefault(implementation(m), m)
    return {m: first[implementation(m)] for m in methods}


def collect(evals: dict[str, dict]) -> list[Trial]:
    """Every evaluated trial of every suite with its profile and code views."""
    out = []
    for suite, res in evals.items():
        for key, entry in res.get("trials", {}).items():
            views = entry.get("views", {})
            get = lambda v: (res["evaluations"].get(f"{key}|{views[v]}") or {}).get("metrics") if v in views else None  # noqa: E731
            p = parse_key(key)
            out.append(Trial(suite, p["dataset"], p["method"], p["bits"], p["seed"], get("profile") or {}, get("code")))
    return out


def paired_change(base: dict[int, float], other: dict[int, float]) -> dict | None:
    """Mean paired difference over common seeds, its 2-SE noise flag and the paired t-test p-value."""
    seeds = sorted(set(base) & set(other))
    if not seeds:
        return None
    d = np.array([other[s] - base[s] for s in seeds])
    n = len(d)
    if n < 2:
        return {"mean": float(d.mean()), "n": n, "beyond": None, "p": None}
    sd = float(d.std(ddof=1))
    beyond = bool(abs(d.mean()) > 2 * sd / math.sqrt(n)) if sd > 0 else bool(d.mean() != 0)
    p = float(stats.ttest_rel(np.array([other[s] for s in seeds]), np.array([base[s] for s in seeds])).pvalue) if sd > 0 else (0.0 if d.mean() != 0 else 1.0)
    return {"mean": float(d.mean()), "n": n, "beyond": beyond, "p": p}


def _fmt(values: list[float], scale: float = 1.0, digits: int = 4) -> str:
    if not values:
        return "–"
    v = np.asarray(values) * scale
    sd = float(v.std(ddof=1)) if len(v) > 1 else 0.0
    return f"{v.mean():.{digits}g} ± {sd:.2g}" if digits != 4 else f"{v.mean():.4f} ± {sd:.4f}"


def _change_cell(ch: dict | None) -> str:
    if ch is None:
        return "–"
    flag = "" if ch["beyond"] is None else (" *" if ch["beyond"] else "")
    p = "" if ch["p"] is None else f" (p {ch['p']:.2g})"
    return f"{ch['mean']:+.4f}{flag}{p}"


def matrix_rows(trials: list[Trial], suite: str, direction: str, baselines: dict[str, str], k: int) -> list[dict]:
    """Rows (method, serving) of one suite and direction with metric cells and changes vs the baseline."""
    mine = [t for t in trials if t.suite == suite and t.code]
    methods = list(dict.fromkeys(baselines.get(t.method, t.method) for t in mine)) + [t.method for t in mine]
    methods = list(dict.fromkeys(methods))
    metric_keys = [f"map@{k}", f"ndcg@{k}", f"r@{k}"]
    idx = {"plain": "plain/index/flat", "code": "code/index/codelayer"}

    def series(method: str, serving: str, key: str) -> dict[int, float]:
        out = {}
        for t in mine:
            v = t.code.get(f"{direction}/{serving}/{key}") if t.method == method else None
            if v is not None:
                out[t.seed] = v
        return out

    rows = []
    for method in methods:
        base = baselines.get(method, method)
        for serving in ("plain", "code"):
            cells, changes = [], []
            for mk in metric_keys:
                s = series(method, serving, mk)
                cells.append(_fmt(list(s.values())))
                changes.append(_change_cell(paired_change(series(base, "plain", mk), s)) if (method, serving) != (base, "plain") else "baseline")
            mall = {t.seed: t.profile.get(f"{direction}/map@all") for t in mine if t.method == method and t.profile.get(f"{direction}/map@all") is not None}
            cells.insert(0, _fmt(list(mall.values())) if serving == "plain" else "= plain")
            for key, scale in (("build_seconds", 1000.0), ("latency_p50_ms", 1.0), ("memory_bytes", 1 / 1024), ("recall_at_k", 1.0)):
                s = series(method, idx[serving].split("/", 1)[0], idx[serving].split("/", 1)[1] + "/" + key)
                cells.append(_fmt(list(s.values()), scale, 3))
            label = method if method == base else f"{method} (vs {base})"
            rows.append({"row": label + (" +code" if serving == "code" else ""), "cells": cells, "changes": changes, "n": len(series(method, serving, metric_keys[0]))})
    return rows


def codelength_rows(trials: list[Trial], direction: str) -> list[dict]:
    """One model, several code lengths: prefix mAP@all of K-bit models against models trained at b bits."""
    rows = []
    groups: dict[tuple, list[Trial]] = {}
    for t in trials:
        if t.code and any(k.startswith(f"{direction}/prefix") for k in t.code):
            groups.setdefault((t.dataset, t.method, t.bits), []).append(t)
    for (dataset, method, bits), ts in sorted(groups.items()):
        for b in range(8, bits, 8):
            trained = {t.seed: t.profile.get(f"{direction}/map@all") for t in trials if (t.dataset, t.method, t.bits) == (dataset, method, b) and t.profile.get(f"{direction}/map@all") is not None}
            full = {t.seed: t.profile.get(f"{direction}/map@all") for t in ts if t.profile.get(f"{direction}/map@all") is not None}
            cols = {tag: {t.seed: t.code[f"{direction}/prefix{b}{tag}/map@all"] for t in ts if f"{direction}/prefix{b}{tag}/map@all" in t.code} for tag in ("", "_natural", "_reverse")}
            rows.append({
                "row": f"{dataset} {method} {bits} -> {b} bits",
                "cells": [_fmt(list(full.values())), _fmt(list(cols[""].values())), _fmt(list(cols["_natural"].values())), _fmt(list(cols["_reverse"].values())), _fmt(list(trained.values()))],
                "changes": [_change_cell(paired_change(cols["_natural"], cols[""])), _change_cell(paired_change(trained, cols[""]))],
            })
    return rows


INDEXES = (
    ("plain/index/flat", "faiss IndexBinaryFlat (exhaustive)"),
    ("code/index/multihash_nflip1", "faiss IndexBinaryMultiHash, m tables, nflip 1"),
    ("code/index/multihash_nflip2", "faiss IndexBinaryMultiHash, m tables, nflip 2"),
    ("code/index/codelayer", "code layer: ordered bits, learned probe order, budget"),
    ("code/index/mih_exact", "code layer multi-index, full budget (exact)"),
)
INDEX_COLS = (("build_seconds", 1000.0), ("latency_p50_ms", 1.0), ("latency_p95_ms", 1.0), ("batch_qps", 1.0), ("memory_bytes", 1 / 1024), ("recall_at_k", 1.0), ("mean_candidates", 1.0))


def index_rows(trials: list[Trial], suite: str, direction: str) -> list[dict]:
    """The indexes on the same codes, figures averaged over the suite's trials (every method and seed)."""
    mine = [t for t in trials if t.suite == suite and t.code]
    rows = []
    for prefix, label in INDEXES:
        cells = []
        for key, scale in INDEX_COLS:
            vals = [t.code[f"{direction}/{prefix}/{key}"] for t in mine if f"{direction}/{prefix}/{key}" in t.code]
            cells.append(f"{np.mean(vals) * scale:.3g}" if vals else "–")
        if any(c != "–" for c in cells):
            rows.append({"row": label, "cells": cells})
    return rows


def _table(head: list[str], rows: list[dict]) -> str:
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for r in rows:
        out.append("<tr><td>" + html.escape(r["row"]) + "</td>" + "".join(f"<td>{html.escape(c)}</td>" for c in r["cells"] + r.get("changes", [])) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def render_matrix(evals: dict[str, dict], baselines: dict[str, dict[str, str]], k: int = 100) -> str:
    """The report section (HTML), empty when no trial has the code view. ``baselines[suite][method]``."""
    trials = collect(evals)
    suites = sorted({t.suite for t in trials if t.code})
    if not suites:
        return ""
    parts = ["<h2>Evaluation matrix (paper 000, Sec. 5)</h2>",
             f"<p>Rows: training variants of a suite (baseline, +loss, +representation when listed), each served plain "
             f"(exhaustive faiss IndexBinaryFlat) and +code (importance-ordered budgeted multi-index, pipeline/eval/codelayer.py). "
             f"Top-{k} served lists, ties by database index; mAP@all from the exact tie-aware evaluation. Mean ± sd over seeds; "
             f"change = paired difference against the baseline's plain cell, * = beyond seed noise (|mean d| &gt; 2 sd(d)/sqrt(n)), "
             f"p = paired t-test. Index latency of the code layer is Python per query (faiss is C++).</p>"]
    dirs = sorted({k_.split("/")[0] for t in trials if t.code for k_ in t.code})
    for suite in suites:
        for d in dirs:
            rows = matrix_rows(trials, suite, d, baselines.get(suite, {}), k)
            if not rows or all(r["n"] == 0 for r in rows):
                continue
            head = ["cell", "mAP@all", f"mAP@{k}", f"NDCG@{k}", f"R@{k}", "build (ms)", "query p50 (ms)", "memory (KiB)", f"recall@{k} vs exact",
                    f"Δ mAP@{k}", f"Δ NDCG@{k}", f"Δ R@{k}"]
            parts.append(f"<h3>{html.escape(suite)}: {html.escape(d)}</h3>" + _table(head, rows))
            ihead = ["index (same codes)", "build (ms)", "query p50 (ms)", "query p95 (ms)", "batch (queries/s)", "memory (KiB)", f"recall@{k} vs exact", "candidates / query"]
            parts.append(_table(ihead, index_rows(trials, suite, d)))
    for d in dirs:
        rows = codelength_rows(trials, d)
        if rows:
            head = ["model -> served length", "mAP@all, full code", "first b bits, importance order", "first b bits, stored order", "first b bits, reversed importance", "model trained at b bits",
                    "Δ importance vs stored", "Δ importance vs trained at b"]
            parts.append(f"<h3>One model, several code lengths: {html.escape(d)}</h3>" + _table(head, rows))
    return "\n".join(parts)
