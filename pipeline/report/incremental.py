"""The incremental-class protocol's report section (ADIH, paper 003, Tables 5-6).

Input: the report's runs DataFrame; incremental trials are the rows with an ``incremental_new`` value
(the new-class count of the trial, from the run tag ``hashbench.incremental_new``) and the metrics of
:mod:`pipeline.protocols.incremental`. One table per suite and direction: rows method x bits x new
classes, columns mAP@all after the incremental step on the old / new / all queries, mAP@all of the
full retraining on all queries, and the training seconds of both steps with their ratio (the paper's
Table 6 claim: the incremental step costs a fraction of retraining). Cells are mean ± std over seeds.
"""

from __future__ import annotations

import html
import math

import pandas as pd

from pipeline.report.common import DIRECTION_TITLES

QUERY_SETS = ("old", "new", "all")


def incremental_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The incremental trials of ``df`` (empty frame when there are none)."""
    if df is None or df.empty or "incremental_new" not in df:
        return pd.DataFrame()
    return df[df["incremental_new"].notna()]


def _cell(values: pd.Series, fmt: str = "{:.4f}") -> str:
    v = values.dropna()
    if v.empty:
        return "–"
    sd = float(v.std()) if len(v) > 1 else 0.0
    return f"{fmt.format(float(v.mean()))} ± {fmt.format(0.0 if math.isnan(sd) else sd)}"


def render_incremental(df: pd.DataFrame) -> str:
    """HTML of every incremental suite's tables; empty string when the profile has none."""
    inc = incremental_rows(df)
    if inc.empty:
        return ""
    parts = [
        '<h2 id="incremental">Incremental-class protocol (ADIH, paper 003)</h2>',
        '<p class="meta">Each trial trains on the original classes, then learns the new classes with the original '
        "database codes fixed (incremental step), and is compared with a full retraining on all classes. "
        "Old / new / all: queries without any new label, with one, and every query, each against the whole "
        "database. Times are training seconds of the step (encoding and evaluation excluded). "
        "ADIH-I has no incremental step: its results are the retraining's.</p>",
    ]
    for (suite, dataset), g in inc.groupby(["suite", "dataset"], sort=True):
        parts.append(f'<h3>{html.escape(str(dataset))} <span class="meta">(suite <code>{html.escape(str(suite))}</code>, {len(g)} runs)</span></h3>')
        directions = [d for d in DIRECTION_TITLES if f"m:increment/all/{d}/map@all" in g or f"m:retrain/all/{d}/map@all" in g]
        for d in directions:
            head = "".join(f"<th>increment, {q}</th>" for q in QUERY_SETS) + "<th>retrain, all</th><th>increment s</th><th>retrain s</th><th>ratio</th>"
            rows = []
            for (method, bits, new), gg in g.groupby(["method", "bits", "incremental_new"], sort=True):
                cells = [_cell(gg[c]) if (c := f"m:increment/{q}/{d}/map@all") in gg else "–" for q in QUERY_SETS]
                cells.append(_cell(gg[f"m:retrain/all/{d}/map@all"]) if f"m:retrain/all/{d}/map@all" in gg else "–")
                for c, fmt in (("m:seconds/increment", "{:.1f}"), ("m:seconds/retrain", "{:.1f}"), ("m:increment_time_ratio", "{:.2f}")):
                    cells.append(_cell(gg[c], fmt) if c in gg else "–")
                rows.append(
                    f"<tr><td>{html.escape(str(method))}</td><td>{int(bits)}</td><td>{html.escape(str(new))}</td>"
                    + "".join(f"<td>{c}</td>" for c in cells)
                    + f'<td><span class="n">{len(gg)}</span></td></tr>'
                )
            parts.append(
                f"<p class=\"meta\">{html.escape(DIRECTION_TITLES[d])}: mAP@all</p><div class=\"scroll\"><table class=\"detail\"><thead><tr><th>method</th><th>bits</th>"
                f"<th>new classes</th>{head}<th>seeds</th></tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
            )
    return "\n".join(parts)
