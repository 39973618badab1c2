"""The prepared-data format (schema version 1), written atomically and read by memory map.

One directory per dataset::

    manifest.json        schema version, counts, label names, modalities, protocols, sha256 of every
                         array, source hashes, the parameters that produced it
    labels.npy           (N, C) uint8 multi-hot (single-label data is one-hot)
    <modality>.npy       features: (N, D) float32;  pixels: (N, C, H, W) uint8 (memory-mapped)
    <modality>.npz       bag-of-words: scipy.sparse CSR (N, V), counts as float32
    splits/<protocol>.npz  query / train / database int64 index arrays

The writer builds everything in a temporary sibling folder and renames it into place, so an
interrupted prepare never leaves a folder that looks complete and never damages the previous one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import scipy.sparse as sp

from pipeline.core.types import DataInfo, ModalitySpec
from pipeline.data.splits import Split
from pipeline.core.errors import DataError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class ModalityData:
    """A modality to write: ``kind`` in features/pixels/bow and the (N, ...) data."""

    kind: str
    data: Any


def write_prepared(
    out_dir: Path,
    *,
    dataset: str,
    labels: np.ndarray,
    label_names: list[str],
    multi_label: bool,
    modalities: Mapping[str, ModalityData],
    splits: Mapping[str, Split],
    sources: Mapping[str, str],
    params: Mapping[str, Any],
    protocol_notes: Mapping[str, str] | None = None,
) -> Path:
    """Write a prepared dataset atomically to ``out_dir`` and return it."""
    out_dir = Path(out_dir)
    labels = np.asarray(labels)
    n = labels.shape[0]
    if labels.ndim != 2 or labels.shape[1] != len(label_names):
        raise DataError(f"{dataset}: labels must be (N, {len(label_names)}), got {labels.shape}")
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "splits").mkdir(parents=True)
    try:
        files: dict[str, str] = {}
        np.save(tmp / "labels.npy", labels.astype(np.uint8))
        files["labels.npy"] = "labels"
        mod_meta = {}
        for name, mod in modalities.items():
            if mod.kind == "bow":
                mat = sp.csr_matrix(mod.data, dtype=np.float32)
                if mat.shape[0] != n:
                    raise DataError(f"{dataset}: modality {name!r} has {mat.shape[0]} rows, labels have {n}")
                fname = f"{name}.npz"
                sp.save_npz(tmp / fname, mat, compressed=True)
                shape = (mat.shape[1],)
                dtype = "float32"
            elif mod.kind in ("features", "pixels"):
                arr = np.asarray(mod.data)
                if arr.shape[0] != n:
                    raise DataError(f"{dataset}: modality {name!r} has {arr.shape[0]} rows, labels have {n}")
                arr = arr.astype(np.float32 if mod.kind == "features" else np.uint8, copy=False)
                if mod.kind == "pixels" and arr.ndim != 4:
                    raise DataError(f"{dataset}: pixels of {name!r} must be (N, C, H, W), got {arr.shape}")
                fname = f"{name}.npy"
                np.save(tmp / fname, arr)
                shape = tuple(int(s) for s in arr.shape[1:])
                dtype = str(arr.dtype)
            else:
                raise DataError(f"{dataset}: modality {name!r} has unknown kind {mod.kind!r}")
            files[fname] = name
            mod_meta[name] = {"kind": mod.kind, "file": fname, "shape": list(shape), "dtype": dtype}
        protocols = {}
        for pname, split in splits.items():
            split.check(n, dataset=dataset, protocol=pname)
            fname = f"splits/{pname}.npz"
            np.savez(tmp / fname, query=split.query, train=split.train, database=split.database)
            files[fname] = f"split {pname}"
            protocols[pname] = {
                "counts": split.counts(),
                "class_counts": {part: labels[idx].sum(0).astype(int).tolist() for part, idx in split.parts().items()},
                "notes": (protocol_notes or {}).get(pname, ""),
            }
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "dataset": dataset,
            "n_items": int(n),
            "n_classes": int(labels.shape[1]),
            "multi_label": bool(multi_label),
            "label_names": list(label_names),
            "modalities": mod_meta,
            "protocols": protocols,
            "checksums": {f: sha256_file(tmp / f) for f in files},
            "sources": dict(sources),
            "params": dict(params),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        if out_dir.exists():
            out_dir.rename(old)
        tmp.rename(out_dir)
        if old.exists():
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


class PreparedDataset:
    """Read access to a prepared dataset; arrays are memory-mapped, nothing is loaded eagerly."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        path = self.root / MANIFEST
        if not path.is_file():
            raise DataError(f"{path}: no prepared dataset here; run `hashbench prepare {self.root.name}` (or `dvc repro`) first")
        try:
            self.manifest = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: corrupt manifest ({exc}); delete the folder and prepare again") from None
        version = self.manifest.get("schema_version")
        if version != SCHEMA_VERSION:
            raise DataError(f"{path}: schema_version {version!r}, this HashBench reads {SCHEMA_VERSION}; prepare the dataset again")
        for f in self.manifest["checksums"]:
            if not (self.root / f).is_file():
                raise DataError(f"{self.root / f}: listed in the manifest but missing; prepare the dataset again")

    @property
    def name(self) -> str:
        return self.manifest["dataset"]

    @cached_property
    def manifest_sha256(self) -> str:
        return sha256_file(self.root / MANIFEST)

    def verify(self) -> None:
        """Check every array against the manifest's sha256; raise naming the first bad file."""
        for f, expected in self.manifest["checksums"].items():
            got = sha256_file(self.root / f)
            if got != expected:
                raise DataError(f"{self.root / f}: sha256 {got} does not match the manifest ({expected}); prepare the dataset again")

    @cached_property
    def labels(self) -> np.ndarray:
        return np.load(self.root / "labels.npy", mmap_mode="r")

    def modality_spec(self, name: str) -> ModalitySpec:
        meta = self._mod_meta(name)
        return ModalitySpec(name=name, kind=meta["kind"], shape=tuple(meta["shape"]))

    def _mod_meta(self, name: str) -> dict:
        try:
            return self.manifest["modalities"][name]
        except KeyError:
            raise DataError(f"{self.root}: dataset has no modality {name!r}; it has {sorted(self.manifest['modalities'])}") from None

    def modality(self, name: str):
        """The (N, ...) array of a modality: a memory map, or a CSR matrix for bag-of-words."""
        meta = self._mod_meta(name)
        path = self.root / meta["file"]
        if meta["kind"] == "bow":
            return sp.load_npz(path).tocsr()
        return np.load(path, mmap_mode="r")

    def split(self, protocol: str) -> Split:
        if protocol not in self.manifest["protocols"]:
            raise DataError(f"{self.root}: no split for protocol {protocol!r}; prepared protocols: {sorted(self.manifest['protocols'])}")
        with np.load(self.root / "splits" / f"{protocol}.npz") as z:
            return Split(query=z["query"], train=z["train"], database=z["database"])

    def info(self, protocol: str) -> DataInfo:
        split = self.split(protocol)
        return DataInfo(
            dataset=self.name,
            modalities={m: self.modality_spec(m) for m in self.manifest["modalities"]},
            n_classes=self.manifest["n_classes"],
            multi_label=self.manifest["multi_label"],
            n_train=len(split.train),
            label_names=tuple(self.manifest["label_names"]),
        )
