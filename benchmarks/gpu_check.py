"""GPU check of HashBench (run by benchmarks/gpu_check.sh on a GPU machine; under 8 minutes on one GPU).

    python benchmarks/gpu_check.py ROOT            # ROOT: a scratch project folder (digits/wikipedia prepared there)

1. a 2-trial bench suite (CSQ, 16 bits, seeds 0 and 1, bf16 autocast, pinned memory) on CUDA through the
   real `hashbench bench`: both runs FINISHED with tag device=cuda*;
2. faiss: GpuIndexBinaryFlat vs IndexBinaryFlat on the same packed codes: identical distances, and the
   time of each (skipped, and said so, when this faiss build has no GPU support);
3. epoch throughput (training items per second, 2nd epoch) per registered method on CUDA, fp32 and bf16.

Exits 3 without a CUDA device, 1 when a check fails.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(root: Path) -> int:
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible (torch.cuda.is_available() is False): run this on a GPU machine", file=sys.stderr)
        return 3
    print(f"gpu_check: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    from pipeline.core.paths import ProjectPaths
    from pipeline.data.registry import get_dataset

    paths = ProjectPaths.at(root)
    for name in ("digits", "wikipedia"):
        if not (paths.prepared(name) / "manifest.json").is_file():
            spec = get_dataset(name)
            p = spec.Params()
            spec.fetch(p, paths.raw(name))
            spec.prepare(p, paths.raw(name), paths.prepared(name))
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    failures: list[str] = []

    # 1. a 2-trial suite on CUDA through bench
    p = copy.deepcopy(base)
    p["suites"] = {"gpu-check": {"profile": "demo", "dataset": "digits", "methods": ["csq"], "bits": [16], "seeds": [0, 1],
                                 "train": {"epochs": 5, "device": "cuda", "precision": "bf16", "pin_memory": True}}}
    p["resources"] = {"use_gpu": True, "gpus_per_worker": 0.5, "cpus_per_worker": 1}
    params_file = root / "params.yaml"
    params_file.write_text(yaml.safe_dump(p, sort_keys=False))
    t0 = time.perf_counter()
    rc = subprocess.call([sys.executable, "-m", "pipeline.cli", "--root", str(root), "--params", str(params_file), "bench", "--suite", "gpu-check"], cwd=REPO)
    print(f"[1] bench gpu-check (2 trials, bf16): exit {rc}, {time.perf_counter() - t0:.1f} s")
    if rc == 0:
        import mlflow

        c = mlflow.MlflowClient(f"sqlite:///{root / 'mlruns.db'}")
        exp = c.get_experiment_by_name("hashbench/gpu-check")
        runs = [r for r in c.search_runs([exp.experiment_id]) if r.info.status == "FINISHED"]
        devices = sorted(r.data.tags.get("device", "?") for r in runs)
        maps = [round(r.data.metrics.get("i2i/map@all", float("nan")), 3) for r in runs]
        print(f"    finished runs: {len(runs)}, devices {devices}, i2i mAP@all {maps}")
        if len(runs) < 2 or not all(d.startswith("cuda") for d in devices):
            failures.append("bench on CUDA")
    else:
        failures.append("bench on CUDA")

    # 2. faiss GPU vs CPU on the same codes
    import faiss

    rng = np.random.default_rng(0)
    db = rng.integers(0, 256, size=(200_000, 8), dtype=np.uint8)  # 64-bit codes
    q = rng.integers(0, 256, size=(2_000, 8), dtype=np.uint8)
    cpu = faiss.IndexBinaryFlat(64)
    cpu.add(db)
    t0 = time.perf_counter()
    dc, _ = cpu.search(q, 100)
    t_cpu = time.perf_counter() - t0
    if hasattr(faiss, "GpuIndexBinaryFlat") and faiss.get_num_gpus() > 0:
        gpu = faiss.GpuIndexBinaryFlat(faiss.StandardGpuResources(), 64)
        gpu.add(db)
        gpu.search(q[:10], 100)  # warm-up
        t0 = time.perf_counter()
        dg, _ = gpu.search(q, 100)
        t_gpu = time.perf_counter() - t0
        same = bool(np.array_equal(dc, dg))
        print(f"[2] faiss flat Hamming, 2k queries x 200k codes, k=100: CPU {t_cpu * 1e3:.1f} ms, GPU {t_gpu * 1e3:.1f} ms "
              f"(x{t_cpu / max(t_gpu, 1e-9):.1f}); distances identical: {same}")
        if not same:
            failures.append("faiss GPU distances")
    else:
        print(f"[2] faiss GPU: SKIPPED (this faiss build has no GPU support: install faiss-gpu); CPU {t_cpu * 1e3:.1f} ms")

    # 3. epoch throughput per method
    from methods.registry import available_methods, get_method_class
    from pipeline.config import expand_suite, load_params
    from pipeline.train.loop import run_trial

    small = {"ltdual": {"size": "tiny", "hflip": False}}
    print("[3] epoch throughput (training items / s, 2nd epoch):")
    for m in available_methods():
        cls = get_method_class(m)
        ds = "wikipedia" if "text" in cls.modalities else "digits"
        row = []
        for prec in ("fp32", "bf16"):
            q = copy.deepcopy(base)
            q["methods"][m] = {**(q["methods"].get(m) or {}), **small.get(m, {})}
            q["suites"] = {"tp": {"profile": "demo", "dataset": ds, "methods": [m], "bits": [32], "seeds": [0],
                                  "train": {"epochs": 2, "device": "cuda", "precision": prec}}}
            f = root / f"tp-{m}.yaml"
            f.write_text(yaml.safe_dump(q, sort_keys=False))
            try:
                spec = expand_suite(load_params(f), "tp")[0]
                spec = spec.model_copy(update={"eval": spec.eval.model_copy(update={"index": spec.eval.index.model_copy(update={"kinds": []})})})
                out = run_trial(spec, paths.prepared(ds), device="cuda")
                n = len(out.history) and out.history[-1]["epoch_seconds"]
                from pipeline.data.formats import PreparedDataset

                n_train = PreparedDataset(paths.prepared(ds)).info(spec.protocol).n_train
                row.append(f"{prec} {n_train / n:9.0f}/s")
            except Exception as exc:  # noqa: BLE001 - reported per method, the check goes on
                row.append(f"{prec} FAILED ({type(exc).__name__}: {str(exc)[:80]})")
                failures.append(f"{m} {prec}")
        print(f"    {m:<10s} {ds:<10s} " + "   ".join(row))
    if failures:
        print(f"gpu_check: FAILED: {', '.join(failures)}", file=sys.stderr)
        return 1
    print("gpu_check: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "gpu-check-project").resolve()))
