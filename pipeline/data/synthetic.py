"""Seeded synthetic data in the layout of a multi-label image-text dataset (like MIRFlickr-25K).

Not a benchmark: it exists for tests and scale runs. Each item has 1-3 of ``n_labels`` labels; its
image (3 x S x S uint8) is the mean of its labels' smooth random prototypes plus noise, and its tags
are a binary bag-of-words drawn from its labels' topic words plus background words. Everything is a
function of ``seed`` (generation) and ``split_seed`` (protocol), so the bytes are reproducible.

Protocol ``standard`` (the DCMH/MIRFlickr layout): ``n_query`` random queries, the rest database,
``n_train`` training items drawn from the database.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp
from pydantic import Field, model_validator

from pipeline.data.fetching import write_fetch_record
from pipeline.data.formats import ModalityData, write_prepared
from pipeline.data.registry import DatasetParams, DatasetSpec, register_dataset
from pipeline.data.splits import query_database_split


class SyntheticParams(DatasetParams):
    seed: int = Field(0, ge=0)
    n_items: int = Field(1200, ge=20)
    n_labels: int = Field(8, ge=2)
    vocab: int = Field(200, ge=10)
    image_size: int = Field(16, ge=4)
    n_query: int = Field(200, gt=0)
    n_train: int = Field(600, gt=0)
    noise: float = Field(0.35, ge=0)

    @model_validator(mode="after")
    def _sizes(self):
        if self.n_query + self.n_train > self.n_items:
            raise ValueError(f"n_query + n_train ({self.n_query} + {self.n_train}) must not exceed n_items ({self.n_items})")
        return self


def make_multilabel_image_text(p: SyntheticParams) -> tuple[np.ndarray, np.ndarray, sp.csr_matrix]:
    """(labels (N, C) uint8, images (N, 3, S, S) uint8, tags (N, V) CSR) for parameters ``p``."""
    rng = np.random.default_rng(p.seed)
    n, c, s, v = p.n_items, p.n_labels, p.image_size, p.vocab
    labels = np.zeros((n, c), dtype=np.uint8)
    k = rng.integers(1, 4, size=n)
    for i in range(n):
        labels[i, rng.choice(c, size=min(k[i], c), replace=False)] = 1
    # smooth prototypes: a few random low-frequency cosines per label and channel
    yy, xx = np.meshgrid(np.linspace(0, np.pi, s), np.linspace(0, np.pi, s), indexing="ij")
    protos = np.zeros((c, 3, s, s))
    for j in range(c):
        for ch in range(3):
            fy, fx = rng.integers(1, 4, size=2)
            protos[j, ch] = np.cos(fy * yy + rng.uniform(0, np.pi)) * np.cos(fx * xx + rng.uniform(0, np.pi))
    weights = labels / labels.sum(1, keepdims=True)
    images = np.einsum("nc,cksl->nksl", weights, protos) + p.noise * rng.standard_normal((n, 3, s, s))
    images = np.clip((images + 1.5) / 3.0 * 255.0, 0, 255).astype(np.uint8)
    topic_words = [rng.choice(v, size=max(3, v // (2 * c)), replace=False) for _ in range(c)]
    rows, cols = [], []
    for i in range(n):
        words = set(rng.choice(v, size=2).tolist())  # background words
        for j in np.flatnonzero(labels[i]):
            words.update(rng.choice(topic_words[j], size=3, replace=False).tolist())
        rows.extend([i] * len(words))
        cols.extend(sorted(words))
    tags = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(n, v))
    return labels, images, tags


@register_dataset
class Synthetic(DatasetSpec):
    name = "synthetic"
    modalities = ("image", "text")
    protocols = ("standard",)
    default_protocol = "standard"
    multi_label = True
    Params = SyntheticParams
    citation = "HashBench synthetic generator (not a benchmark)"

    def fetch(self, params: SyntheticParams, raw_dir: Path) -> None:
        write_fetch_record(raw_dir, self.name, {}, source="generated at prepare time from params (nothing to download)")

    def prepare(self, params: SyntheticParams, raw_dir: Path, out_dir: Path) -> None:
        labels, images, tags = make_multilabel_image_text(params)
        split = query_database_split(params.n_items, params.n_query, params.split_seed, n_train=params.n_train)
        write_prepared(
            out_dir,
            dataset=self.name,
            labels=labels,
            label_names=[f"label{j}" for j in range(params.n_labels)],
            multi_label=True,
            modalities={"image": ModalityData("pixels", images), "text": ModalityData("bow", tags)},
            splits={"standard": split},
            sources={},
            params=params.model_dump(mode="json"),
            protocol_notes={"standard": f"{params.n_query} random queries; database = the rest; {params.n_train} train drawn from the database"},
        )
