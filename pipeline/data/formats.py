"""The prepared-data format (schema version 1), written atomically and read by memory map.

One directory per dataset::

    manifest.json        schema version, counts, label names, modalities, protocols, sha256 of every
                         array, source hashes, the parameters that produced it
    labels.npy           (N, C) uint8 multi-hot (single-label data is one-hot)
    <modality>.npy       features: (N, D) float32;  pixels: (N, C, H, W) uint8 (memory-mapped)
    <modality>.npz       bag-of-words: scipy.sparse CSR (N, V), counts as float32
    splits/<protocol>.npz  query / train / database int64 index arrays

The writer builds everything in a temporary sibling folder and renames it into place, so an
interrupted prepare never leaves a folder that looks complete and never damages the previous one; the
next prepare removes the siblings a killed one left behind (:mod:`pipeline.data.staging`).

Before training, :meth:`PreparedDataset.check` verifies the folder against its manifest: every listed
file present with its recorded size, every ``.npy`` header with the manifest's shape and dtype and a
file long enough for them, and the sha256 of every file. A full hash of NUS-WIDE's 30 GB of pixels
takes a minute, so verified digests are cached in a small file beside the folder
(``.<dataset>.verified.json``) keyed by (size, mtime, ctime, inode, device): an unchanged file is not
hashed again; a file written since (its mtime and ctime change) is hashed again and refused on a
mismatch. ``verify()`` hashes everything regardless of the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
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
from pipeline.data.staging import remove_stale, staging_path
from pipeline.core.errors import DataError

log = logging.getLogger(__name__)

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
    remove_stale(out_dir, mine=("tmp", "old"))
    tmp = staging_path(out_dir, "tmp")
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
            if not split.train_in_database:  # recorded only when disjoint, so other manifests keep their hashes
                protocols[pname]["train_in_database"] = False
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
            "sizes": {f: (tmp / f).stat().st_size for f in files},
            "sources": dict(sources),
            "params": dict(params),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        old = staging_path(out_dir, "old")
        if out_dir.exists():
            out_dir.rename(old)
        tmp.rename(out_dir)
        if old.exists():
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    VerifiedCache(out_dir).remember_all(manifest["checksums"])  # hashed just now: the first trial need not hash again
    return out_dir


class VerifiedCache:
    """sha256 digests of a prepared folder's files that matched its manifest, keyed by what changes when
    a file is written: (size, mtime_ns, ctime_ns, inode, device). Stored beside the folder (not inside:
    the folder is a DVC output, and a file added to it after prepare would make DVC rerun the stage).
    The cache only lets an unchanged file skip rehashing; a miss or an unreadable cache means hashing."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.path = self.root.with_name(f".{self.root.name}.verified.json")
        try:
            self.entries: dict[str, dict] = json.loads(self.path.read_text()).get("files", {})
        except (OSError, ValueError, AttributeError):
            self.entries = {}
        self.dirty = False

    @staticmethod
    def _key(st: os.stat_result) -> list[int]:
        return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]

    def verified(self, name: str, st: os.stat_result, sha256: str) -> bool:
        """Whether ``name`` with this stat was hashed to ``sha256`` before."""
        hit = self.entries.get(name)
        return isinstance(hit, dict) and hit.get("stat") == self._key(st) and hit.get("sha256") == sha256

    def remember(self, name: str, st: os.stat_result, sha256: str) -> None:
        self.entries[name] = {"stat": self._key(st), "sha256": sha256}
        self.dirty = True

    def remember_all(self, checksums: Mapping[str, str]) -> None:
        self.entries = {}
        for name, sha in checksums.items():
            self.remember(name, (self.root / name).stat(), sha)
        self.save()

    def save(self) -> None:
        if not self.dirty:
            return
        tmp = staging_path(self.path, "tmp")
        try:
            tmp.write_text(json.dumps({"root": str(self.root), "files": self.entries}, indent=1, sort_keys=True) + "\n")
            os.replace(tmp, self.path)
        except OSError as exc:  # a read-only shared folder: verification still works, only uncached
            tmp.unlink(missing_ok=True)
            log.debug("%s: cannot write the verified-digest cache (%s)", self.path, exc)
        self.dirty = False


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

    def check(self) -> str:
        """Verify the folder against its manifest before training (:meth:`verify` with the digest cache:
        milliseconds when nothing changed) and return the manifest's sha256, which identifies the data
        a trial trains on. Raises :class:`DataError` naming the first bad file and what mismatched."""
        self.verify(quick=True)
        return self.manifest_sha256

    def verify(self, quick: bool = False) -> None:
        """Check every listed file: its size, the shape and dtype in an ``.npy`` header, and its sha256
        against the manifest. ``quick``: skip hashing a file whose (size, mtime, ctime, inode) match a
        digest verified earlier (:class:`VerifiedCache`); otherwise every file is hashed."""
        cache = VerifiedCache(self.root) if quick else None
        sizes = self.manifest.get("sizes", {})  # absent in folders prepared before sizes were recorded
        again = f"prepare the dataset again (`hashbench prepare {self.name}`)"
        try:
            for f, expected in self.manifest["checksums"].items():
                path = self.root / f
                try:
                    st = path.stat()
                except FileNotFoundError:
                    raise DataError(f"{path}: listed in the manifest but missing; {again}") from None
                if f in sizes and st.st_size != sizes[f]:
                    raise DataError(f"{path}: {st.st_size} bytes, the manifest records {sizes[f]}: the file was truncated or changed; {again}")
                if f.endswith(".npy"):
                    self._check_npy(f, path, st.st_size, again)
                if cache is not None and cache.verified(f, st, expected):
                    continue
                got = sha256_file(path)
                if got != expected:
                    raise DataError(f"{path}: sha256 {got} does not match the manifest ({expected}): the file is corrupt or was changed; {again}")
                if cache is not None:
                    cache.remember(f, st, got)
        finally:
            if cache is not None:
                cache.save()

    def _expected_array(self, f: str) -> tuple[tuple[int, ...], str] | None:
        n = self.manifest["n_items"]
        if f == "labels.npy":
            return (n, self.manifest["n_classes"]), "uint8"
        for meta in self.manifest["modalities"].values():
            if meta["file"] == f:
                return (n, *meta["shape"]), meta["dtype"]
        return None

    def _check_npy(self, f: str, path: Path, size: int, again: str) -> None:
        """The ``.npy`` header's shape and dtype against the manifest, and the file's length against them."""
        try:
            with open(path, "rb") as fh:
                version = np.lib.format.read_magic(fh)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _, dtype = read(fh)
                offset = fh.tell()
        except (ValueError, OSError) as exc:
            raise DataError(f"{path}: not a readable .npy file ({exc}); {again}") from None
        want = self._expected_array(f)
        if want is not None and (tuple(shape) != want[0] or str(dtype) != want[1]):
            raise DataError(f"{path}: array {tuple(shape)} {dtype}, the manifest says {want[0]} {want[1]}; {again}")
        need = offset + math.prod(shape) * dtype.itemsize
        if size != need:
            raise DataError(f"{path}: {size} bytes, its header {tuple(shape)} {dtype} needs {need}: the file was truncated or changed; {again}")

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
            return Split(query=z["query"], train=z["train"], database=z["database"],
                         train_in_database=self.manifest["protocols"][protocol].get("train_in_database", True))

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
