"""Cost of a trial through ``bench`` against the same training in a bare PyTorch loop. Prints; asserts nothing.

For one CSQ-on-digits trial and one DCMH-on-wikipedia trial (params.yaml's method settings, the
given epochs), in one process:

* **bare**: a loop written here — the same model (the registered method, built the same way), the
  same batches (the recipe's sampler, seeded alike), the same optimizer and learning-rate schedule
  and epochs, each phase stepping on the method's ``training_step``, ``on_epoch_end`` after each
  epoch — then encoding query and database and a plain mAP@all (stable argsort, as classic code);
* **bench**: ``run_bench`` of a one-trial suite (Ray Tune grid, the trial in its Tune trial process,
  MLflow run with every epoch logged, artifacts, full evaluation), reported as the trial's own wall
  time (``trial_wall_seconds``, what a trial costs) and as the whole ``run_bench`` call (Ray
  start-up, resume check and trial-actor start included; paid once per bench invocation).

Ratios are bench / bare. Goal (issue "One trial executor"): trial wall <= 1.3x bare.

Usage: python benchmarks/trial_bench.py [--epochs 30] [--trials csq,dcmh]
The prepared digits and wikipedia datasets are made under a temporary project if missing.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from methods.registry import create_method  # noqa: E402
from pipeline.config import expand_suite, load_params  # noqa: E402
from pipeline.core.paths import ProjectPaths  # noqa: E402
from pipeline.data.formats import PreparedDataset  # noqa: E402
from pipeline.data.loaders import SplitData  # noqa: E402
from pipeline.data.registry import get_dataset  # noqa: E402
from pipeline.protocols import launch  # noqa: E402
from pipeline.protocols.standard import run_bench  # noqa: E402
from pipeline.train import tracking  # noqa: E402
from pipeline.train.loop import optimizer_factory, seed_everything  # noqa: E402
from pipeline.train.samplers import make_sampler  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TRIALS = {"csq": ("digits", 32), "dcmh": ("wikipedia", 16)}


def bare_trial(spec, prepared: Path) -> float:
    """The same training and encoding as a trial, in a loop written here; returns seconds."""
    t0 = time.perf_counter()
    seed_everything(spec.seed)
    torch.set_num_threads(1)
    ds = PreparedDataset(prepared)
    from methods.registry import get_method_class

    cls = get_method_class(spec.method)
    data = SplitData(ds, spec.protocol, cls.modalities)
    info = ds.info(spec.protocol)
    model = create_method(spec.method, spec.method_params, info, spec.bits)
    opts = model.configure_optimizers(optimizer_factory(spec.train.optimizer))
    train = data.train
    rng = np.random.default_rng(spec.seed)
    bs = spec.train.batch_size
    from methods.base import TrainData

    td = TrainData(labels=torch.from_numpy(train.labels), info=info, batches=lambda: train.batches(bs))
    model.on_train_start(td)
    sampler = make_sampler(spec.train.sampler, len(train), bs, labels=train.labels)
    lr0, n_ep = spec.train.optimizer.lr, spec.train.epochs
    for epoch in range(n_ep):
        for opt in opts.values():  # the recipe's learning-rate schedule (DCMH: linear 10^-1.5 -> 10^-6)
            for g in opt.param_groups:
                g["lr"] = spec.train.lr_schedule.lr_at(lr0, epoch, n_ep)
        for phase in model.phases(epoch):
            opt = opts[phase]
            model.train()
            for positions in sampler.epoch(rng):  # the same batches as the loop (the recipe's sampler)
                loss = model.training_step(train.batch(positions), phase)["loss"]
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        with torch.no_grad():
            model.on_epoch_end(epoch, td)
    model.eval()
    with torch.no_grad():
        codes = {
            part: {m: np.concatenate([np.sign(model.encode(b, m).numpy()) for b in getattr(data, part).batches(bs)]) for m in cls.modalities}
            for part in ("query", "database")
        }
    q_mod, d_mod = cls.modalities[0], cls.modalities[-1]
    bare_map(codes["query"][q_mod], codes["database"][d_mod], data.query.labels, data.database.labels)
    return time.perf_counter() - t0


def bare_map(q: np.ndarray, d: np.ndarray, ql: np.ndarray, dl: np.ndarray) -> float:
    """mAP@all by a stable argsort of Hamming distances (classic reference code)."""
    dist = 0.5 * (q.shape[1] - q @ d.T)
    rel = (ql @ dl.T) > 0
    aps = []
    for i in range(len(q)):
        r = rel[i][np.argsort(dist[i], kind="stable")]
        if r.any():
            hits = np.cumsum(r)
            aps.append(float((hits[r] / (np.flatnonzero(r) + 1)).mean()))
    return float(np.mean(aps))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--trials", default="csq,dcmh")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = ProjectPaths.at(root)
        raw = yaml.safe_load((REPO / "params.yaml").read_text())
        for name in args.trials.split(","):
            dataset, bits = TRIALS[name]
            src = ProjectPaths.at(REPO).prepared(dataset)
            if (src / "manifest.json").is_file():
                paths.prepared(dataset).parent.mkdir(parents=True, exist_ok=True)
                paths.prepared(dataset).symlink_to(src)
            else:
                spec_ = get_dataset(dataset)
                dp = load_params(REPO / "params.yaml").dataset_params(dataset)
                spec_.fetch(dp, paths.raw(dataset))
                spec_.prepare(dp, paths.raw(dataset), paths.prepared(dataset))
        p = copy.deepcopy(raw)
        p["suites"] = {
            f"trial-bench-{n}": {"profile": "demo", "dataset": TRIALS[n][0], "methods": [n], "bits": [TRIALS[n][1]], "seeds": [0], "train": {"epochs": args.epochs}}
            for n in args.trials.split(",")
        }
        p["resources"] = {**(p.get("resources") or {}), "cpus_per_worker": 1}
        pfile = root / "params.yaml"
        pfile.write_text(yaml.safe_dump(p))
        params = load_params(pfile)
        launch.warm_up(f"sqlite:///{root / 'warm.db'}")  # one-time imports (MLflow, torch._dynamo) out of both timings
        print(f"{'trial':28s} {'bare s':>8s} {'trial s':>8s} {'ratio':>6s} {'bench s':>8s} {'ratio':>6s}")
        for name in args.trials.split(","):
            suite = f"trial-bench-{name}"
            spec = expand_suite(params, suite)[0]
            bare = bare_trial(spec, paths.prepared(spec.dataset))
            t0 = time.perf_counter()
            summary = run_bench(params, suite, paths, params_file=pfile)
            whole = time.perf_counter() - t0
            (entry,) = summary.trials.values()
            run = tracking.client(summary.tracking_uri).get_run(entry["run_id"])
            wall = run.data.metrics["trial_wall_seconds"]
            print(f"{name + ' on ' + spec.dataset + f' ({spec.bits} b, {args.epochs} ep)':28s} {bare:8.2f} {wall:8.2f} {wall / bare:6.2f} {whole:8.2f} {whole / bare:6.2f}")
            print(f"{'':28s} overhead_seconds {run.data.metrics['overhead_seconds']:.2f}, train {run.data.metrics['train_seconds']:.2f}, eval {run.data.metrics['eval_seconds']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
