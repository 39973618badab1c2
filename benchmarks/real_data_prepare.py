"""fetch + prepare on the real data in /work/shared/data (not part of the test suite).

    .venv/bin/python benchmarks/real_data_prepare.py [--work /tmp/hashbench-real] [--only imagenette cifar10]

* ImageNette: ``imagenette2-128.tar`` (official imagenette2 layout at 128 px) placed by hand (symlink)
  as variant ``128``; every long-tail protocol.
* CIFAR-10: ``cifar10_jpg.tar`` (JPEG tree) as layout ``jpg``; every long-tail protocol and ``dpsh``.

Prints counts per split, class counts of the long-tailed training sets and wall times. The MIRFlickr-25K
cleaning on the real tags/labels is checked by tests/test_datasets_real.py (no images are available).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import pipeline.data.longtail  # noqa: F401  (registers cifar10, imagenette)
from pipeline.data.formats import PreparedDataset
from pipeline.data.registry import get_dataset

SHARED = Path("/work/shared/data")
JOBS = {
    "imagenette": (SHARED / "imagenette2-128" / "imagenette2-128.tar", {"variant": "128", "image_size": 128}),
    "cifar10": (SHARED / "cifar10-jpg" / "cifar10_jpg.tar", {"layout": "jpg", "image_size": 32}),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/hashbench-real"))
    ap.add_argument("--only", nargs="*", default=list(JOBS))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for name in args.only:
        archive, overrides = JOBS[name]
        spec = get_dataset(name)
        params = spec.Params(**overrides)
        raw, out = args.work / "raw" / name, args.work / "prepared" / name
        raw.mkdir(parents=True, exist_ok=True)
        link = raw / archive.name
        if not link.exists():
            link.symlink_to(archive)
        t0 = time.perf_counter()
        spec.fetch(params, raw)
        t1 = time.perf_counter()
        spec.prepare(params, raw, out)
        t2 = time.perf_counter()
        ds = PreparedDataset(out)
        print(f"== {name}: params {json.dumps(overrides)}; fetch (verify + extract) {t1 - t0:.1f} s, prepare {t2 - t1:.1f} s")
        print(f"   items {ds.manifest['n_items']}, image {ds.modality('image').shape}, classes {ds.manifest['label_names']}")
        for proto, meta in ds.manifest["protocols"].items():
            cc = meta["class_counts"]
            print(f"   [{proto}] counts {meta['counts']}; train per class {cc['train']}; query per class {cc['query']}")


if __name__ == "__main__":
    main()
