"""Sensitivity of a ``hashbench tune`` search: the validation metric against each searched
hyperparameter, one small scatter per parameter (log x for ``loguniform``), like the sensitivity
figures of the hashing papers, plus the best configuration against params.yaml's default.

The searches are read back from MLflow (``<prefix>/tune/<dataset>/<method>-<bits>`` experiments: one
parent run per search, every trial a child run), so the profile report (``hashbench report``) and the
page ``hashbench tune`` writes (``reports/tune/<dataset>-<method>-<bits>.html``) show the same thing.
A trial's value is the last validation metric it logged: the final evaluation for a finished trial,
the last per-epoch evaluation for one ASHA stopped early (drawn hollow).
"""

from __future__ import annotations

import ast
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.report.common import environment, write_atomic
from pipeline.train import tracking

BLUE, ORANGE, RED, BLACK = "#1f77b4", "#ff7f0e", "#d62728", "#222222"
STATUS = {"FINISHED": "finished", "KILLED": "stopped_early", "FAILED": "failed", "RUNNING": "interrupted", "SCHEDULED": "interrupted"}
VALIDATION_NOTE = "validation split of the training set; reporting queries untouched"


@dataclass
class Search:
    """One finished search (or sweep) as the report shows it."""

    name: str
    dataset: str
    method: str
    bits: int
    metric: str
    mode: str = "max"
    algorithm: str = ""
    schedule: str = ""
    validation: str = ""
    space: dict[str, Any] = field(default_factory=dict)
    default: dict[str, Any] = field(default_factory=dict)
    trials: list[dict[str, Any]] = field(default_factory=list)  # {"config", "value", "status", "error", "default"}
    parent_run_id: str = ""

    @property
    def scored(self) -> list[dict[str, Any]]:
        """Trials with a value to plot (a failed or interrupted trial's partial values are not shown)."""
        return [t for t in self.trials if t["status"] not in ("failed", "interrupted") and t["value"] is not None and math.isfinite(t["value"])]

    @property
    def best(self) -> dict[str, Any] | None:
        done = [t for t in self.scored if t["status"] == "finished"]
        if not done:
            return None
        return (max if self.mode == "max" else min)(done, key=lambda t: t["value"])

    @property
    def default_trial(self) -> dict[str, Any] | None:
        return next((t for t in self.trials if t.get("default")), None)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.trials:
            out[t["status"]] = out.get(t["status"], 0) + 1
        return out


def _json_or_literal(text: str | None, fallback: Any) -> Any:
    if not text:
        return fallback
    try:
        return json.loads(text)
    except ValueError:
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return fallback


def collect_searches(uri: str, experiment_prefix: str, datasets: set[str] | None = None) -> list[Search]:
    """Every finished search in the MLflow store (of ``datasets`` when given), sorted by name."""
    c = tracking.client(uri)
    out = []
    for exp in c.search_experiments(filter_string=f"name LIKE '{experiment_prefix}/tune/%'"):
        parts = exp.name[len(experiment_prefix) + len("/tune/") :].split("/")
        if len(parts) != 2 or (datasets is not None and parts[0] not in datasets):
            continue
        dataset, method_bits = parts
        method, _, bits = method_bits.rpartition("-")
        parents = c.search_runs([exp.experiment_id], filter_string="tags.`hashbench.tune_parent` = '1' and attributes.status = 'FINISHED'")
        for parent in parents:
            out.append(_search_of(c, exp.experiment_id, parent, dataset, method, int(bits) if bits.isdigit() else 0))
    return sorted(out, key=lambda s: s.name)


def _search_of(c, exp_id: str, parent, dataset: str, method: str, bits: int) -> Search:
    tags = parent.data.tags
    metric = tags.get("hashbench.metric", "")
    logged = tracking.metric_name(metric)
    children = c.search_runs([exp_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'", max_results=10_000)
    # a trial that a resumed search ran again (Tuner.restore reruns unfinished trials) counts once: its last run
    latest: dict[str, Any] = {}
    for run in sorted(children, key=lambda r: r.info.start_time or 0):
        latest[run.data.tags.get("hashbench.tune_trial_id") or run.info.run_id] = run
    trials = []
    for run in latest.values():
        rt = run.data.tags
        value = run.data.metrics.get(logged)
        trials.append(
            {
                "config": _json_or_literal(rt.get("hashbench.tune_sample"), {}),
                "value": None if value is None else float(value),
                "status": "interrupted" if rt.get("hashbench.tune_status") == "interrupted" else STATUS.get(run.info.status, run.info.status.lower()),
                "error": rt.get("hashbench.error"),
                "default": rt.get("hashbench.tune_default") == "1",
                "seed": rt.get("hashbench.seed"),
            }
        )
    space = _json_or_literal(tags.get("hashbench.tune_space"), {})
    if not space:  # searches written before the space was recorded: the names the trials sampled
        space = {k: {} for t in trials for k in t["config"]}
    return Search(
        name=tags.get("hashbench.tune_search", parent.info.run_name or ""),
        dataset=tags.get("hashbench.dataset", dataset),
        method=tags.get("hashbench.method", method),
        bits=int(tags.get("hashbench.bits", bits)),
        metric=metric,
        mode=tags.get("hashbench.mode", "max"),
        algorithm=tags.get("hashbench.search", ""),
        schedule=tags.get("hashbench.tune_schedule", ""),
        validation=tags.get("hashbench.validation", ""),
        space=space,
        default=_json_or_literal(tags.get("hashbench.tune_default"), {}),
        trials=trials,
        parent_run_id=parent.info.run_id,
    )


def load_search(uri: str, experiment_id: str, parent_run_id: str) -> Search:
    """The search whose parent run is ``parent_run_id`` (what ``hashbench tune`` renders when it ends)."""
    c = tracking.client(uri)
    exp = c.get_experiment(experiment_id)
    parent = c.get_run(parent_run_id)
    method_bits = exp.name.rsplit("/", 1)[-1]
    method, _, bits = method_bits.rpartition("-")
    dataset = exp.name.rsplit("/", 2)[-2]
    return _search_of(c, experiment_id, parent, dataset, method, int(bits) if bits.isdigit() else 0)


# -- the figures --------------------------------------------------------------------------------------


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def axis_kind(dist: dict[str, Any], values: list[Any]) -> str:
    """"log", "linear" or "categorical" x axis for a searched parameter's distribution."""
    kind = next(iter(dist), None) if dist else None
    if kind == "loguniform":
        return "log"
    if kind in ("uniform", "randint"):
        return "linear"
    if not values or not all(_is_num(v) for v in values):
        return "categorical"
    positive = [v for v in values if v > 0]
    # choice/grid of numbers: log x when they span two decades or more (0 is drawn a decade below the rest)
    return "log" if len(positive) >= 2 and max(positive) / min(positive) >= 100 else "linear"


def scatter_svg(xs: list, ys: list, marks: list[dict], *, xlabel: str, ylabel: str, axis: str = "linear", categories: list | None = None,
                bounds: tuple[float, float] | None = None, width: int = 300, height: int = 220) -> str:
    """A small inline SVG scatter of ``ys`` against ``xs``; ``marks[i]`` = {"color", "hollow", "ring"};
    ``bounds``: the searched range, which the x axis then spans (with the points)."""
    pad_l, pad_r, pad_t, pad_b = 46, 12, 12, 34
    w, h = width - pad_l - pad_r, height - pad_t - pad_b
    if axis == "categorical":
        cats = [str(c) for c in (categories or sorted({str(x) for x in xs}))]
        for x in xs:
            if str(x) not in cats:
                cats.append(str(x))
        tx = [float(cats.index(str(x))) for x in xs]
        lo, hi = -0.5, len(cats) - 0.5
    else:
        if axis == "log":
            pos = [float(x) for x in xs if x > 0]
            floor = math.log10(min(pos)) - 1 if pos else -1.0
            tx = [math.log10(x) if x > 0 else floor for x in xs]
        else:
            tx = [float(x) for x in xs]
        ends = list(tx)
        if bounds is not None and (axis != "log" or min(bounds) > 0):
            ends += [math.log10(b) if axis == "log" else float(b) for b in bounds]
        lo, hi = (min(ends), max(ends)) if ends else (0.0, 1.0)
        span = hi - lo
        lo, hi = (lo - 0.5, hi + 0.5) if span < 1e-12 else (lo - 0.05 * span, hi + 0.05 * span)
    finite = [y for y in ys if y is not None and math.isfinite(y)]
    ylo, yhi = (min(finite), max(finite)) if finite else (0.0, 1.0)
    yspan = yhi - ylo
    ylo, yhi = (ylo - 0.05, yhi + 0.05) if yspan < 1e-12 else (ylo - 0.08 * yspan, yhi + 0.08 * yspan)

    def sx(v: float) -> float:
        return pad_l + (v - lo) / (hi - lo) * w

    def sy(v: float) -> float:
        return pad_t + (1 - (v - ylo) / (yhi - ylo)) * h

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" class="sens">']
    parts.append(f'<rect x="{pad_l}" y="{pad_t}" width="{w}" height="{h}" fill="none" stroke="#999"/>')
    for t in (0.0, 0.5, 1.0):
        yv = ylo + t * (yhi - ylo)
        parts.append(f'<text x="{pad_l - 4}" y="{sy(yv) + 3:.1f}" font-size="9" text-anchor="end">{yv:.3f}</text>')
    if axis == "categorical":
        for i, c in enumerate(cats):
            parts.append(f'<text x="{sx(i):.1f}" y="{pad_t + h + 12}" font-size="9" text-anchor="middle">{html.escape(c)}</text>')
    elif axis == "log":
        for d in range(math.ceil(lo), math.floor(hi) + 1):
            parts.append(f'<line x1="{sx(d):.1f}" y1="{pad_t + h}" x2="{sx(d):.1f}" y2="{pad_t + h + 3}" stroke="#999"/>')
            parts.append(f'<text x="{sx(d):.1f}" y="{pad_t + h + 12}" font-size="9" text-anchor="middle">1e{d}</text>')
    else:
        for t in (0.0, 0.5, 1.0):
            xv = lo + t * (hi - lo)
            parts.append(f'<text x="{sx(xv):.1f}" y="{pad_t + h + 12}" font-size="9" text-anchor="middle">{xv:.3g}</text>')
    label = html.escape(xlabel) + (" (log scale; 0 drawn a decade below)" if axis == "log" and any(x <= 0 for x in xs) else " (log scale)" if axis == "log" else "")
    parts.append(f'<text x="{pad_l + w / 2}" y="{height - 4}" font-size="10" text-anchor="middle">{label}</text>')
    parts.append(f'<text x="10" y="{pad_t + h / 2}" font-size="10" transform="rotate(-90 10 {pad_t + h / 2})" text-anchor="middle">{html.escape(ylabel)}</text>')
    for x, y, m in zip(tx, ys, marks):
        if y is None or not math.isfinite(y):
            continue
        color = m.get("color", BLUE)
        fill = "none" if m.get("hollow") else color
        parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3.5" fill="{fill}" stroke="{color}" fill-opacity="0.85"/>')
        if m.get("ring"):
            parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="6.5" fill="none" stroke="{m["ring"]}" stroke-width="1.5"/>')
    parts.append("</svg>")
    return "".join(parts)


def figures(search: Search) -> list[dict[str, str]]:
    """One {"name", "svg", "axis"} per searched parameter: the metric of every scored trial against it."""
    best = search.best
    out = []
    for name, dist in search.space.items():
        rows = [t for t in search.scored if name in t["config"]]
        xs = [t["config"][name] for t in rows]
        axis = axis_kind(dist, xs)
        if axis != "categorical" and not all(_is_num(x) for x in xs):
            axis = "categorical"
        kind, args = (next(iter(dist.items())) if dist else (None, None))
        categories = list(args) if kind in ("choice", "grid") and axis == "categorical" else None
        bounds = (float(args[0]), float(args[1])) if kind in ("loguniform", "uniform", "randint") and axis != "categorical" else None
        marks = [
            {
                "color": ORANGE if t["status"] == "stopped_early" else BLUE,
                "hollow": t["status"] != "finished",
                "ring": RED if t is best else (BLACK if t.get("default") else None),
            }
            for t in rows
        ]
        svg = scatter_svg(xs, [t["value"] for t in rows], marks, xlabel=name, ylabel=search.metric, axis=axis, categories=categories, bounds=bounds)
        out.append({"name": name, "svg": svg, "axis": axis})
    return out


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if _is_num(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    return str(v)


def context(search: Search) -> dict[str, Any]:
    """Everything the sensitivity template shows for one search."""
    best, dflt = search.best, search.default_trial
    params = []
    for name in search.space:
        params.append({"name": name, "distribution": json.dumps(search.space[name]) if search.space[name] else "",
                       "default": _fmt(search.default.get(name)), "best": _fmt(best["config"].get(name)) if best else "–"})
    failed = [t for t in search.trials if t["status"] == "failed"]
    return {
        "search": search,
        "title": f"{search.method} on {search.dataset}, {search.bits} bits",
        "figures": figures(search),
        "params": params,
        "best_value": None if best is None else best["value"],
        "default_value": None if dflt is None or dflt["value"] is None else dflt["value"],
        "default_status": None if dflt is None else dflt["status"],
        "counts": ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in sorted(search.counts().items())),
        "failed": [{"config": json.dumps(t["config"]), "error": t["error"] or ""} for t in failed],
        "validation_note": VALIDATION_NOTE,
    }


def render_sections(searches: list[Search]) -> str:
    """The report's sensitivity section (HTML fragment) for ``searches``; empty without any."""
    if not searches:
        return ""

    return environment().get_template("sensitivity.html.j2").render(searches=[context(s) for s in searches])


def build_page(search: Search, out: Path) -> Path:
    """``reports/tune/<dataset>-<method>-<bits>.html``: one search's section as a page of its own."""

    body = render_sections([search])
    page = environment().get_template("tune_page.html.j2").render(title=f"Sensitivity: {search.method} on {search.dataset}, {search.bits} bits", body=body)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, page)
    return out


__all__ = ["Search", "collect_searches", "load_search", "figures", "render_sections", "build_page", "axis_kind", "scatter_svg"]
