"""Runs -> tables and plots -> ``reports/``: a self-contained HTML page (no CDN, opens offline),
``metrics.json`` for ``dvc metrics show`` and P-R curve data for ``dvc plots show``."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.report.collect import ProfileRuns
from pipeline.data.registry import get_dataset
from pipeline.report.compare import published_sections
from pipeline.report.flags import label_methods, legend_items, method_flags
from pipeline.report.common import DIRECTION_TITLES, TEMPLATES, environment, write_atomic
from pipeline.report.incremental import render_incremental
from pipeline.report.longtail import render_longtail
from pipeline.report.sensitivity import render_sections
from pipeline.report.plots import Series, line_svg
from pipeline.report.references import leakage_table, reference_rows
from pipeline.report.stats import best_vs_runner_up, correct, t_interval

@dataclass
class Table:
    title: str
    metric: str
    columns: list[int]
    rows: list[dict]  # {"method", "cells": [{"text", "best", "top_ns", "n"}]}
    tests: list[str] | None = None  # per column: the best-vs-runner-up test
    any_bold: bool = False


def metric_columns(df: pd.DataFrame, direction: str) -> list[str]:
    """Ranking metrics logged for ``direction`` (``m:<dir>/<metric>``), mAP@all first."""
    prefix = f"m:{direction}/"
    names = [c[len(prefix):] for c in df.columns if c.startswith(prefix) and "/index/" not in c and "/random/" not in c]

    def order(n: str):
        head = n.split("@")[0]
        rank = ["map", "ndcg", "p", "r"].index(head) if head in ("map", "ndcg", "p", "r") else 9
        tail = n.split("@")[1] if "@" in n else ""
        return (rank, tail != "all", len(tail), tail)

    return sorted(names, key=order)


def directions_of(df: pd.DataFrame) -> list[str]:
    seen = []
    for c in df.columns:
        if c.startswith("m:") and "/" in c:
            d = c[2:].split("/")[0]
            if d in DIRECTION_TITLES and d not in seen:
                seen.append(d)
    return seen


def summary_table(df: pd.DataFrame, direction: str, metric: str) -> Table:
    """method x bits, mean ± std over seeds with the 95% t-interval; per column the best mean against the
    runner-up by a paired test over their shared seeds (:mod:`pipeline.report.stats`), Holm-corrected over the
    table's columns: bold only where the adjusted p < α."""
    col = f"m:{direction}/{metric}"
    sub = df.dropna(subset=[col])
    bits = sorted(sub["bits"].unique().tolist())
    stats = sub.groupby(["method", "bits"])[col].agg(["mean", "std", "count"])
    raw = []
    for b in bits:
        groups = dict(tuple(sub[sub["bits"] == b].groupby("method")))
        seeds = {m: g["seed"].astype(int).tolist() for m, g in groups.items()} if "seed" in sub else None
        raw.append(best_vs_runner_up({m: g[col].tolist() for m, g in groups.items()}, seeds))
    tests = dict(zip(bits, correct(raw)))
    rows = []
    for method in sorted(sub["method"].unique()):
        cells = []
        for b in bits:
            if (method, b) not in stats.index:
                cells.append({"text": "–", "best": False, "n": 0, "ci": ""})
                continue
            s = stats.loc[(method, b)]
            std = 0.0 if (isinstance(s["std"], float) and math.isnan(s["std"])) else float(s["std"])
            ci = t_interval(sub[(sub["method"] == method) & (sub["bits"] == b)][col])
            t = tests[b]
            top = t.best == method
            cells.append({"text": f"{s['mean']:.4f} ± {std:.4f}", "best": top and t.significant, "top_ns": top and not t.significant and t.runner_up is not None,
                          "n": int(s["count"]), "ci": f"[{ci[0]:.4f}, {ci[1]:.4f}]" if ci else ""})
        rows.append({"method": method, "cells": cells})
    table = Table(title=f"{DIRECTION_TITLES.get(direction, direction)}: {metric}", metric=metric, columns=bits, rows=rows)
    table.tests = [f"{b} bits: {tests[b].note()}" for b in bits]
    table.any_bold = any(t.significant for t in tests.values())
    return table


def pr_svg(curves: list[tuple[str, np.ndarray, np.ndarray]], width: int = 520, height: int = 260) -> str:
    """Precision (y) against recall (x), one polyline per series, legend beside the plot."""
    series = [Series(label, [float(r) for r in recall], [float(p) for p in precision]) for label, recall, precision in curves]
    return line_svg(series, kind="pr", x_label="recall", y_label="precision", width=width, height=height, y_range=(0.0, 1.0))


def map_vs_bits_svg(df: pd.DataFrame, direction: str, metric: str = "map@all") -> str:
    """mAP against code length per method: mean over seeds with the 95% t-interval (clipped to [0, 1]) as a band."""
    col = f"m:{direction}/{metric}"
    if col not in df:
        return ""
    series = []
    for method, g in df.dropna(subset=[col]).groupby("method"):
        xs, ys, lo, hi = [], [], [], []
        for b, gg in sorted(g.groupby("bits"), key=lambda kv: kv[0]):
            ci = t_interval(gg[col]) or (float(gg[col].mean()),) * 2
            xs.append(int(b)), ys.append(float(gg[col].mean())), lo.append(max(0.0, ci[0])), hi.append(min(1.0, ci[1]))  # mAP lives in [0, 1]
        series.append(Series(str(method), xs, ys, lo, hi))
    return line_svg(series, kind="map-vs-bits", x_label="code length (bits), 95% CI band over seeds", y_label=metric, x_log2=True)


def precision_at_k_svg(df: pd.DataFrame, direction: str) -> str:
    """Precision@K against K from the logged cut-offs (``p@K``), per method and code length; needs two cut-offs."""
    prefix = f"m:{direction}/p@"
    ks = sorted(int(c[len(prefix):]) for c in df.columns if c.startswith(prefix) and c[len(prefix):].isdigit())
    if len(ks) < 2:
        return ""
    series = []
    for (method, bits), g in df.groupby(["method", "bits"]):
        ys = [float(g[f"{prefix}{k}"].mean()) for k in ks]
        series.append(Series(f"{method} {int(bits)}b", ks, ys))
    return line_svg(series, kind="precision-at-k", x_label="K (top-K retrieved)", y_label="precision@K", y_range=(0.0, 1.0))


def loss_figures(runs: ProfileRuns, g: pd.DataFrame) -> list[dict]:
    """Per method (its largest code length): every logged loss term per epoch, mean over seeds (MLflow history)."""
    out = []
    histories = getattr(runs, "histories", {}) or {}
    for method, gm in g.groupby("method"):
        bits = int(gm["bits"].max())
        hs = [histories.get(r) for r in gm[gm["bits"] == bits]["run_id"]]
        hs = [h for h in hs if h]
        if not hs:
            continue
        terms = sorted({k for h in hs for e in h for k in e if k.startswith("loss/")})
        series = []
        for term in terms:
            by_epoch: dict[int, list[float]] = {}
            for h in hs:
                for e in h:
                    if term in e and e[term] is not None:
                        by_epoch.setdefault(int(e["epoch"]), []).append(float(e[term]))
            ep = sorted(by_epoch)
            series.append(Series(term[len("loss/"):], ep, [float(np.mean(by_epoch[k])) for k in ep]))
        svg = line_svg(series, kind="loss", x_label="epoch", y_label="loss term (mean over seeds)")
        if svg:
            out.append({"method": method, "bits": bits, "n": len(hs), "svg": svg})
    return out


def mean_curves(runs: ProfileRuns, sub: pd.DataFrame, direction: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"method bits": (recall, precision)} averaged over seeds (curves share the radius axis)."""
    out = {}
    for (method, bits), g in sub.groupby(["method", "bits"]):
        rs, ps = [], []
        for run_id in g["run_id"]:
            c = runs.curves.get(run_id, {}).get(direction)
            if c:
                rs.append(np.asarray(c["recall"], dtype=float))
                ps.append(np.asarray(c["precision"], dtype=float))
        if rs and all(len(r) == len(rs[0]) for r in rs):
            out[f"{method} {bits}b"] = (np.mean(rs, axis=0), np.nanmean(ps, axis=0))
    return out


def detail_table(g: pd.DataFrame, direction: str, metrics: list[str]) -> dict:
    """Rows (method, bits), one column per metric, mean ± std over seeds."""
    rows = []
    for (method, bits), gg in g.groupby(["method", "bits"]):
        cells = []
        for m in metrics:
            v = gg[f"m:{direction}/{m}"].dropna()
            std = float(v.std(ddof=1)) if len(v) > 1 else 0.0
            cells.append(f"{v.mean():.4f} ± {std:.4f}" if len(v) else "–")
        rows.append({"method": method, "bits": int(bits), "n": int(len(gg)), "cells": cells})
    return {"columns": metrics, "rows": rows}


INDEX_FIGURES = (
    ("build_seconds", "build (ms)", 1000.0),
    ("latency_p50_ms", "query p50 (ms)", 1.0),
    ("latency_p95_ms", "query p95 (ms)", 1.0),
    ("batch_qps", "batch (queries/s)", 1.0),
    ("memory_bytes", "memory (KiB)", 1 / 1024),
    ("recall_at_k", "recall@k vs flat", 1.0),
)


def index_table(g: pd.DataFrame, direction: str) -> list[dict]:
    """Rows (method, bits, index kind) with the index figures averaged over seeds."""
    prefix = f"m:{direction}/index/"
    kinds = sorted({c[len(prefix):].split("/")[0] for c in g.columns if c.startswith(prefix)})
    rows = []
    for (method, bits), gg in g.groupby(["method", "bits"]):
        for kind in kinds:
            cells = []
            for key, _, scale in INDEX_FIGURES:
                col = f"{prefix}{kind}/{key}"
                cells.append(f"{gg[col].mean() * scale:.4g}" if col in gg and gg[col].notna().any() else "–")
            rows.append({"method": method, "bits": int(bits), "kind": kind, "cells": cells})
    return rows


def initialisation_notes(g: pd.DataFrame) -> dict[str, list[str]]:
    """Where each method's image network started from (the runs' ``hashbench.init`` tags): ``random`` lists
    the methods with a randomly initialised pixel backbone (every paper here starts from ImageNet weights),
    ``other`` the remaining distinct setups (pretrained weights, frozen features)."""
    out: dict[str, list[str]] = {"random": [], "other": []}
    if "init" not in g:
        return out
    for (method, init), _ in g.dropna(subset=["init"]).groupby(["method", "init"]):
        (out["random"] if str(init).startswith("random-init") else out["other"]).append(f"{method}: {init}")
    return out


def paper_cutoff(dataset: str, g: pd.DataFrame):
    """The paper's mAP convention of the group's protocol (:meth:`pipeline.data.registry.DatasetSpec.map_cutoff`), or None."""
    protocols = set(g["protocol"].dropna()) if "protocol" in g else set()
    if len(protocols) != 1:
        return None
    try:
        return get_dataset(dataset).map_cutoff(protocols.pop())
    except Exception:  # noqa: BLE001 - a dataset no longer registered: no convention to show
        return None


def build_report(
    runs: ProfileRuns,
    out_dir: Path,
    *,
    title: str,
    notes: dict[str, str],
    searches: list | None = None,
    published: list | None = None,
    evals: dict[str, dict] | None = None,
    all_published: bool = False,
    references: dict[tuple[str, str], dict] | None = None,
    matrix: str = "",
) -> Path:
    """Write index.html, metrics.json and plots/*.json under ``out_dir``; return the HTML path.

    ``searches`` (:class:`pipeline.report.sensitivity.Search`) add the hyperparameter sensitivity section;
    ``published`` (:class:`pipeline.report.published.PublishedTable`) with ``evals`` (the evaluate stage's
    results per suite) the published-numbers section: every table with ``all_published``, else only the
    tables some run fills. ``references`` (:func:`pipeline.report.references.collect_references`) add the
    classifier one-hot row under each headline table and the leakage audit of each section."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "plots").mkdir(exist_ok=True)
    df = runs.runs
    sections, metrics_json = [], {}
    # incremental-protocol trials have their own section (pipeline/report/incremental.py)
    plain = df[df["incremental_new"].isna()] if "incremental_new" in df else df
    if not plain.empty:
        for (suite, dataset), g in plain.groupby(["suite", "dataset"], sort=True):
            g = g.dropna(axis=1, how="all")  # columns of other datasets' directions
            section = {"suite": suite, "dataset": dataset, "directions": [], "n_runs": len(g)}
            protocol = str(g["protocol"].iloc[0]) if "protocol" in g else None
            ref = (references or {}).get((dataset, protocol))
            section["leakage"] = leakage_table(ref)
            metrics_json[suite] = {}
            cut = paper_cutoff(dataset, g)
            gl = label_methods(g)  # method names with their setup flags (pipeline/report/flags.py), for display
            section["flags"] = legend_items({c for fs in method_flags(g).values() for c in fs})
            section["paper_cutoff"] = cut.source if cut is not None else None
            for d in directions_of(g):
                names = metric_columns(g, d)
                headline = summary_table(gl, d, "map@all")
                paper = summary_table(gl, d, cut.metric) if cut is not None and cut.k and f"m:{d}/{cut.metric}" in g else None
                curves = mean_curves(runs, gl, d)
                plot_rows = [
                    {"series": label, "recall": float(r), "precision": float(p)}
                    for label, (rec, prec) in curves.items()
                    for r, p in zip(rec, prec)
                    if np.isfinite(p)
                ]
                (out_dir / "plots" / f"pr_{suite}_{d}.json").write_text(json.dumps(plot_rows, indent=0))
                random_col = f"m:{d}/random/map@all"
                section["directions"].append(
                    {
                        "name": d,
                        "title": DIRECTION_TITLES.get(d, d),
                        "headline": headline,
                        "paper": paper,
                        "detail": detail_table(gl, d, [m for m in names if m != "map@all"]),
                        "svg": pr_svg([(k, v[0], v[1]) for k, v in curves.items()]) if curves else "",
                        "map_svg": map_vs_bits_svg(gl, d),
                        "pk_svg": precision_at_k_svg(gl, d),
                        "index_rows": index_table(gl, d),
                        "index_cols": [label for _, label, _ in INDEX_FIGURES],
                        "random_map": float(g[random_col].mean()) if random_col in g else None,
                        "references": reference_rows(ref, d),
                    }
                )
                for (method, bits), gg in g.groupby(["method", "bits"]):
                    entry = metrics_json[suite].setdefault(method, {}).setdefault(f"{int(bits)}bits", {}).setdefault(d, {})
                    for m in names:
                        entry[m] = round(float(gg[f"m:{d}/{m}"].mean()), 6)
            section["losses"] = loss_figures(runs, g)
            section["overhead"] = _overhead(g)
            section["init"] = initialisation_notes(g)
            section["provenance"] = {
                key: sorted(set(g[col].dropna())) if col in g else []
                for key, col in (("commits", "git_commit"), ("dirty", "git_dirty"), ("devices", "device"), ("manifests", "manifest"), ("ties", "ties"), ("ap_norm", "ap_norm"))
            }
            sections.append(section)
    env = environment()

    context = {"title": title, "sections": sections, "runs": runs, "notes": notes, "sensitivity": render_sections(searches or [])}

    context["longtail"] = render_longtail(label_methods(plain))
    context["published"] = render_published(plain, evals or {}, published or [], runs.profile, all_published)

    context["incremental"] = render_incremental(label_methods(df))
    context["flag_legend"] = legend_items()
    context["matrix"] = matrix  # paper 000's evaluation matrix (pipeline/report/matrix.py), rendered by the caller
    write_atomic(out_dir / "_body.html", env.get_template("body.html.j2").render(**context))
    html_path = out_dir / "index.html"
    write_atomic(html_path, env.get_template("page.html.j2").render(**context))
    (out_dir / "metrics.json").write_text(json.dumps(metrics_json, indent=2, sort_keys=True) + "\n")
    return html_path


def render_published(df: pd.DataFrame, evals: dict[str, dict], tables: list, profile: str, all_published: bool) -> str:
    if not tables:
        return ""
    shown = published_sections(df, evals, tables, only_with_runs=not all_published)
    hidden = sorted({f"{t.paper.upper()} {t.spec.source.table}" for t in tables} - {s["title"].split(":")[0] for s in shown})
    return environment().get_template("published.html.j2").render(tables=shown, hidden=hidden, profile=profile)


def build_landing(reports: Path, profiles: list[str]) -> Path:
    """``reports/index.html``: every profile's report body that exists, on one self-contained page."""
    bodies = [(reports / p / "_body.html").read_text() for p in profiles if (reports / p / "_body.html").is_file()]
    page = environment().get_template("page.html.j2").render(title="HashBench reports", profiles=bodies)
    reports.mkdir(parents=True, exist_ok=True)
    write_atomic(reports / "index.html", page)
    return reports / "index.html"


def _overhead(g: pd.DataFrame) -> dict[str, float] | None:
    cols = ["m:trial_wall_seconds", "m:train_seconds", "m:eval_seconds", "m:overhead_seconds"]
    if not all(c in g for c in cols):
        return None
    return {c[2:]: float(g[c].mean()) for c in cols}
