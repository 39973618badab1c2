"""Data-parallel training (pipeline/train/distributed.py): 2 gloo workers on the shared loop train like
1 worker of the same global batch size and seed.

The 2-worker runs spawn two processes (torch.multiprocessing + gloo on 127.0.0.1) that run
:func:`pipeline.train.loop.run_trial` with a process group, exactly as a Ray Train worker does.
Tolerances, stated (per epoch, every logged loss term; final mAP@all of every direction): methods whose
loss is a mean of per-item terms on networks without BatchNorm or dropout (CSQ, OrthoHash, CRH: MLP
backbones) match to a relative 1e-3 and 0.01 mAP (measured: equal to 6 digits: float summation order
only); CMHH (whole-set F/G gathered after each pass) 5e-3 / 0.01 (measured 1e-3: a row of the other
rank's shard is one step older inside a pass); ADIH (its balance term estimates the full-set sum from
stored rows) 2e-2 / 0.02 (measured 1%); the long-tail model (a BatchNorm over each rank's shard,
per-shard augmentation draws) 5% / 0.05. DCMH, PRDH (with its balance term on) and MFPMC (whole-set
buffers synchronised after every step; balance estimates, PRDH's batch covariance and MFPMC's L_p from sums
over the ranks, with their 1-worker gradients) 1e-3 / 0.01 (measured: 1.5e-7, float summation order;
identical mAP to 4 digits).
"""

from __future__ import annotations

import json
import math
import socket
from pathlib import Path

import pytest

from tests.conftest import trial_spec


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _group_worker(rank: int, world: int, port: int, jobs: list[tuple[dict, str]], out_dir: str) -> None:
    """One rank: join the gloo group, run every job's trial, rank 0 writes its history and metrics."""
    import torch
    import torch.distributed as dist

    from pipeline.config import TrialSpec
    from pipeline.train.loop import run_trial

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        for i, (spec_json, prepared) in enumerate(jobs):
            out = run_trial(TrialSpec.model_validate(spec_json), Path(prepared), device="cpu")
            if rank == 0:
                Path(out_dir, f"job{i}.json").write_text(json.dumps({"history": out.history, "metrics": out.evaluation.flat_metrics()}))
    finally:
        dist.destroy_process_group()


def run_group(jobs, out_dir: Path, world: int = 2) -> list[dict]:
    import torch.multiprocessing as mp

    mp.spawn(_group_worker, args=(world, _free_port(), [(s.model_dump(mode="json"), str(d)) for s, d in jobs], str(out_dir)), nprocs=world, join=True)
    return [json.loads((out_dir / f"job{i}.json").read_text()) for i in range(len(jobs))]


def _fast(spec, batch_size=64):
    return spec.model_copy(
        update={
            "train": spec.train.model_copy(update={"batch_size": batch_size}),
            "eval": spec.eval.model_copy(update={"index": spec.eval.index.model_copy(update={"kinds": []}), "random_baseline": False}),
        }
    )


# (method, dataset, params, relative loss tolerance, mAP tolerance)
CASES = [
    ("csq", "digits", {"backbone": "mlp", "hidden": [64], "dropout": 0.0}, 1e-3, 0.01),
    ("orthohash", "digits", {"backbone": "mlp", "hidden": [64], "dropout": 0.0, "batch_norm": False}, 1e-3, 0.01),
    ("crh", "digits", {"backbone": "mlp", "hidden": [64], "dropout": 0.0, "reassign_every": 1}, 1e-3, 0.01),
    ("ltdual", "digits", {"size": "tiny", "hflip": False, "cosine_epochs": 3}, 0.05, 0.05),
    ("cmhh", "wikipedia", {"image_hidden": [64], "text_hidden": [64], "dropout": 0.0}, 5e-3, 0.01),
    ("adih", "wikipedia", {"hidden": [64], "dropout": 0.0}, 2e-2, 0.02),
    ("dcmh", "wikipedia", {"image_hidden": [64], "text_hidden": [64]}, 1e-3, 0.01),
    ("prdh", "wikipedia", {"image_hidden": [64], "text_hidden": [64], "eta": 1.0}, 1e-3, 0.01),
    ("mfpmc", "wikipedia", {"image_hidden": [64], "text_hidden": [64], "feature_dim": 64, "disc_hidden": [32]}, 1e-3, 0.01),
]


def _losses(history: list[dict]) -> dict[str, list[float]]:
    keys = sorted(k for k in history[0] if k.startswith("loss/"))
    return {k: [h[k] for h in history] for k in keys}


def test_methods_declaring_distributed_are_all_tested():
    from methods.registry import available_methods, get_method_class

    declared = {m for m in available_methods() if get_method_class(m).supports_distributed}
    assert declared == {c[0] for c in CASES}


def test_two_gloo_workers_match_one_worker(tmp_path, repo_params, prepared_root, one_torch_thread):
    """Every method declaring supports_distributed: loss curve and final mAP of 2 workers vs 1 (same global batch, seed)."""
    from methods.registry import get_method_class
    from pipeline.train.loop import run_trial

    jobs, refs = [], []
    for method, dataset, params, _, _ in CASES:
        assert get_method_class(method).supports_distributed, method
        (tmp_path / method).mkdir()
        spec = _fast(trial_spec(tmp_path / method, repo_params, method, 16, epochs=3, method_params=params, dataset=dataset))
        d = prepared_root / "data" / "prepared" / dataset
        jobs.append((spec, d))
        refs.append(run_trial(spec, d, device="cpu"))
    outs = run_group(jobs, tmp_path)
    problems = []
    for (method, _, _, rtol, map_tol), ref, two in zip(CASES, refs, outs):
        one_l, two_l = _losses(ref.history), _losses(two["history"])
        assert set(one_l) == set(two_l), method
        assert len(two["history"]) == 3
        for k in one_l:
            for e, (a, b) in enumerate(zip(one_l[k], two_l[k])):
                if not math.isclose(a, b, rel_tol=rtol, abs_tol=1e-6):
                    problems.append(f"{method} {k} epoch {e}: 1 worker {a:.6g}, 2 workers {b:.6g}")
        one_m = ref.evaluation.flat_metrics()
        for k in (k for k in one_m if k.endswith("/map@all") and k.count("/") == 1):
            if abs(one_m[k] - two["metrics"][k]) > map_tol:
                problems.append(f"{method} {k}: 1 worker {one_m[k]:.4f}, 2 workers {two['metrics'][k]:.4f}")
    assert not problems, "\n".join(problems)
