"""Drift monitor of the code layer (pipeline/eval/codelayer.py) on a trial's stored codes and the
incremental-class split (pipeline/data/incremental.py): the database codes of the original classes are the
reference; the stream is (a) the items of the new classes, (b) a control of held-out original-class items.
Prints, per stream, the drift events (position, statistic, threshold). No training.

    python benchmarks/codelayer_drift.py path/to/codes.npz --dataset wikipedia --new-classes 3
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from pipeline.data.incremental import has_new_class, split_classes
from pipeline.eval.codelayer import DriftMonitor, bit_stats
from pipeline.eval.codes import unpack_codes
from pipeline.eval.stored import read_codes, split_labels


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("codes", type=Path)
    ap.add_argument("--dataset", default="wikipedia")
    ap.add_argument("--protocol", default="standard")
    ap.add_argument("--new-classes", type=int, default=3)
    ap.add_argument("--window", type=int, default=100)
    ap.add_argument("--modality", default="image")
    args = ap.parse_args()
    codes = read_codes(args.codes)
    _, db_labels = split_labels(Path("data/prepared") / args.dataset, args.protocol)
    db = unpack_codes(codes["database"][args.modality])
    classes = split_classes(db_labels.shape[1], args.new_classes, seed=0)
    new = has_new_class(db_labels, classes)
    rng = np.random.default_rng(0)
    old_idx = rng.permutation(np.flatnonzero(~new))
    ref, control = old_idx[: len(old_idx) * 2 // 3], old_idx[len(old_idx) * 2 // 3 :]
    corr = bit_stats({args.modality: db[ref]}, db_labels[ref], [(args.modality, args.modality)]).correlation
    print(f"new classes {classes.new}; reference {len(ref)} original-class items; window {args.window}")
    for name, stream in (("new classes", rng.permutation(np.flatnonzero(new))), ("control (original classes)", control)):
        mon = DriftMonitor(db[ref], corr, window=args.window)
        stat, thr = mon.statistic(db[stream][: args.window] > 0), mon.threshold
        ev = mon.insert(db[stream])
        desc = ", ".join(f"at {e['position']}: {e['statistic']:.3f} > {e['threshold']:.3f}" for e in ev) or "none"
        print(f"{name}: {len(stream)} insertions, first-window statistic {stat:.3f}, threshold {thr:.3f}, events: {desc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
