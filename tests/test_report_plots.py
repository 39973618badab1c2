"""The report's inline SVG figures: well-formed XML, the expected series, CI bands, legends beside the plot
area (never over the curves), labels escaped; and the report page carrying every figure."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd

from pipeline.report.build import build_report, loss_figures, map_vs_bits_svg, precision_at_k_svg
from pipeline.report.collect import ProfileRuns
from pipeline.report.longtail import group_bar_figures, longtail_frame
from pipeline.report.plots import Series, bar_svg, line_svg

NS = "{http://www.w3.org/2000/svg}"


def _parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)
    assert root.tag == f"{NS}svg"
    return root


def _series(root: ET.Element) -> list[str]:
    return [g.get("data-series") for g in root.iter(f"{NS}g") if g.get("data-series") is not None]


def _frame() -> pd.DataFrame:
    rows = []
    for method, base in (("csq", 0.6), ("orthohash", 0.5)):
        for bits in (16, 32, 64):
            for seed, j in ((0, -0.01), (1, 0.012), (2, 0.0)):
                rows.append({"suite": "s", "dataset": "digits", "protocol": "standard", "method": method, "bits": bits, "seed": seed,
                             "run_id": f"{method}{bits}{seed}", "m:i2i/map@all": base + bits / 1000 + j,
                             "m:i2i/p@10": 0.9 - j, "m:i2i/p@100": 0.7, "m:i2i/p@500": 0.5 + j})
    return pd.DataFrame(rows)


def test_line_svg_well_formed_bands_and_legend_beside_the_plot():
    svg = line_svg([Series("a <b>", [16, 32], [0.5, 0.6], [0.45, 0.55], [0.55, 0.65]), Series("b", [16, 32], [0.4, 0.7])],
                   kind="test", x_label="bits", y_label="mAP", x_log2=True)
    root = _parse(svg)
    assert _series(root) == ["a <b>", "b"] and "<b>" not in svg  # escaped in the markup, the same text once parsed
    assert len(root.findall(f".//{NS}polygon")) == 1  # only the series with lo/hi has a band
    frame = root.find(f"{NS}rect")
    right = float(frame.get("x")) + float(frame.get("width"))
    legend_x = [float(t.get("x")) for t in root.iter(f"{NS}text") if t.text in ("a <b>", "b")]
    assert legend_x and min(legend_x) > right  # legend entries start right of the plot area
    assert line_svg([Series("empty", [1.0], [float("nan")])], kind="t", x_label="x", y_label="y") == ""


def test_map_vs_bits_has_one_banded_series_per_method():
    root = _parse(map_vs_bits_svg(_frame(), "i2i"))
    assert root.get("data-figure") == "map-vs-bits" and _series(root) == ["csq", "orthohash"]
    bands = root.findall(f".//{NS}polygon")
    assert len(bands) == 2 and all(len(b.get("points").split()) == 6 for b in bands)  # 3 code lengths, upper + lower edge


def test_precision_at_k_needs_two_cutoffs():
    root = _parse(precision_at_k_svg(_frame(), "i2i"))
    assert len(_series(root)) == 6 and root.get("data-figure") == "precision-at-k"
    assert precision_at_k_svg(_frame().drop(columns=["m:i2i/p@100", "m:i2i/p@500"]), "i2i") == ""


def test_loss_figures_one_series_per_logged_term():
    df = _frame()
    hist = {r: [{"epoch": e, "loss/main/center": 1.0 / (e + 1), "loss/main/quant": 0.1, "epoch_seconds": 0.2} for e in range(4)] for r in df.run_id}
    runs = ProfileRuns("demo", df, {}, [], histories=hist)
    figs = loss_figures(runs, df)
    assert [f["method"] for f in figs] == ["csq", "orthohash"] and all(f["bits"] == 64 and f["n"] == 3 for f in figs)
    root = _parse(figs[0]["svg"])
    assert _series(root) == ["main/center", "main/quant"]  # per-epoch timings are not loss terms
    pts = root.find(f".//{NS}polyline").get("points").split()
    assert len(pts) == 4


def test_head_medium_tail_bars():
    df = _frame().assign(protocol="lt100")
    for g, v in (("head", 0.8), ("medium", 0.5), ("tail", 0.2)):
        df[f"m:i2i/map@all/{g}"] = v
    figs = group_bar_figures(longtail_frame(df))
    svgs = re.findall(r"<svg.*?</svg>", figs[0], re.S)
    assert len(svgs) == 3  # one per code length
    root = _parse(svgs[0])
    assert _series(root) == ["csq", "orthohash"] and len(root.findall(f".//{NS}g/{NS}rect")) == 8  # 2 methods x 4 groups
    assert bar_svg(["head"], [("x", [None])], kind="k", y_label="y") == ""


def test_report_page_every_svg_parses_and_figures_are_present(tmp_path):
    df = _frame()
    curves = {r: {"i2i": {"recall": [0, 0.5, 1], "precision": [1, 0.7, 0.2]}} for r in df.run_id}
    hist = {r: [{"epoch": e, "loss/main/center": 1.0 / (e + 1)} for e in range(3)] for r in df.run_id}
    html = build_report(ProfileRuns("demo", df, curves, [], histories=hist), tmp_path, title="T", notes={}).read_text()
    svgs = re.findall(r"<svg.*?</svg>", html, re.S)
    kinds = sorted(_parse(s).get("data-figure") for s in svgs)
    assert kinds == ["loss", "loss", "map-vs-bits", "pr", "precision-at-k"]
    assert "http://www.w3.org/2000/svg" in html and "<script" not in html and "&amp;amp;" not in html  # escaped once, not twice
    assert all(np.isfinite(float(v)) for s in svgs for v in re.findall(r'(?:cx|cy)="([^"]+)"', s))
