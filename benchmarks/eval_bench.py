"""Retrieval-evaluation engine and binary-index benchmark. Prints figures and ratios; asserts nothing.

1. NUS-WIDE scale (2,000 queries x 193,734 database items, 64 bits, 21 labels): mAP@all and mAP@5000
   of ``pipeline.eval.metrics`` in ``index`` tie mode against the usual per-query reference code (a stable
   argsort of the Hamming distances, then cumulative precision), which computes the same numbers.
   The reference runs on a subset of the queries and is extrapolated linearly (it is a loop of
   identical per-query steps); the subset's values are compared with the engine's.
2. Scale: 10,000 queries x 1,000,000 items, 64 bits, mAP@1000, with the peak memory of the engine.
3. faiss binary indexes on 1,000,000 x 64-bit codes: build time, one-query latency, recall@100.

Synthetic data: label frequencies skewed like NUS-WIDE's 21 concepts (about 2.2 labels per item,
at least one), codes = signs of the sum of per-label random centres plus Gaussian noise, so codes are
correlated with labels (mAP well above chance) and Hamming ties are realistic.

Usage: python benchmarks/eval_bench.py [--quick] [--threads N] [--sections 1,2,3]
(``HASHBENCH_METRICS_BACKEND=numpy`` measures the numpy path instead of the compiled kernel.)
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.eval import index as X  # noqa: E402
from pipeline.eval import metrics as M  # noqa: E402
from pipeline.eval.metrics.checks import resolve_threads  # noqa: E402

N_LABELS = 21


def make_data(rng: np.random.Generator, n: int, nbits: int, centres: np.ndarray, noise: float = 1.2, chunk: int = 200_000):
    """Skewed multi-hot labels (n, 21) and packed codes (n, nbits/8) correlated with them."""
    freq = np.minimum(0.9, 0.35 * np.arange(1, N_LABELS + 1) ** -0.7)
    labels = rng.random((n, N_LABELS)) < freq
    empty = ~labels.any(axis=1)
    labels[np.flatnonzero(empty), rng.choice(N_LABELS, size=int(empty.sum()), p=freq / freq.sum())] = True
    codes = np.empty((n, nbits // 8), dtype=np.uint8)
    for s in range(0, n, chunk):
        lab = labels[s : s + chunk].astype(np.float32)
        real = lab @ centres / np.sqrt(lab.sum(axis=1, keepdims=True)) + noise * rng.standard_normal((len(lab), nbits), dtype=np.float32)
        codes[s : s + chunk] = np.packbits(real >= 0, axis=1)
    return labels.astype(np.uint8), codes


def reference_map(q_codes, db_codes, q_labels, db_labels, topks):
    """The usual reference loop (DeepHash-pytorch CalcTopMap style, with a stable argsort) for several cut-offs."""
    nbits = q_codes.shape[1] * 8
    qb = np.unpackbits(q_codes, axis=1).astype(np.float32) * 2 - 1
    rb = np.unpackbits(db_codes, axis=1).astype(np.float32) * 2 - 1
    ql, rl = q_labels.astype(np.float32), db_labels.astype(np.float32)
    out = np.zeros((len(qb), len(topks)))
    for i in range(len(qb)):
        gnd = (ql[i] @ rl.T > 0).astype(np.float32)
        hamm = 0.5 * (nbits - qb[i] @ rb.T)
        ind = np.argsort(hamm, kind="stable")
        gnd = gnd[ind]
        for j, topk in enumerate(topks):
            tgnd = gnd[:topk]
            tsum = int(tgnd.sum())
            if tsum == 0:
                continue
            count = np.linspace(1, tsum, tsum)
            tindex = np.asarray(np.where(tgnd == 1)).ravel() + 1.0
            out[i, j] = np.mean(count / tindex)
    return out


def timed(fn, repeats: int = 1):
    """(result, best wall seconds, CPU seconds of that run) over ``repeats`` runs."""
    best = (None, float("inf"), 0.0)
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        res = fn()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        if wall < best[1]:
            best = (res, wall, cpu)
    return best


def section_nus(rng, centres, quick: bool, threads: int | None) -> None:
    nq, ndb, nbits = (300, 193_734, 64) if quick else (2_000, 193_734, 64)
    n_ref = 50 if quick else 200
    print(f"\n== 1. NUS-WIDE scale: {nq:,} queries x {ndb:,} database items, {nbits} bits, {N_LABELS} labels ==")
    ql, qc = make_data(rng, nq, nbits, centres)
    dl, dc = make_data(rng, ndb, nbits, centres)
    print(f"labels per item {dl.sum(1).mean():.2f}; relevant fraction per query {((ql[:200].astype(np.float32) @ dl.T.astype(np.float32)) > 0).mean():.3f}")
    M.average_precision(qc[:4], dc, ql[:4], dl, k=[None, 5000], ties="index", n_threads=threads)  # warm-up
    ap_idx, t_idx, c_idx = timed(lambda: M.average_precision(qc, dc, ql, dl, k=[None, 5000], ties="index", n_threads=threads), 2)
    ap_exp, t_exp, c_exp = timed(lambda: M.average_precision(qc, dc, ql, dl, k=[None, 5000], ties="expected", n_threads=threads), 2)
    _, t_all, _ = timed(lambda: M.evaluate_retrieval(qc, dc, ql, dl, topk=(100, 5000), ties="index", n_threads=threads))
    ref, t_ref, c_ref = timed(lambda: reference_map(qc[:n_ref], dc, ql[:n_ref], dl, [ndb, 5000]), 2)
    t_ref_full = t_ref / n_ref * nq
    diff = np.abs(ref - ap_idx[:n_ref]).max()
    print(f"engine, ties='index'   : mAP@all {ap_idx[:, 0].mean():.6f}  mAP@5000 {ap_idx[:, 1].mean():.6f}  "
          f"in {t_idx:.2f} s wall, {c_idx:.2f} s CPU ({t_idx / nq * 1e3:.3f} ms/query)")
    print(f"engine, ties='expected': mAP@all {ap_exp[:, 0].mean():.6f}  mAP@5000 {ap_exp[:, 1].mean():.6f}  "
          f"in {t_exp:.2f} s wall, {c_exp:.2f} s CPU ({t_exp / nq * 1e3:.3f} ms/query)")
    print(f"engine, evaluate_retrieval (index ties; mAP, P/R/NDCG@100,@5000, PR curve, P@r2): {t_all:.2f} s")
    print(f"reference (stable argsort per query) on the first {n_ref} queries: {t_ref:.2f} s wall, {c_ref:.2f} s CPU "
          f"({t_ref / n_ref * 1e3:.2f} ms/query; numpy's BLAS threads included)")
    print(f"  subset values: reference mAP@all {ref[:, 0].mean():.6f} mAP@5000 {ref[:, 1].mean():.6f}; "
          f"engine on the same queries {ap_idx[:n_ref, 0].mean():.6f} / {ap_idx[:n_ref, 1].mean():.6f}; max |per-query AP diff| {diff:.2e}")
    print(f"  extrapolated linearly to all {nq:,} queries: {t_ref_full:.1f} s")
    print(f"speed-up, index mode vs reference (wall): {t_ref_full / t_idx:.1f}x   (expected mode: {t_ref_full / t_exp:.1f}x)")


def section_scale(rng, centres, quick: bool, threads: int | None) -> None:
    nq, ndb, nbits, k = (1_000, 1_000_000, 64, 1000) if quick else (10_000, 1_000_000, 64, 1000)
    print(f"\n== 2. Scale: {nq:,} queries x {ndb:,} database items, {nbits} bits, mAP@{k} ==")
    ql, qc = make_data(rng, nq, nbits, centres)
    dl, dc = make_data(rng, ndb, nbits, centres)
    for ties in ("expected", "index"):
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        tracemalloc.start()
        res, t, _ = timed(lambda: M.mean_average_precision(qc, dc, ql, dl, k=k, ties=ties, n_threads=threads))
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(f"ties='{ties}': mAP@{k} {res:.6f} in {t:.1f} s ({t / nq * 1e3:.2f} ms/query); "
              f"peak traced memory {peak / 2**20:.0f} MiB; process max RSS {rss1 / 1024:.0f} MiB (grew {max(0, rss1 - rss0) / 1024:.0f} MiB)")


def section_faiss(rng, centres, quick: bool, threads: int | None) -> None:
    ndb, nbits, k = 1_000_000, 64, 100
    nq = 200 if quick else 1000
    print(f"\n== 3. faiss binary indexes: {ndb:,} x {nbits}-bit codes, k={k}, {nq} queries (latency: 200 single-query searches) ==")
    _, dc = make_data(rng, ndb, nbits, centres)
    _, qc = make_data(rng, nq, nbits, centres)
    configs = [("flat", {}), ("hash", {}), ("hash", {"nflip": 3}), ("multihash", {}), ("multihash", {"hash_bits": 21, "nflip": 2})]
    for kind, kw in configs:
        st = X.measure_index(kind, dc, qc, k=k, n_latency_queries=200, n_threads=threads, **kw)
        rec = "exact" if st.recall_at_k is None else f"{st.recall_at_k:.3f}"
        print(f"{kind:9s} {str(st.params):42s} build {st.build_seconds:6.2f} s  p50 {st.latency_p50_ms:7.3f} ms  p95 {st.latency_p95_ms:7.3f} ms  "
              f"batch {st.batch_qps:9.0f} q/s  memory {st.memory_bytes / 2**20:6.1f} MiB  recall@{k} {rec}  ({st.device})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller problems (about a minute)")
    ap.add_argument("--threads", type=int, default=None, help="engine and faiss threads (default: all cores)")
    ap.add_argument("--sections", default="1,2,3", help="comma-separated sections to run")
    args = ap.parse_args()
    from pipeline.eval import kernels

    backend = kernels.backend()
    if args.threads:
        threads = f"{args.threads}"
    elif backend == "kernel":
        threads = f"{resolve_threads(None)}"
    else:
        threads = f"{resolve_threads(None)} (index ties), 1 (expected ties)"
    print(f"numpy {np.__version__}; metrics backend {backend} (${kernels.ENV_VAR}=numpy|kernel forces one); "
          f"cores {os.cpu_count()}; engine threads {threads}; "
          f"load average {os.getloadavg()[0]:.2f} (other processes share this machine)")
    rng = np.random.default_rng(2024)
    centres = np.where(rng.random((N_LABELS, 64)) < 0.5, -1.0, 1.0).astype(np.float32)
    sections = {s.strip() for s in args.sections.split(",")}
    if "1" in sections:
        section_nus(rng, centres, args.quick, args.threads)
    if "2" in sections:
        section_scale(rng, centres, args.quick, args.threads)
    if "3" in sections:
        section_faiss(rng, centres, args.quick, args.threads)
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
