"""Hand-crafted image features of a prepared dataset: the input of the classic (shallow) baselines.

The papers that compare against SCM, SePH, STMH and CMFH give those methods hand-crafted image
descriptors instead of pixels; MFPMC (``../shared/papers/001``, Sec. 3.1, lines 213-217): "for the
cross-modal hashing methods based on hand-crafted features, each image is represented by a 500-d bag of
visual words (NUS-WIDE) / a 512-d SIFT feature vector (MIRFlickr-25K)". A dataset module declares such a
descriptor as a :class:`HandcraftedFeature` (where its raw file lies, its width, its source); when the
file is present, ``prepare`` writes a sibling prepared dataset ``<dataset>+<feature>``
(``data/prepared/nuswide+sift-bow500``) in the layout of the frozen-features stage
(:mod:`pipeline.data.features`): the same items, labels, text and splits as ``<dataset>``, and an
``image`` modality of ``features`` (float32, one row per item). A suite trains on it with
``dataset: <dataset>+<feature>``; only methods that accept features run there.

Raw layout: a text matrix of whitespace-separated numbers, one line per image of the source's own image
order (NUS-WIDE: the 269,648 lines of ``ImageList/Imagelist.txt``; MIRFlickr-25K: im1 .. im25000); the
dataset module selects its items' rows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.errors import DataError
from pipeline.data.download import read_verified_record
from pipeline.data.formats import ModalityData, PreparedDataset, write_prepared

log = logging.getLogger(__name__)

SEP = "+"


@dataclass(frozen=True)
class HandcraftedFeature:
    """One hand-crafted descriptor of a dataset's images."""

    name: str
    path: str  # relative to the dataset's raw folder
    dim: int
    description: str

    def dataset_name(self, dataset: str) -> str:
        return f"{dataset}{SEP}{self.name}"


def fetched_feature(dataset: str, features: dict[str, HandcraftedFeature], raw_dir: Path, name: str) -> tuple[HandcraftedFeature, str]:
    """The feature ``name`` of ``dataset`` and the sha256 its fetch recorded; an error saying what to place otherwise."""
    if name not in features:
        raise DataError(f"{dataset}: no hand-crafted feature {name!r}; available: {', '.join(features) or 'none'}")
    feature = features[name]
    sha = read_verified_record(raw_dir, dataset)["files"].get(feature.path)
    if sha is None:
        raise DataError(f"{dataset}: {Path(raw_dir) / feature.path} was not fetched ({feature.description}); "
                        f"place it there and run `hashbench fetch {dataset}` again")
    return feature, sha


def read_matrix(path: Path, n_rows: int, n_cols: int) -> np.ndarray:
    """(n_rows, n_cols) float32 from a text file of whitespace-separated numbers, one row per line."""
    try:
        frame = pd.read_csv(path, sep=r"\s+", header=None, dtype=np.float32, engine="c")
    except (ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: not a matrix of whitespace-separated numbers ({exc})") from None
    arr = frame.to_numpy(dtype=np.float32)
    if arr.shape != (n_rows, n_cols):
        raise DataError(f"{path}: {arr.shape[0]} lines x {arr.shape[1] if arr.ndim == 2 else 0} values, expected {n_rows} x {n_cols} (one line per image)")
    if not np.isfinite(arr).all():
        raise DataError(f"{path}: non-finite values")
    return arr


def write_handcrafted(prepared_dir: Path, feature: HandcraftedFeature, rows: np.ndarray, sha256: str) -> Path:
    """Write ``<dataset>+<feature>`` beside the prepared dataset ``prepared_dir``: its items, labels, text and
    splits, with ``rows`` (one per item, in item order) as the ``image`` features; return the new folder."""
    src = PreparedDataset(Path(prepared_dir))
    n = int(src.manifest["n_items"])
    if rows.shape != (n, feature.dim):
        raise DataError(f"{feature.path}: {rows.shape[0]} x {rows.shape[1]} feature rows for the {n} items of {prepared_dir} (expected {n} x {feature.dim})")
    modalities = {"image": ModalityData("features", rows)}
    for m, meta in src.manifest["modalities"].items():
        if m != "image":
            data = src.modality(m)
            modalities[m] = ModalityData(meta["kind"], data if meta["kind"] == "bow" else np.asarray(data))
    out = Path(prepared_dir).with_name(feature.dataset_name(src.name))
    params = {**src.manifest["params"], "handcrafted": {"feature": feature.name, "file": feature.path, "dim": feature.dim,
                                                         "description": feature.description, "source_manifest_sha256": src.manifest_sha256}}
    write_prepared(
        out, dataset=out.name, labels=np.asarray(src.labels), label_names=src.manifest["label_names"],
        multi_label=src.manifest["multi_label"], modalities=modalities,
        splits={p: src.split(p) for p in src.manifest["protocols"]},
        sources={**src.manifest["sources"], feature.path: sha256}, params=params,
        protocol_notes={p: meta.get("notes", "") for p, meta in src.manifest["protocols"].items()},
    )
    log.info("%s: %d x %d hand-crafted features (%s)", out, n, feature.dim, feature.description)
    return out
