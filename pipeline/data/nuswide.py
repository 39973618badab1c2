"""NUS-WIDE: 269,648 Flickr images, 81 concepts, 1,000-d tag vectors (image + text).

Source: T.-S. Chua, J. Tang, R. Hong, H. Li, Z. Luo, Y. Zheng, "NUS-WIDE: A Real-World Web Image
Database from National University of Singapore", CIVR 2009;
https://lms.comp.nus.edu.sg/wp-content/uploads/2019/research/nuswide/NUS-WIDE.html . The metadata
(image list, ground truth, tags) is downloadable from that page; the images themselves are
distributed on request (or re-crawled from the Flickr URLs), so everything is placed by hand in
``data/raw/nuswide/`` in the layout of the official files once unpacked:

* ``ImageList/Imagelist.txt``: 269,648 lines ``C:\\ImageData\\Flickr\\<folder>\\<nnnn_photoid>.jpg``
  (the part after ``Flickr\\`` is the image's path under ``Flickr/``);
* ``Flickr/<folder>/<nnnn_photoid>.jpg``: the images (the folder of the image distribution);
* ``Groundtruth/AllLabels/Labels_<concept>.txt``: 81 files, one 0/1 line per image of the list;
* ``NUS_WID_Tags/AllTags1k.txt``: one line per image, 1,000 whitespace-separated 0/1 values (the 1,000
  most frequent tags); ``NUS_WID_Tags/TagList1k.txt`` (optional): the 1,000 tag names.

Optional, for the classic baselines (hand-crafted features, :mod:`pipeline.data.handcrafted`): the
official 500-d bag of visual words on SIFT descriptors of the NUS-WIDE "Low-Level Features" release
(``NUS_WID_Low_Level_Features.rar`` on the same page), unpacked:

* ``Low_Level_Features/BoW_int.dat``: 269,648 lines of 500 whitespace-separated integer counts, one line
  per image of the image list (the layout the hashing papers' loaders read: ``load('BoW_int.dat')``;
  the release's other files, ``Normalized_CH.dat`` ... ``Normalized_WT.dat``, are colour/texture
  descriptors and are not used). When it is present, ``prepare`` also writes ``nuswide+sift-bow500``
  (the items, labels, tags and splits of ``nuswide``; image = the 500-d counts as float32), the input
  MFPMC states for its shallow baselines (Sec. 3.1: "each image is represented by a 500-d bag of visual
  words"). Uncertain: the release is a RAR archive, so it is placed unpacked by hand like the rest.

No checksums are published: ``fetch`` records the sha256 of the metadata files in the lock at first use
and checks every listed image is present (images are not hashed: 269,648 files).
(Uncertain: the exact file names of the tag list inside ``NUS_WID_Tags``; only ``AllTags1k.txt`` is
required.)

Items: images carrying at least one of the ``n_concepts`` = 21 most frequent concepts (counted over
all 269,648 images; ties by name): sky, clouds, person, water, animal, grass, buildings, window,
plants, lake, ocean, road, flowers, sunset, reflection, rocks, vehicle, snow, tree, beach, mountain.
The papers report 195,834 such pairs. Labels: 21-d multi-hot in the alphabetical order of the concept
files; text: the binary 1,000-d tag vector; item order: the image list's order.

Protocols (``split_seed`` draws them; sizes are parameters):

* ``dcmh`` (default, cross-modal; Jiang & Li, DCMH, CVPR 2017; MFPMC: 195,834 pairs): 2,100 random
  queries, the rest the database (193,734), 10,500 training pairs drawn from the database.
* ``adih`` (cross-modal; Zhou, Xu, Zheng, Xie, ADIH, ``shared/papers/003``, experiments, datasets
  paragraph, line 102 of the copy: the 21 most frequent concepts, 186,577 text-image pairs, "5,000
  random samples as the training set, 1% of the data (about 1,866) as the test set, the rest as the
  retrieval set"): on the pairs that also have at least one of the 1,000 tags, ``query_fraction`` 0.01
  of them as queries (rounded: 1,866 of 186,577), 5,000 training pairs, both random and disjoint, and the
  remaining pairs the database (``adih.database: rest``, the paper's words; 179,711 of 186,577;
  ``with_train`` puts the training pairs back into the database, DCMH's convention). Where our copy
  may differ: that the paper's 186,577 (vs 195,834 with >= 1 concept) are the tagged pairs is our
  reading, not stated; the paper's Table 1 (original / incremental split, 11 / 10 classes for "more new
  than old") is not in our copy.
* ``dpsh`` (image hashing; Li, Wang, Kang, DPSH, IJCAI 2016, and most deep image hashing papers):
  100 queries per concept (2,100), the rest the database (193,734), 500 training images per concept
  drawn from the database (10,500). Per-concept draws go concept by concept over items not yet drawn.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from pydantic import Field, model_validator

from pipeline.data.download import ChecksumLock, RemoteFile, manual_placement_error, read_verified_record, record_fetch, verify_file
from pipeline.data.formats import ModalityData, write_prepared
from pipeline.data.handcrafted import HandcraftedFeature, fetched_feature, read_matrix, write_handcrafted
from pipeline.data.images import ImageDatasetParams, pixel_memmap
from pipeline.data.longtail import derive_seed, per_class_sample
from pipeline.data.mirflickr25k import AdihSizes, SplitSizes
from pipeline.data.registry import MAP_5000_NUS_COCO, DatasetSpec, MapCutoff, register_dataset
from pipeline.data.splits import Split, query_database_split
from pipeline.core.errors import DataError

log = logging.getLogger(__name__)

PAGE = "https://lms.comp.nus.edu.sg/wp-content/uploads/2019/research/nuswide/NUS-WIDE.html"
IMAGE_LIST = "ImageList/Imagelist.txt"
LABEL_DIR = "Groundtruth/AllLabels"
TAGS = "NUS_WID_Tags/AllTags1k.txt"
TAG_NAMES = "NUS_WID_Tags/TagList1k.txt"
IMAGE_DIR = "Flickr"
N_CONCEPTS = 81
N_WORDS = 500
HANDCRAFTED = {
    "sift-bow500": HandcraftedFeature(
        "sift-bow500", "Low_Level_Features/BoW_int.dat", N_WORDS,
        "NUS-WIDE Low-Level Features: 500-d bag of visual words on SIFT descriptors (BoW_int.dat), counts",
    ),
}
_LABEL_FILE = re.compile(r"^Labels_(.+)\.txt$")

EXPECTED = [
    RemoteFile(IMAGE_LIST, None, description="the image list (269,648 lines), from ImageList.zip on the NUS-WIDE page"),
    RemoteFile(f"{LABEL_DIR}/Labels_<concept>.txt", None, description="81 concept files (one 0/1 per image), from Groundtruth.zip"),
    RemoteFile(TAGS, None, description="1,000-d binary tag vectors, one line per image, from NUS_WID_Tags.zip"),
    RemoteFile(f"{IMAGE_DIR}/<folder>/<nnnn_photoid>.jpg", None, description="the images (distributed on request by NUS; folder 'Flickr' of the image archive)"),
    RemoteFile(HANDCRAFTED["sift-bow500"].path, None, description="optional: 500-d SIFT bag of visual words, one line per image (NUS_WID_Low_Level_Features.rar, unpacked)"),
]


class NuswideParams(ImageDatasetParams):
    n_concepts: int = Field(21, ge=1, le=N_CONCEPTS)
    dcmh: SplitSizes = SplitSizes(query=2100, train=10500)
    adih: AdihSizes = AdihSizes(query_fraction=0.01, train=5000)
    dpsh_query_per_class: int = Field(100, ge=1)
    dpsh_train_per_class: int = Field(500, ge=1)
    allow_missing_images: bool = Field(False, description="drop items whose image file is absent instead of failing (counts then differ from the papers)")

    @model_validator(mode="after")
    def _no_mirror(self):
        if self.mirror:
            raise ValueError("nuswide is placed by hand (unpacked files); 'mirror' is not supported")
        return self


def read_binary_matrix(path: Path, n_rows: int, n_cols: int, block: int = 1 << 25) -> np.ndarray:
    """(n_rows, n_cols) uint8 from a text file of whitespace-separated 0/1 values (streamed in blocks)."""
    parts = []
    with open(path, "rb") as f:
        while data := f.read(block):
            buf = np.frombuffer(data, dtype=np.uint8)
            digit = (buf >= 48) & (buf <= 57)
            vals = buf[digit] - 48
            if vals.size and vals.max() > 1:
                raise DataError(f"{path}: expected only 0/1 values, found a {int(vals.max())}")
            # a multi-digit token would hide as two values: reject adjacent digits
            if np.any(digit[1:] & digit[:-1]):
                raise DataError(f"{path}: expected single-digit 0/1 values separated by whitespace")
            parts.append(vals.astype(np.uint8))
            if len(data) == block and digit[-1]:
                nxt = f.read(1)
                if nxt and 48 <= nxt[0] <= 57:
                    raise DataError(f"{path}: expected single-digit 0/1 values separated by whitespace")
                f.seek(-len(nxt), 1)
    vals = np.concatenate(parts) if parts else np.zeros(0, np.uint8)
    if vals.size != n_rows * n_cols:
        raise DataError(f"{path}: {vals.size} values, expected {n_rows} lines x {n_cols} = {n_rows * n_cols} (one line per image of {IMAGE_LIST})")
    return vals.reshape(n_rows, n_cols)


def image_paths(list_file: Path) -> list[str]:
    """Paths under ``Flickr/`` of every image of the list, in list order."""
    out = []
    for n, line in enumerate(list_file.read_text(errors="replace").splitlines(), 1):
        line = line.strip().replace("\\", "/")
        if not line:
            continue
        key = "Flickr/"
        pos = line.find(key)
        rel = line[pos + len(key):] if pos >= 0 else line.lstrip("/")
        if not rel or ".." in rel.split("/"):
            raise DataError(f"{list_file}:{n}: cannot read an image path from {line!r}")
        out.append(rel)
    return out


def concept_files(raw_dir: Path) -> list[tuple[str, Path]]:
    d = raw_dir / LABEL_DIR
    if not d.is_dir():
        return []
    return sorted((m.group(1), p) for p in d.iterdir() if (m := _LABEL_FILE.match(p.name)))


@register_dataset
class Nuswide(DatasetSpec):
    name = "nuswide"
    modalities = ("image", "text")
    protocols = ("dcmh", "adih", "dpsh")
    default_protocol = "dcmh"
    multi_label = True
    Params = NuswideParams
    handcrafted = HANDCRAFTED
    map_cutoffs = {
        "dcmh": MapCutoff(None, "mAP@all: DCMH (CVPR 2017) and MFPMC (paper 001, Sec. 3.2) rank the whole retrieval set (no cut-off stated)"),
        "adih": MapCutoff(None, "mAP@all: paper 003 states no cut-off; its baselines' code (DCMH) ranks the whole retrieval set"),
        "dpsh": MAP_5000_NUS_COCO,
    }
    citation = "Chua et al., NUS-WIDE, CIVR 2009; protocols: Jiang & Li, DCMH, CVPR 2017; Li et al., DPSH, IJCAI 2016; Zhou et al., ADIH (paper 003)"

    def _manual(self, raw_dir: Path, problem: str) -> DataError:
        return manual_placement_error(
            self.name, raw_dir, EXPECTED,
            hint=f"NUS-WIDE images are distributed on request ({PAGE}); the metadata files are on the same page. Unpack them so that:\n{problem}",
        )

    def fetch(self, params: NuswideParams, raw_dir: Path) -> None:
        raw_dir = Path(raw_dir)
        problems = []
        for rel in (IMAGE_LIST, TAGS):
            if not (raw_dir / rel).is_file():
                problems.append(f"missing {raw_dir / rel}")
        concepts = concept_files(raw_dir)
        if len(concepts) != N_CONCEPTS:
            problems.append(f"{raw_dir / LABEL_DIR}: found {len(concepts)} Labels_<concept>.txt files, expected {N_CONCEPTS}")
        if not (raw_dir / IMAGE_DIR).is_dir():
            problems.append(f"missing folder {raw_dir / IMAGE_DIR}/")
        if problems:
            raise self._manual(raw_dir, "\n".join("  problem: " + p for p in problems))
        files = {}
        metadata = [IMAGE_LIST, TAGS] + [f"{LABEL_DIR}/{p.name}" for _, p in concepts]
        if (raw_dir / TAG_NAMES).is_file():
            metadata.append(TAG_NAMES)
        metadata += [f.path for f in HANDCRAFTED.values() if (raw_dir / f.path).is_file()]
        lock = ChecksumLock()
        new = [rel for rel in metadata if not lock.get(self.name, rel)]
        for rel in metadata:
            files[rel] = verify_file(raw_dir / rel, RemoteFile(rel, None), self.name, lock, warn=False)
        if new:
            log.warning("nuswide: no published checksums; recorded the sha256 of %d metadata files in %s (trust on first use). "
                        "Commit that file so later fetches are verified against it.", len(new), lock.path)
        paths = image_paths(raw_dir / IMAGE_LIST)
        missing = [p for p in paths if not (raw_dir / IMAGE_DIR / p).is_file()]
        if missing:
            msg = (f"{raw_dir / IMAGE_DIR}: {len(missing)} of the {len(paths)} images of {IMAGE_LIST} are missing "
                   f"(first: {raw_dir / IMAGE_DIR / missing[0]})")
            if not params.allow_missing_images:
                raise DataError(msg + "; place the complete image folder, or set datasets.nuswide.allow_missing_images: true to drop them (counts will differ from the papers)")
            log.warning("%s; they will be dropped (allow_missing_images)", msg)
        record_fetch(raw_dir, self.name, files, source=f"manual placement ({PAGE}); {len(paths) - len(missing)} images present")

    @staticmethod
    def _items(params: NuswideParams, raw_dir: Path) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
        """(image paths, concept names, kept rows of the image list, their labels)."""
        paths = image_paths(raw_dir / IMAGE_LIST)
        n_all = len(paths)
        concepts = concept_files(raw_dir)
        all_labels = np.stack([read_binary_matrix(p, n_all, 1)[:, 0] for _, p in concepts], axis=1)
        freq = all_labels.sum(0).astype(np.int64)
        order = sorted(range(len(concepts)), key=lambda j: (-freq[j], concepts[j][0]))
        top = sorted(order[: params.n_concepts])  # alphabetical among the most frequent
        names = [concepts[j][0] for j in top]
        has_label = all_labels[:, top].sum(1) > 0
        present = np.asarray([(raw_dir / IMAGE_DIR / p).is_file() for p in paths])
        if not present[has_label].all():
            if not params.allow_missing_images:
                raise DataError(f"{raw_dir / IMAGE_DIR}: {int((~present[has_label]).sum())} images are missing; fetch again or set allow_missing_images")
            log.warning("nuswide: dropping %d items without an image file", int((~present[has_label]).sum()))
        kept = np.flatnonzero(has_label & present)
        return paths, names, kept, all_labels[kept][:, top]

    def prepare_handcrafted(self, params: NuswideParams, raw_dir: Path, out_dir: Path, name: str, *, kept: np.ndarray | None = None) -> Path:
        """Write ``nuswide+<name>`` beside the prepared ``out_dir`` from the raw descriptor file (see the module docstring)."""
        raw_dir = Path(raw_dir)
        feature, sha = fetched_feature(self.name, HANDCRAFTED, raw_dir, name)
        if kept is None:
            kept = self._items(params, raw_dir)[2]
        n_all = len(image_paths(raw_dir / IMAGE_LIST))
        return write_handcrafted(out_dir, feature, read_matrix(raw_dir / feature.path, n_all, feature.dim)[kept], sha)

    def prepare(self, params: NuswideParams, raw_dir: Path, out_dir: Path) -> None:
        raw_dir = Path(raw_dir)
        record = read_verified_record(raw_dir, self.name)
        paths, names, kept, labels = self._items(params, raw_dir)
        n_all = len(paths)
        n = len(kept)
        tags_all = read_binary_matrix(raw_dir / TAGS, n_all, 1000)
        text = sp.csr_matrix(tags_all[kept], dtype=np.float32)
        del tags_all
        log.info("nuswide: %d images, top-%d concepts %s, %d items", n_all, params.n_concepts, names, n)
        splits, notes = {}, {}
        s = params.dcmh
        self._check(n, s, "dcmh")
        splits["dcmh"] = query_database_split(n, s.query, derive_seed(params.split_seed, "dcmh"), n_train=s.train)
        notes["dcmh"] = f"DCMH/MFPMC: {n} pairs with >= 1 of the {params.n_concepts} most frequent concepts; {s.query} random queries, database = the rest, {s.train} training pairs from the database"
        tagged = np.flatnonzero(np.diff(text.indptr) > 0)
        sub = params.adih.draw(len(tagged), derive_seed(params.split_seed, "adih"), where="datasets.nuswide.adih")
        splits["adih"] = Split(query=tagged[sub.query], train=tagged[sub.train], database=tagged[sub.database], train_in_database=sub.train_in_database)
        notes["adih"] = f"ADIH (paper 003): the {len(tagged)} pairs that also have >= 1 of the 1,000 tags (the paper: 186,577); {params.adih.describe(len(tagged))}"
        query = per_class_sample(labels, params.dpsh_query_per_class, derive_seed(params.split_seed, "dpsh/query"), what="items")
        database = np.setdiff1d(np.arange(n), query).astype(np.int64)
        train = per_class_sample(labels, params.dpsh_train_per_class, derive_seed(params.split_seed, "dpsh/train"), candidates=database, what="database items")
        splits["dpsh"] = Split(query=query, train=train, database=database)
        notes["dpsh"] = (f"DPSH: {params.dpsh_query_per_class} queries per concept ({len(query)}), database = the rest ({len(database)}), "
                         f"{params.dpsh_train_per_class} training images per concept from the database ({len(train)})")
        tag_names = None
        if (raw_dir / TAG_NAMES).is_file():
            tag_names = [t.strip() for t in (raw_dir / TAG_NAMES).read_text(errors="replace").splitlines() if t.strip()]
        files = [raw_dir / IMAGE_DIR / paths[i] for i in kept]
        with pixel_memmap(files, out_dir, params, desc="nuswide") as pixels:
            write_prepared(
                out_dir, dataset=self.name, labels=labels, label_names=names, multi_label=True,
                modalities={"image": ModalityData("pixels", pixels), "text": ModalityData("bow", text)},
                splits=splits, sources=record["files"],
                params={**params.model_dump(mode="json"), "text_vocabulary": tag_names if tag_names and len(tag_names) == 1000 else None},
                protocol_notes=notes,
            )
        for name, feature in HANDCRAFTED.items():
            if feature.path in record["files"]:
                self.prepare_handcrafted(params, raw_dir, out_dir, name, kept=kept)

    @staticmethod
    def _check(n: int, s: SplitSizes, proto: str) -> None:
        if s.query + s.train > n:
            raise DataError(f"nuswide protocol {proto!r}: query {s.query} + train {s.train} exceed the {n} items; lower datasets.nuswide.{proto}")
