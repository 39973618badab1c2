"""Seconds of SePH's solve on Wikipedia and a fingerprint of the codes it gives (issue 16, item 4).

The solve (KL step, k-means anchors, the two kernel logistic regressions) is timed on its own, best of
``--repeat`` runs, at each code length, in wall-clock and in CPU seconds of the process (the latter is
what to compare on a shared machine; run with ``OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1`` so the two
agree on an idle one); the fingerprint is the sha256 of the packed sign codes of the
training items (the jointly learnt codes) and of every query and database item encoded in both views. Run
it on two checkouts to compare their speed and check that they give the same codes:

    PYTHONPATH=$PWD python benchmarks/seph_bench.py [--method seph-km] [--bits 16,64] [--repeat 3] [--root DIR]
    PYTHONPATH=/path/to/other/checkout python /path/to/this/benchmarks/seph_bench.py ...

``--root`` is a project folder whose ``data/prepared/wikipedia`` exists (default: this checkout's).
Prints one JSON line per code length.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np

from methods.registry import create_method
from pipeline.data.formats import PreparedDataset
from pipeline.data.loaders import SplitData
from pipeline.train.loop import encode_parts, make_train_data, seed_everything


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default=str(Path(__file__).resolve().parents[1]))
    ap.add_argument("--method", default="seph-km")
    ap.add_argument("--bits", default="16,64")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    ds = PreparedDataset(Path(args.root) / "data" / "prepared" / "wikipedia")
    info = ds.info("standard")
    data = SplitData(ds, "standard", ("image", "text"))
    for bits in (int(b) for b in args.bits.split(",")):
        times, cpu, digests = [], [], set()
        for _ in range(args.repeat):
            seed_everything(args.seed)
            method = create_method(args.method, None, info, bits)
            train_data = make_train_data(data.train, info, 256, "cpu")
            t0, c0 = time.perf_counter(), time.process_time()
            method.on_train_start(train_data)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            method.eval()
            codes = encode_parts(method, data, 256, "cpu")
            digest = hashlib.sha256(np.packbits(method.unified_train_codes >= 0).tobytes())
            for part in ("query", "database"):
                for m in ("image", "text"):
                    digest.update(np.packbits(codes[part][m] >= 0).tobytes())
            digests.add(digest.hexdigest()[:16])
        print(json.dumps({"method": args.method, "bits": bits, "seconds_best": round(min(times), 2),
                          "seconds_all": [round(t, 2) for t in times],
                          "cpu_seconds_best": round(min(cpu), 2), "codes_sha256": sorted(digests)}), flush=True)


if __name__ == "__main__":
    main()
