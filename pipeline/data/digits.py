"""scikit-learn's bundled handwritten digits: 1,797 real 8x8 grey images in 10 classes (no download).

Source: the UCI "Optical Recognition of Handwritten Digits" test set (E. Alpaydin, C. Kaynak, 1998),
as bundled with scikit-learn (``sklearn.datasets.load_digits``). Pixel values 0..16 are scaled to
0..255 (x 255/16, rounded) and stored as (N, 1, 8, 8) uint8.

Protocol ``standard``: ``n_query`` queries drawn per class in proportion to class size (seeded by
``split_seed``), the remaining items are the database, and the training set is the database (or a
seeded subset of ``n_train`` items when set). Relevance: same class.

Protocols ``lt100``, ``lt50``, ``lt10``, ``lt1``: long-tailed digits, a CPU stand-in for long-tailed
CIFAR-10 / ImageNette, built with the same profile code (:func:`pipeline.data.longtail.long_tail_splits`,
n_c = floor(n_max * IF^(-c/(C-1)))): query = the ``standard`` protocol's (balanced) queries; train =
database = the long-tailed part of the ``standard`` training set. ``lt_n_max`` is the head-class size
(default: the smallest class of the standard training set). With the defaults (n_max 139) the per-class
training counts at IF 100 are 139, 83, 49, 29, 17, 10, 6, 3, 2, 1 (class 0 = head, class 9 = tail).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import Field

from pipeline.data.fetching import read_fetch_record, write_fetch_record
from pipeline.data.formats import ModalityData, sha256_file, write_prepared
from pipeline.data.longtail import long_tail_splits
from pipeline.data.registry import DatasetParams, DatasetSpec, register_dataset
from pipeline.data.splits import query_database_split
from pipeline.core.errors import DataError


class DigitsParams(DatasetParams):
    n_query: int = Field(360, gt=0, lt=1797)
    n_train: int | None = Field(None, gt=0)
    lt_n_max: int | None = Field(None, ge=1, description="head-class size of the lt* protocols (default: smallest standard training class)")


@register_dataset
class Digits(DatasetSpec):
    name = "digits"
    modalities = ("image",)
    protocols = ("standard", "lt100", "lt50", "lt10", "lt1")
    default_protocol = "standard"
    multi_label = False
    Params = DigitsParams
    citation = "Alpaydin & Kaynak, Optical Recognition of Handwritten Digits, UCI 1998 (scikit-learn load_digits)"

    def fetch(self, params: DigitsParams, raw_dir: Path) -> None:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        raw_dir.mkdir(parents=True, exist_ok=True)
        tmp = raw_dir / ".digits.npz.part.npz"
        np.savez(tmp, images=bunch.images.astype(np.uint8), target=bunch.target.astype(np.int64))
        tmp.replace(raw_dir / "digits.npz")
        write_fetch_record(raw_dir, self.name, {"digits.npz": sha256_file(raw_dir / "digits.npz")}, source="sklearn.datasets.load_digits (bundled)")

    def prepare(self, params: DigitsParams, raw_dir: Path, out_dir: Path) -> None:
        record = read_fetch_record(raw_dir, self.name)
        with np.load(raw_dir / "digits.npz") as z:
            images, target = z["images"], z["target"]
        if images.shape[1:] != (8, 8) or images.max() > 16:
            raise DataError(f"{raw_dir / 'digits.npz'}: expected 8x8 images with values 0..16")
        pixels = np.rint(images.astype(np.float64) * 255.0 / 16.0).astype(np.uint8)[:, None, :, :]
        labels = np.eye(10, dtype=np.uint8)[target]
        split = query_database_split(len(target), params.n_query, params.split_seed, n_train=params.n_train, stratify=target)
        lt_splits, lt_notes, _ = long_tail_splits(
            target.astype(np.int64), np.sort(split.train), split.query, 10, params.lt_n_max, params.split_seed
        )
        write_prepared(
            out_dir,
            dataset=self.name,
            labels=labels,
            label_names=[str(i) for i in range(10)],
            multi_label=False,
            modalities={"image": ModalityData("pixels", pixels)},
            splits={"standard": split, **lt_splits},
            sources=record["files"],
            params=params.model_dump(mode="json"),
            protocol_notes={
                "standard": f"{params.n_query} stratified queries; database = the rest; train = database" + (f" subset of {params.n_train}" if params.n_train else ""),
                **{k: f"long-tailed digits (same profile code as cifar10/imagenette): {v}" for k, v in lt_notes.items()},
            },
        )
