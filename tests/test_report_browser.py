"""The generated report opens in headless Chromium (Debian's ``chromium``; .ci/run installs it): offline,
no console errors, every table and figure present (headline tables, leakage audit, published tables, mAP vs
code length, P-R and loss figures), every table in a scroll container; screenshots (desktop and a narrow
window) are kept as test artifacts.

Skips only when no chromium binary is installed locally."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from pipeline.report.build import build_report
from pipeline.report.collect import ProfileRuns
from pipeline.report.published import load_published

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (CI installs it with apt)")
ARTIFACTS = Path(os.environ.get("HASHBENCH_TEST_ARTIFACTS", Path(__file__).resolve().parent.parent / "reports" / "test-artifacts"))


def _chromium(*args: str, tmp: Path) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-data-dir={tmp / 'profile'}", "--enable-logging=stderr", "--v=0", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def _frame() -> pd.DataFrame:
    rows = []
    for method, base in (("mfpmc", 0.55), ("mfpmc-base", 0.50), ("dcmh", 0.45)):
        for seed, j in ((0, -0.01), (1, 0.01)):
            rows.append({"suite": "s", "trial_key": f"wikipedia/{method}/16b/s{seed}", "dataset": "wikipedia", "protocol": "standard", "method": method,
                         "bits": 16, "seed": seed, "run_id": f"{method}{seed}", "m:i2t/map@all": base + j, "m:t2i/map@all": base + j,
                         "m:i2t/map@100": base, "git_commit": "abc", "git_dirty": "false", "device": "cpu", "manifest": "m", "ties": "expected",
                         "ap_norm": "retrieved", "weights": "image=random-init <script>alert(1)</script>"})
    return pd.DataFrame(rows)


def _references() -> dict:
    pair = {"by_index": 0, "by_content": 3, "by_content_other_items": 3}
    mod = {"query_database": pair, "query_train": pair, "database_train": {"by_index": 2173, "by_content": 2173, "by_content_other_items": 0}, "query_duplicates": 0}
    leak = {"dataset": "wikipedia", "protocol": "standard", "manifest": "m", "sizes": {"query": 693, "train": 2173, "database": 2173},
            "train_is_database": True, "train_in_database": True, "modalities": {"image": mod}}
    return {("wikipedia", "standard"): {"leakage": leak, "classifier": {"i2t": {"map@all": 0.247}, "t2i": {"map@all": 0.217}}}}


def test_report_renders_in_headless_chromium(tmp_path):
    frame = _frame()
    curves = {f"{m}{s}": {"i2t": {"recall": [0, 0.5, 1], "precision": [1, 0.7, 0.2]}} for m in ("mfpmc", "mfpmc-base", "dcmh") for s in (0, 1)}
    hist = {r: [{"epoch": e, "loss/main/inter": 1 / (e + 1), "loss/main/quant <i>": 0.2} for e in range(5)] for r in frame.run_id}
    runs = ProfileRuns(profile="demo", runs=frame, curves=curves, missing_suites=[], histories=hist)
    html = build_report(runs, tmp_path / "report", title="T <b>x</b>", notes={"Profile": "<i>demo</i>"}, published=load_published(), evals={},
                        all_published=True, references=_references())
    text = html.read_text()
    assert "<script>alert(1)</script>" not in text and "<b>x</b>" not in text and "quant <i>" not in text  # strings from params/MLflow are escaped
    dom = _chromium("--dump-dom", html.as_uri(), tmp=tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = dom.stdout
    n_tables, n_svgs = text.count("<table"), text.count("<svg")
    assert n_tables >= 5 and body.count("<table") == n_tables and body.count("<svg") == n_svgs >= 1
    # every table sits in a horizontal scroll container (no table wider than the page)
    assert len(re.findall(r'<div class="scroll">\s*<table', text)) == n_tables
    assert body.count('class="published"') >= 7  # every published table with numbers rendered (section + table)
    assert "not run" in body and "MFPMC Table 5" in body and "CSQ" in body and "ORTHOHASH" in body and "How these numbers are computed" in body
    for figure in ("map-vs-bits", "pr", "loss"):
        assert f'data-figure="{figure}"' in body, figure
    for table in ("headline-s-i2t", "headline-s-t2i", "leakage-s"):
        assert f'data-table="{table}"' in body, table
    assert "classifier one-hot (reference)" in body and "Significance:" in body and "95% CI" in body
    errors = [line for line in dom.stderr.splitlines() if re.search(r"CONSOLE|Uncaught|ERR_FILE_NOT_FOUND|net::ERR", line)]
    assert not errors, errors
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for name, size in (("desktop", "1280,2000"), ("narrow", "420,2000")):
        shot = ARTIFACTS / f"report-{name}.png"
        r = _chromium(f"--window-size={size}", f"--screenshot={shot}", html.as_uri(), tmp=tmp_path)
        assert r.returncode == 0 and shot.is_file() and shot.stat().st_size > 10_000, r.stderr[-2000:]
