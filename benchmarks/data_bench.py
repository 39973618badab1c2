"""Throughput of the image data paths, each against a plain ``torch.utils.data`` + PIL loop over the same
JPEGs in the same run. Prints; asserts nothing.

* **batches**: images/s from the prepared uint8 memory map into a float training batch
  (``pipeline.data.loaders.PartView.batch``, shuffled positions), against a ``Dataset`` that opens
  each JPEG with PIL, resizes it to the stored size and converts it to a tensor, batched by a
  ``DataLoader`` (``--workers`` processes; 0 = in the main process);
* **features**: images/s of the frozen-features extraction (``pipeline.data.features.extract_features``
  on the prepared pixels: resize + frozen backbone, float16 rows written, resumable bookkeeping), against
  the same backbone fed by the plain PIL ``DataLoader`` (decode, resize to the input size, forward).

Ratios are ours / plain (> 1: ours is faster). Both paths read the same ``--n`` images.

Usage: python benchmarks/data_bench.py --jpg-root DIR [--n 2000] [--input-size 224] [--backbone efficientnet_lite0]
  DIR holds ``<class>/<image>.jpg`` (e.g. the train/ folder of the CIFAR-10 JPEG tree). The weights entry of
  the backbone must be fetched (``hashbench fetch-weights efficientnet_lite0``) under --root (default: .).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.data.features import build_extractor, extract_features  # noqa: E402
from pipeline.data.formats import ModalityData, PreparedDataset, write_prepared  # noqa: E402
from pipeline.data.images import decode_to_memmap  # noqa: E402
from pipeline.data.loaders import PartView  # noqa: E402
from pipeline.data.splits import Split  # noqa: E402
from pipeline.data.weights import DEFAULT_WEIGHTS, resolve_weights  # noqa: E402


class PilJpegs(torch.utils.data.Dataset):
    def __init__(self, files, size):
        self.files, self.size = files, size

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        from PIL import Image

        img = Image.open(self.files[i]).convert("RGB").resize((self.size, self.size), Image.BILINEAR)
        return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255.0), 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jpg-root", required=True)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--stored-size", type=int, default=32, help="size of the prepared pixels (CIFAR-10: 32)")
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--root", default=".")
    args = ap.parse_args()
    files = sorted(Path(args.jpg_root).rglob("*.jpg"))[: args.n]
    n = len(files)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pix = decode_to_memmap(files, tmp / "pix.npy", args.stored_size, desc="decode")
        split = Split(query=np.arange(0, 1), train=np.arange(1, n), database=np.arange(1, n))
        src = tmp / "data" / "prepared" / "bench"
        write_prepared(src, dataset="bench", labels=np.ones((n, 1), np.uint8), label_names=["x"], multi_label=False,
                       modalities={"image": ModalityData("pixels", pix)}, splits={"s": split}, sources={}, params={})
        ds = PreparedDataset(src)
        view = PartView(ds, np.arange(n), ["image"], {})
        rng = np.random.default_rng(0)
        t = time.perf_counter()
        for start in range(0, n, args.batch_size):
            view.batch(rng.permutation(n)[: args.batch_size])
        ours_batches = n / (time.perf_counter() - t)
        loader = torch.utils.data.DataLoader(PilJpegs(files, args.stored_size), batch_size=args.batch_size, shuffle=True, num_workers=args.workers)
        t = time.perf_counter()
        for _ in loader:
            pass
        plain_batches = n / (time.perf_counter() - t)
        print(f"batches  prepared uint8 -> float batch: {ours_batches:9.1f} img/s   PIL DataLoader: {plain_batches:9.1f} img/s   ratio {ours_batches / plain_batches:.1f}x")

        weights = resolve_weights(DEFAULT_WEIGHTS[args.backbone], args.root)
        block = extract_features(src, tmp / "data" / "prepared" / f"bench+{args.backbone}", args.backbone, weights.entry.name,
                                 root=args.root, batch_size=args.batch_size,
                                 input_size=args.input_size, progress=False)
        ours_feat = n / block["seconds"]
        trunk, _ = build_extractor(args.backbone, str(weights.path), 3, args.input_size)
        loader = torch.utils.data.DataLoader(PilJpegs(files, args.input_size), batch_size=args.batch_size, num_workers=args.workers)
        t = time.perf_counter()
        with torch.inference_mode():
            for x, _ in loader:
                trunk(x)
        plain_feat = n / (time.perf_counter() - t)
        print(f"features {args.backbone} @ {args.input_size}px, ours: {ours_feat:9.1f} img/s   PIL DataLoader + same trunk: {plain_feat:9.1f} img/s   "
              f"ratio {ours_feat / plain_feat:.2f}x  ({block['device']}, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
