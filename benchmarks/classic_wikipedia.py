"""mAP@all of the classic baselines on Wikipedia at 16/32/64/128 bits, ties in index order and expected.

Each (method, bits) is trained once through the shared loop's pieces (the same seeding, data split,
``fit`` and encoders as ``run_trial``) and its codes are evaluated under both tie conventions. For
methods that learn unified codes of the training items (CMFH, SePH, STMH), the ``unified-db/`` columns
also evaluate the papers' convention: the database (= the training set on Wikipedia) indexed by those
codes instead of the one-modality encodings.

    PYTHONPATH=$PWD python benchmarks/classic_wikipedia.py [--root DIR] [--methods a,b] [--bits 16,32] [--seed 0]

``--root`` is a project folder whose ``data/prepared/wikipedia`` exists (``hashbench prepare wikipedia``);
it is prepared there from the embedded copy when missing. Prints one JSON line per result;
``benchmarks/classic_wikipedia.results.jsonl`` holds the lines of the run reported for issue 16 (seed 0,
OMP/OpenBLAS threads 1, a 2-core machine under a load average of 10-15, so the seconds are pessimistic).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from methods.registry import create_method, get_method_class
from pipeline.config import EvalConfig, load_params, expand_suite
from pipeline.core.paths import ProjectPaths
from pipeline.data.formats import PreparedDataset
from pipeline.data.loaders import SplitData
from pipeline.data.registry import get_dataset
from pipeline.eval.evaluate import evaluate_codes, retrieval_directions
from pipeline.train.loop import encode_parts, fit, make_train_data, seed_everything

METHODS = ("cmfh", "scm-orth", "scm-seq", "seph-rnd", "seph-km", "stmh", "lsh", "itq", "sdh")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default=".")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--bits", default="16,32,64,128")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--params", default="{}", help="JSON hyperparameters for every method run (e.g. '{\"kl_iterations\": 50}')")
    args = ap.parse_args()
    paths = ProjectPaths.at(Path(args.root))
    prepared = paths.prepared("wikipedia")
    if not prepared.exists():
        spec = get_dataset("wikipedia")
        spec.fetch(spec.Params(), paths.raw("wikipedia"))
        spec.prepare(spec.Params(), paths.raw("wikipedia"), prepared)
    ds = PreparedDataset(prepared)
    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    train_cfg = expand_suite(params, "demo-wikipedia")[0]
    for name in args.methods.split(","):
        cls = get_method_class(name)
        for bits in (int(b) for b in args.bits.split(",")):
            seed_everything(args.seed)
            data = SplitData(ds, "standard", cls.modalities)
            info = ds.info("standard")
            method = create_method(name, json.loads(args.params) or None, info, bits)
            train_data = make_train_data(data.train, info, 256, "cpu")
            spec = train_cfg.model_copy(update={"method": name, "method_params": {}, "bits": bits, "seed": args.seed})
            history, seconds = fit(method, data.train, train_data, spec, np.random.default_rng(args.seed), "cpu",
                                   start=lambda: method.on_train_start(train_data))
            method.eval()
            codes = encode_parts(method, data, 256, "cpu")
            row = {"method": name, "bits": bits, "seed": args.seed, "train_seconds": round(seconds, 2), "epochs_run": len(history)}
            for ties in ("index", "expected"):
                cfg = EvalConfig(topk=[], ties=ties, random_baseline=True, index={"kinds": []})
                ev = evaluate_codes(codes, query_labels=data.query.labels, db_labels=data.database.labels,
                                    directions=retrieval_directions(cls.modalities), cfg=cfg)
                for k, v in ev.flat_metrics().items():
                    if k.endswith("map@all"):
                        row[f"{k}[{ties}]"] = round(float(v), 4)
            unified = getattr(method, "unified_train_codes", None)
            if unified is not None and np.array_equal(data.split.database, data.split.train):  # Wikipedia: database = training set
                # the papers' convention: the database indexed by the codes learnt jointly in training
                uni = {"query": codes["query"], "database": {m: unified for m in cls.modalities}}
                for ties in ("index", "expected"):
                    cfg = EvalConfig(topk=[], ties=ties, random_baseline=False, index={"kinds": []})
                    ev = evaluate_codes(uni, query_labels=data.query.labels, db_labels=data.database.labels,
                                        directions=retrieval_directions(cls.modalities), cfg=cfg)
                    for k, v in ev.flat_metrics().items():
                        if k.endswith("map@all"):
                            row[f"unified-db/{k}[{ties}]"] = round(float(v), 4)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
