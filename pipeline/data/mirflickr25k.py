"""MIRFlickr-25K: 25,000 Flickr images with their tags and 24 concept labels (image + text).

Source: M. J. Huiskes, M. S. Lew, "The MIR Flickr Retrieval Evaluation", ACM MIR 2008;
https://press.liacs.nl/mirflickr/ . Official archives (the download page lists no checksums, so the
sha256 of each is recorded in the lock at the first download, trust on first use):

* ``mirflickr25k.zip`` (~2.9 GB): ``mirflickr/im1.jpg .. im25000.jpg`` and
  ``mirflickr/meta/tags/tags1.txt .. tags25000.txt`` (the image's Flickr tags, normalised: lower case,
  no spaces; one tag per line), plus ``meta/tags_raw``, ``meta/exif*``, ``meta/license`` (unused).
* ``mirflickr25k_annotations_v080.zip``: ``README.txt`` and one file per concept listing the numbers
  of the images annotated with it (one number per line). The 24 "potential" concepts (``animals``,
  ``baby``, ``bird``, ``car``, ``clouds``, ``dog``, ``female``, ``flower``, ``food``, ``indoor``, ``lake``,
  ``male``, ``night``, ``people``, ``plant_life``, ``portrait``, ``river``, ``sea``, ``sky``,
  ``structures``, ``sunset``, ``transport``, ``tree``, ``water``) are the 24 labels; the 14
  ``<concept>_r1.txt`` files ("relevant", strict) are not used.

URLs: ``http://press.liacs.nl/mirflickr/mirflickr25k.v3b/<file>``. Uncertain: the folder name
(``mirflickr25k.v3b`` here; older links say ``mirflickr25k``/``v2``) may change; set ``mirror`` to a
folder holding both files, or place them in ``data/raw/mirflickr25k/`` by hand.

Cleaning (Q.-Y. Jiang, W.-J. Li, "Deep Cross-Modal Hashing" (DCMH), CVPR 2017, followed by MFPMC and
most cross-modal hashing papers): tags are counted over all 25,000 images (number of images carrying
the tag); tags carried by at least ``min_tag_count`` = 20 images form the vocabulary (1,386 tags);
the items are the images with at least one label and at least one vocabulary tag (20,015 pairs). Text
= binary bag of the vocabulary tags (20,015 x 1,386); labels = 24-d multi-hot, alphabetical order.
Vocabulary order: decreasing count, then alphabetical (the published tag lists use other tie orders).
Item order: increasing image number. Images: ``image_size`` (default 224), see
:mod:`pipeline.data.images`.

Hand-crafted image features (optional, for the classic baselines; :mod:`pipeline.data.handcrafted`).
MFPMC gives its shallow baselines "a 512-d SIFT feature vector" per image (Sec. 3.1, line 217), as DCMH
does for its; neither paper says where that matrix comes from, the DCMH authors' data release
(``FAll``/``IAll``/``LAll``/``YAll`` .mat files: image names, 224-px pixels, labels, tags) holds none, and the
official MIRFLICKR-25000 page offers images, tags, EXIF and annotations but no descriptors. So the
descriptor is placed by hand: ``features/sift512.txt``, 25,000 lines of 512 whitespace-separated numbers,
line i = image ``im<i>.jpg`` (the official numbering; the DCMH item order is increasing image number, so
a 20,015-row matrix in DCMH order is the same rows with the removed images left out: expand it, or
place the 25,000-row one). Fetch records its sha256 (trust on first use); ``prepare`` then also writes
``mirflickr25k+sift512`` (the items, labels, tags and splits of ``mirflickr25k``; image = those rows).
The nearest *official* descriptors are the MPEG-7 ones of the MIRFLICKR-1M release and the deep
features of MIRFLICKR-1M-s16a, neither of which is 512-d SIFT; no features are bundled here.

Protocols (``split_seed`` draws them; ``query``/``train`` sizes are parameters):

* ``dcmh`` (default): 2,000 random queries, the other 18,015 pairs are the database, 10,000 training
  pairs drawn from the database (DCMH, MFPMC).
* ``adih`` (Zhou, Xu, Zheng, Xie, ADIH, ``shared/papers/003``, experiments, datasets paragraph, line 103
  of the copy: "10,000 samples as the training set, 5,000 samples as the test set, the remaining samples
  as the retrieval set", following its ref. [7]): 5,000 random queries and 10,000 random training pairs,
  disjoint, and the remaining 5,015 pairs the database (``adih.database: rest``, the paper's words;
  ``with_train`` puts the training pairs back into the database, DCMH's convention).

  Where our copy differs from paper 003: the paper counts **23** classes and 25,000 images and does not
  state its cleaning; we keep the **24** potential concepts of annotations v0.80 and the DCMH cleaning
  (20,015 pairs), because the paper does not say which concept it dropped nor which pairs it kept. With
  25,000 items the paper's database would hold 10,000 pairs, ours holds 5,015. The incremental split of
  its Table 1 (original / incremental classes, 12 / 11 for "more new than old") is not in our copy; see
  :mod:`pipeline.data.incremental`.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.data.archives import check_extracted
from pipeline.data.download import RemoteFile, fetch_archive, read_verified_record, record_fetch
from pipeline.data.download import verify_file
from pipeline.data.formats import ModalityData, write_prepared
from pipeline.data.handcrafted import HandcraftedFeature, fetched_feature, read_matrix, write_handcrafted
from pipeline.data.images import ImageDatasetParams, pixel_memmap
from pipeline.data.longtail import derive_seed
from pipeline.data.registry import DatasetSpec, MapCutoff, register_dataset
from pipeline.data.splits import Split, query_database_split
from pipeline.core.errors import DataError

log = logging.getLogger(__name__)

BASE_URL = "http://press.liacs.nl/mirflickr/mirflickr25k.v3b"
IMAGES = RemoteFile("mirflickr25k.zip", f"{BASE_URL}/mirflickr25k.zip", description="25,000 images + meta/tags (official MIRFLICKR-25000)")
ANNOTATIONS = RemoteFile(
    "mirflickr25k_annotations_v080.zip", f"{BASE_URL}/mirflickr25k_annotations_v080.zip",
    description="concept annotations v0.80 (one file per concept)",
)
LABELS = (
    "animals", "baby", "bird", "car", "clouds", "dog", "female", "flower", "food", "indoor", "lake", "male",
    "night", "people", "plant_life", "portrait", "river", "sea", "sky", "structures", "sunset", "transport", "tree", "water",
)
FULL_IMAGES, FULL_ITEMS, FULL_VOCAB = 25000, 20015, 1386
HANDCRAFTED = {
    "sift512": HandcraftedFeature(
        "sift512", "features/sift512.txt", 512,
        "512-d SIFT descriptor per image (the shallow baselines' input in DCMH and MFPMC), placed by hand, one line per image im1..im25000",
    ),
}
_TAGFILE = re.compile(r"^tags(\d+)\.txt$")


class SplitSizes(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    query: int = Field(gt=0)
    train: int = Field(gt=0)


class AdihSizes(BaseModel):
    """ADIH's protocol sizes (paper 003): queries as a count or a fraction of the items, training items,
    and whether the database is the rest (``rest``: query, train and database disjoint, the paper's
    words) or everything but the queries (``with_train``, DCMH's convention)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    query: int | None = Field(None, gt=0, description="number of queries (or set query_fraction)")
    query_fraction: float | None = Field(None, gt=0, lt=1, description="queries as a fraction of the items, rounded to the nearest integer")
    train: int = Field(gt=0)
    database: Literal["rest", "with_train"] = "rest"

    @model_validator(mode="after")
    def _one_query_size(self):
        if (self.query is None) == (self.query_fraction is None):
            raise ValueError(f"set exactly one of query and query_fraction, got query={self.query}, query_fraction={self.query_fraction}")
        return self

    def n_query(self, n_items: int) -> int:
        return self.query if self.query is not None else int(round(self.query_fraction * n_items))

    def draw(self, n_items: int, seed: int, *, where: str) -> Split:
        """The seeded split of ``n_items`` items; ``where`` (e.g. ``datasets.nuswide.adih``) names the key in errors."""
        nq = self.n_query(n_items)
        rest = self.database == "rest"
        if nq + self.train + (1 if rest else 0) > n_items:
            raise DataError(f"{where}: query {nq} + train {self.train} leave no database among the {n_items} items; lower {where}")
        return query_database_split(n_items, nq, seed, n_train=self.train, train_in_database=not rest)

    def describe(self, n_items: int) -> str:
        nq = self.n_query(n_items)
        frac = f" ({self.query_fraction:.0%} of {n_items})" if self.query_fraction is not None else ""
        if self.database == "rest":
            return f"{nq} random queries{frac}, {self.train} random training pairs, database = the remaining {n_items - nq - self.train} (all three disjoint)"
        return f"{nq} random queries{frac}, database = the other {n_items - nq}, {self.train} training pairs drawn from the database"


class MirflickrParams(ImageDatasetParams):
    min_tag_count: int = Field(20, ge=1, description="keep tags carried by at least this many of all images")
    dcmh: SplitSizes = SplitSizes(query=2000, train=10000)
    adih: AdihSizes = AdihSizes(query=5000, train=10000)


def read_tag_files(tag_dir: Path) -> list[list[str]]:
    """Tags of images 1..N from ``tags1.txt .. tagsN.txt`` (one tag per line; a tag counted once per image)."""
    numbers = sorted(int(m.group(1)) for p in tag_dir.iterdir() if (m := _TAGFILE.match(p.name)))
    if not numbers or numbers != list(range(1, len(numbers) + 1)):
        raise DataError(f"{tag_dir}: expected tags1.txt .. tagsN.txt without gaps, found {len(numbers)} files")
    out = []
    for i in numbers:
        text = (tag_dir / f"tags{i}.txt").read_bytes().decode("utf-8", errors="replace")
        seen: dict[str, None] = {}
        for line in text.splitlines():
            t = line.strip()
            if t:
                seen.setdefault(t, None)
        out.append(list(seen))
    return out


def read_annotations(ann_dir: Path, n_images: int) -> np.ndarray:
    """(n_images, 24) uint8 multi-hot from the 24 potential-concept files (image numbers, 1-based)."""
    labels = np.zeros((n_images, len(LABELS)), dtype=np.uint8)
    for j, name in enumerate(LABELS):
        path = ann_dir / f"{name}.txt"
        if not path.is_file():
            raise DataError(f"{path}: missing; the annotation archive must hold one file per concept ({', '.join(LABELS)})")
        nums = np.asarray([int(x) for x in path.read_text().split()], dtype=np.int64)
        if len(nums) and (nums.min() < 1 or nums.max() > n_images):
            raise DataError(f"{path}: image numbers outside 1..{n_images}")
        labels[nums - 1, j] = 1
    return labels


def clean_pairs(tags: list[list[str]], labels: np.ndarray, min_tag_count: int) -> tuple[np.ndarray, list[str], sp.csr_matrix]:
    """The DCMH cleaning: (kept image indices (0-based), vocabulary, binary bag-of-words of the kept items).

    The vocabulary is every tag carried by at least ``min_tag_count`` of *all* images, ordered by
    decreasing count then alphabetically; kept = images with >= 1 label and >= 1 vocabulary tag.
    """
    counts = Counter(t for ts in tags for t in ts)
    vocab = sorted((t for t, c in counts.items() if c >= min_tag_count), key=lambda t: (-counts[t], t))
    col = {t: j for j, t in enumerate(vocab)}
    rows, cols = [], []
    for i, ts in enumerate(tags):
        js = sorted({col[t] for t in ts if t in col})
        rows.extend([i] * len(js))
        cols.extend(js)
    bow = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(tags), len(vocab)))
    has_tag = np.diff(bow.indptr) > 0
    kept = np.flatnonzero(has_tag & (labels.sum(1) > 0))
    return kept, vocab, bow[kept]


def _find_annotation_dir(root: Path) -> Path:
    for cand in [root, *sorted(p for p in root.iterdir() if p.is_dir())]:
        if (cand / "animals.txt").is_file():
            return cand
    raise DataError(f"{root}: no concept files (animals.txt, ...) found; the annotation archive does not have the official layout")


@register_dataset
class Mirflickr25k(DatasetSpec):
    name = "mirflickr25k"
    modalities = ("image", "text")
    protocols = ("dcmh", "adih")
    default_protocol = "dcmh"
    multi_label = True
    Params = MirflickrParams
    handcrafted = HANDCRAFTED
    map_cutoffs = {
        "dcmh": MapCutoff(None, "mAP@all: DCMH (CVPR 2017) and MFPMC (paper 001, Sec. 3.2) rank the whole retrieval set (no cut-off stated)"),
        "adih": MapCutoff(None, "mAP@all: paper 003 states no cut-off; its baselines' code (DCMH) ranks the whole retrieval set"),
    }
    citation = "Huiskes & Lew, The MIR Flickr Retrieval Evaluation, ACM MIR 2008; protocols: Jiang & Li, Deep Cross-Modal Hashing, CVPR 2017; Zhou et al., ADIH (paper 003)"

    def fetch(self, params: MirflickrParams, raw_dir: Path) -> None:
        raw_dir = Path(raw_dir)
        hint = "Official page: https://press.liacs.nl/mirflickr/ (MIRFLICKR-25000 and its annotations v0.80)."
        files = {}
        files[IMAGES.name], _ = fetch_archive(IMAGES.with_mirror(params.mirror), raw_dir, self.name, root="mirflickr", manual_hint=hint)
        files[ANNOTATIONS.name], ann = fetch_archive(ANNOTATIONS.with_mirror(params.mirror), raw_dir, self.name, manual_hint=hint)
        if not (raw_dir / "mirflickr" / "meta" / "tags").is_dir():
            raise DataError(f"{raw_dir / IMAGES.name}: has no mirflickr/meta/tags/ folder; not the official archive")
        _find_annotation_dir(ann)
        for feature in HANDCRAFTED.values():
            if (raw_dir / feature.path).is_file():
                files[feature.path] = verify_file(raw_dir / feature.path, RemoteFile(feature.path, None, description=feature.description), self.name)
        record_fetch(raw_dir, self.name, files, source=(params.mirror or BASE_URL))

    @staticmethod
    def _items(params: MirflickrParams, raw_dir: Path, record: dict):
        """(image folder, number of images, all labels, kept image indices, vocabulary, bag-of-words of the kept)."""
        img_dir = check_extracted(raw_dir, "mirflickr", record)
        ann_dir = check_extracted(raw_dir, "mirflickr25k_annotations_v080", record)
        tags = read_tag_files(img_dir / "meta" / "tags")
        labels_all = read_annotations(_find_annotation_dir(ann_dir), len(tags))
        return (img_dir, len(tags), labels_all, *clean_pairs(tags, labels_all, params.min_tag_count))

    def prepare_handcrafted(self, params: MirflickrParams, raw_dir: Path, out_dir: Path, name: str, *, kept: np.ndarray | None = None,
                            n_images: int | None = None) -> Path:
        """Write ``mirflickr25k+<name>`` beside the prepared ``out_dir`` from the placed descriptor file."""
        raw_dir = Path(raw_dir)
        feature, sha = fetched_feature(self.name, HANDCRAFTED, raw_dir, name)
        if kept is None:
            _, n_images, _, kept, _, _ = self._items(params, raw_dir, read_verified_record(raw_dir, self.name))
        return write_handcrafted(out_dir, feature, read_matrix(raw_dir / feature.path, n_images, feature.dim)[kept], sha)

    def prepare(self, params: MirflickrParams, raw_dir: Path, out_dir: Path) -> None:
        raw_dir = Path(raw_dir)
        record = read_verified_record(raw_dir, self.name)
        img_dir, n_images, labels_all, kept, vocab, bow = self._items(params, raw_dir, record)
        n = len(kept)
        log.info("mirflickr25k: %d images, %d tags kept (>= %d images), %d pairs kept", n_images, len(vocab), params.min_tag_count, n)
        if n_images == FULL_IMAGES and params.min_tag_count == 20 and (n, len(vocab)) != (FULL_ITEMS, FULL_VOCAB):
            log.warning("mirflickr25k: %d pairs and %d tags, the papers report %d and %d; check the archive version", n, len(vocab), FULL_ITEMS, FULL_VOCAB)
        labels = labels_all[kept]
        files = [img_dir / f"im{i + 1}.jpg" for i in kept]
        missing = [str(p) for p in files if not p.is_file()]
        if missing:
            raise DataError(f"{img_dir}: {len(missing)} images are missing (first: {missing[0]}); fetch mirflickr25k again")
        splits, notes = {}, {}
        cleaning = f"{n} pairs (tags in >= {params.min_tag_count} images: {len(vocab)}; >= 1 label and >= 1 tag)"
        size = params.dcmh
        if size.query + size.train > n:
            raise DataError(f"mirflickr25k protocol 'dcmh': query {size.query} + train {size.train} exceed the {n} pairs; lower datasets.mirflickr25k.dcmh")
        splits["dcmh"] = query_database_split(n, size.query, derive_seed(params.split_seed, "dcmh"), n_train=size.train)
        notes["dcmh"] = (f"DCMH/MFPMC: {cleaning}; {size.query} random queries, database = the other {n - size.query}, "
                         f"{size.train} training pairs drawn from the database")
        splits["adih"] = params.adih.draw(n, derive_seed(params.split_seed, "adih"), where="datasets.mirflickr25k.adih")
        notes["adih"] = f"ADIH (paper 003): {cleaning}, 24 labels (the paper: 23); {params.adih.describe(n)}"
        with pixel_memmap(files, out_dir, params, desc="mirflickr25k") as pixels:
            write_prepared(
                out_dir, dataset=self.name, labels=labels, label_names=list(LABELS), multi_label=True,
                modalities={"image": ModalityData("pixels", pixels), "text": ModalityData("bow", bow)},
                splits=splits, sources=record["files"],
                params={**params.model_dump(mode="json"), "text_vocabulary": vocab},
                protocol_notes=notes,
            )
        for name, feature in HANDCRAFTED.items():
            if feature.path in record["files"]:
                self.prepare_handcrafted(params, raw_dir, out_dir, name, kept=kept, n_images=n_images)
