"""Cost of verifying prepared data before a trial (:meth:`PreparedDataset.check`), on a NUS-WIDE-sized set.

NUS-WIDE's top-21-concept set has 195,834 image-text pairs (1,000-d tags, 21 labels). The synthetic
generator (pipeline/data/synthetic.py) makes a set of that many items; ``--image-size`` sets the stored
pixels (the real prepared NUS-WIDE stores 3 x 224 x 224 uint8: 29.5 GB, which this measures by its
hashing rate rather than by writing 29.5 GB). Reported:

* ``verify()``: the full sha256 of every file (what a trial pays when the digest cache misses),
  with the rate in MB/s to scale to the real pixel bytes;
* ``check()`` with the digest cache warm (every trial start after prepare): sizes, .npy headers, stat;
* ``check()`` after one file changed (its digest is recomputed, the rest comes from the cache).

Usage: ``python benchmarks/data_check_bench.py [--image-size 16] [--out /tmp/nus-sized]``
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from pipeline.data.formats import PreparedDataset
from pipeline.data.synthetic import Synthetic, SyntheticParams

NUS_ITEMS, NUS_LABELS, NUS_VOCAB, NUS_QUERY, NUS_TRAIN = 195_834, 21, 1000, 2100, 10500
REAL_PIXEL_BYTES = NUS_ITEMS * 3 * 224 * 224


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image-size", type=int, default=16)
    ap.add_argument("--out", type=Path, help="folder for the prepared set (default: a temporary one, removed)")
    args = ap.parse_args()
    base = args.out or Path(tempfile.mkdtemp(prefix="nus-sized-"))
    out = base / "synthetic"
    params = SyntheticParams(n_items=NUS_ITEMS, n_labels=NUS_LABELS, vocab=NUS_VOCAB, image_size=args.image_size,
                             n_query=NUS_QUERY, n_train=NUS_TRAIN)
    t0 = time.perf_counter()
    Synthetic().prepare(params, base / "raw", out)
    prep_s = time.perf_counter() - t0
    ds = PreparedDataset(out)
    total = sum(ds.manifest["sizes"].values())
    print(f"NUS-WIDE-sized synthetic set: {NUS_ITEMS:,} items, {NUS_LABELS} labels, {NUS_VOCAB}-d tags, "
          f"pixels 3x{args.image_size}x{args.image_size}; {len(ds.manifest['checksums'])} files, {total / 1e6:,.1f} MB "
          f"(prepare {prep_s:.1f} s)")

    t0 = time.perf_counter()
    PreparedDataset(out).verify()
    full_s = time.perf_counter() - t0
    rate = total / full_s
    print(f"verify() full sha256 of every file: {full_s:.2f} s ({rate / 1e6:,.0f} MB/s, page cache warm); "
          f"at that rate the real 224-px pixels ({REAL_PIXEL_BYTES / 1e9:.1f} GB) take {REAL_PIXEL_BYTES / rate:.0f} s")

    times = []
    for _ in range(7):
        t0 = time.perf_counter()
        PreparedDataset(out).check()
        times.append(time.perf_counter() - t0)
    print(f"check() with the digest cache warm (every trial start): median {statistics.median(times) * 1e3:.1f} ms "
          f"(min {min(times) * 1e3:.1f}, max {max(times) * 1e3:.1f}; includes reading the manifest and hashing it)")

    (out / "labels.npy").touch()
    t0 = time.perf_counter()
    PreparedDataset(out).check()
    print(f"check() after labels.npy was touched (rehashes that file only): {(time.perf_counter() - t0) * 1e3:.1f} ms")
    if args.out is None:
        shutil.rmtree(base)


if __name__ == "__main__":
    main()
