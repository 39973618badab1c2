"""Long-tail evaluation tables in the layout of paper 004's Table 2 (Li & Wang 2025: methods x
(dataset x imbalance factor 100 / 50 / 10), mAP), one table per code length and per query group
(overall, head, medium, tail).

Input: the report's runs DataFrame (one row per trial: ``dataset``, ``method``, ``bits``, ``seed``,
metric columns ``m:i2i/map@all`` and, when the suite's ``eval.class_groups.by`` is set,
``m:i2i/map@all/head`` etc.). The imbalance factor of a run comes from its ``protocol`` column
(``lt100`` -> 100) or, when the runs carry no protocol column, from an ``lt<N>`` part of the suite
name (e.g. ``lt-digits-lt100``). Runs of other protocols are ignored. The head / medium / tail rule
(training-count fractions or thresholds) is logged with every run (``evaluation.json``, conventions
``class_groups``); the table states it when given ``group_rule``.
"""

from __future__ import annotations

import html
import math
import re

import numpy as np
import pandas as pd

from pipeline.report.plots import bar_svg

#: paper 004 Table 2 column order
FACTORS = (100, 50, 10)
GROUPS = ("overall", "head", "medium", "tail")
_LT = re.compile(r"(?:^|[^a-z0-9])lt(\d+)(?:$|[^0-9])")


def imbalance_factor(protocol: str | None = None, suite: str | None = None) -> int | None:
    """``lt100`` -> 100 from the protocol name, else from an ``lt<N>`` token of the suite name; None otherwise."""
    if isinstance(protocol, str):
        return int(protocol[2:]) if re.fullmatch(r"lt\d+", protocol) else None
    if isinstance(suite, str):
        m = _LT.search(suite)
        if m:
            return int(m.group(1))
    return None


def longtail_frame(df: pd.DataFrame, direction: str = "i2i") -> pd.DataFrame:
    """One row per long-tail trial: dataset, IF, method, bits, seed, and the mAP of every group present."""
    if df is None or df.empty:
        return pd.DataFrame()
    cols = {"overall": f"m:{direction}/map@all", **{g: f"m:{direction}/map@all/{g}" for g in GROUPS[1:]}}
    if cols["overall"] not in df:
        return pd.DataFrame()
    proto = df["protocol"] if "protocol" in df else pd.Series([None] * len(df), index=df.index)
    suite = df["suite"] if "suite" in df else pd.Series([None] * len(df), index=df.index)
    factor = [imbalance_factor(p if isinstance(p, str) else None, s if isinstance(s, str) else None) for p, s in zip(proto, suite)]
    out = pd.DataFrame({"dataset": df["dataset"], "factor": factor, "method": df["method"], "bits": df["bits"], "seed": df["seed"]})
    for g, c in cols.items():
        out[g] = df[c] if c in df else np.nan
    if "m:epoch/pretrained" in df:
        out["pretrained"] = df["m:epoch/pretrained"]
    return out.dropna(subset=["factor"]).astype({"factor": int})


def table2(lt: pd.DataFrame, group: str = "overall", bits: int | None = None) -> pd.DataFrame:
    """Mean mAP (x100, as paper 004 prints) per method x (dataset, IF); NaN where there is no run."""
    sub = lt if bits is None else lt[lt["bits"] == bits]
    sub = sub.dropna(subset=[group])
    if sub.empty:
        return pd.DataFrame()
    piv = sub.pivot_table(index="method", columns=["dataset", "factor"], values=group, aggfunc="mean") * 100
    order = [(d, f) for d in sorted(sub["dataset"].unique()) for f in list(FACTORS) + sorted(set(sub["factor"]) - set(FACTORS), reverse=True)]
    return piv.reindex(columns=[c for c in order if c in piv.columns])


def _cell(vals: pd.Series) -> str:
    vals = vals.dropna() * 100
    if vals.empty:
        return "–"
    sd = float(vals.std()) if len(vals) > 1 else 0.0
    return f"{vals.mean():.2f} ± {0.0 if math.isnan(sd) else sd:.2f}"


def render_longtail(df: pd.DataFrame, direction: str = "i2i", group_rule: str | None = None) -> str:
    """HTML section (self-contained) with the Table-2-layout tables; empty string when there are no long-tail runs."""
    lt = longtail_frame(df, direction)
    if lt.empty:
        return ""
    parts = ['<h2 id="longtail">Long-tail retrieval (layout of paper 004, Table 2)</h2>',
             '<p class="meta">mAP@all x 100, mean ± std over seeds, per dataset and imbalance factor (IF: head class / tail class '
             'training count; protocols lt100 / lt50 / lt10). Head / medium / tail: query groups by the training-set frequency of '
             'their class' + (f" ({html.escape(group_rule)})" if group_rule else " (the rule and the per-class counts are logged with every run, evaluation.json)") + '.</p>']
    if "pretrained" in lt and (lt["pretrained"] < 1).any():
        bad = lt[lt["pretrained"] < 1].groupby("method").size()
        parts.append('<p class="warn">Runs WITHOUT ImageNet-pretrained backbone weights (random init): '
                     + ", ".join(f"{html.escape(str(m))}: {n}" for m, n in bad.items()) + ".</p>")
    datasets = sorted(lt["dataset"].unique())
    parts.extend(group_bar_figures(lt))
    for bits in sorted(lt["bits"].unique()):
        for group in GROUPS:
            sub = lt[(lt["bits"] == bits)].dropna(subset=[group])
            if sub.empty:
                continue
            cols = [(d, f) for d in datasets for f in sorted(sub.loc[sub["dataset"] == d, "factor"].unique(), key=lambda x: (x not in FACTORS, -x))]
            head1 = "".join(f'<th colspan="{sum(1 for c in cols if c[0] == d)}">{html.escape(str(d))}</th>' for d in datasets if any(c[0] == d for c in cols))
            head2 = "".join(f"<th>{f}</th>" for _, f in cols)
            means = {c: sub[(sub["dataset"] == c[0]) & (sub["factor"] == c[1])].groupby("method")[group].mean() for c in cols}
            best = {c: (m.max() if len(m) else None) for c, m in means.items()}
            rows = []
            for method in sorted(sub["method"].unique()):
                cells = []
                for c in cols:
                    v = sub[(sub["dataset"] == c[0]) & (sub["factor"] == c[1]) & (sub["method"] == method)][group]
                    is_best = len(v.dropna()) and best[c] is not None and np.isclose(v.mean(), best[c])
                    cells.append(f'<td class="{"best" if is_best else ""}">{_cell(v)} <span class="n">{len(v.dropna())}</span></td>')
                rows.append(f"<tr><td>{html.escape(str(method))}</td>{''.join(cells)}</tr>")
            parts.append(f"<h3>{bits} bits: {group} mAP</h3><div class=\"scroll\"><table><thead><tr><th rowspan=\"2\">method</th>{head1}</tr><tr>{head2}</tr></thead>"
                         f"<tbody>{''.join(rows)}</tbody></table></div>")
    return "\n".join(parts)


def group_bar_figures(lt: pd.DataFrame) -> list[str]:
    """Head / medium / tail (and overall) mAP bars per method, one figure per dataset, imbalance factor and code length."""
    present = [g for g in GROUPS if g in lt and lt[g].notna().any()]
    if len(present) < 2:
        return []
    figs = []
    for (dataset, factor, bits), g in lt.groupby(["dataset", "factor", "bits"]):
        series = [(str(m), [float(gm[grp].mean()) if gm[grp].notna().any() else None for grp in present]) for m, gm in g.groupby("method")]
        svg = bar_svg(present, series, kind="longtail-groups", y_label="mAP@all (mean over seeds)")
        if svg:
            figs.append(f'<figure data-figure="longtail-groups"><figcaption class="meta">{html.escape(str(dataset))}, IF {int(factor)}, {int(bits)} bits: '
                        f"mAP of the head / medium / tail queries</figcaption>{svg}</figure>")
    return ['<div class="grid">' + "".join(figs) + "</div>"] if figs else []


def markdown_table(lt: pd.DataFrame, bits: int, groups=GROUPS) -> str:
    """Plain-text (Markdown) version: rows method x group, columns dataset x IF; cells mean ± std x 100 (seed count)."""
    sub = lt[lt["bits"] == bits]
    cols = [(d, f) for d in sorted(sub["dataset"].unique()) for f in sorted(sub.loc[sub["dataset"] == d, "factor"].unique(), key=lambda x: (x not in FACTORS, -x))]
    lines = ["| method | group | " + " | ".join(f"{d} IF{f}" for d, f in cols) + " |", "|---|---|" + "---|" * len(cols)]
    for method in sorted(sub["method"].unique()):
        for g in groups:
            cells = []
            for d, f in cols:
                v = sub[(sub["dataset"] == d) & (sub["factor"] == f) & (sub["method"] == method)][g]
                cells.append(f"{_cell(v)} ({len(v.dropna())})")
            lines.append(f"| {method} | {g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
