"""MS-COCO 2014: 123,287 images, 80 object categories, five captions each (image + text).

Source: T.-Y. Lin et al., "Microsoft COCO: Common Objects in Context", ECCV 2014; https://cocodataset.org .
Official archives (no checksums are published; the sha256 of each is recorded in the lock at the
first download, trust on first use):

* ``http://images.cocodataset.org/zips/train2014.zip`` (13.5 GB): ``train2014/COCO_train2014_<id:012d>.jpg``, 82,783 images;
* ``http://images.cocodataset.org/zips/val2014.zip`` (6.6 GB): ``val2014/COCO_val2014_<id:012d>.jpg``, 40,504 images;
* ``http://images.cocodataset.org/annotations/annotations_trainval2014.zip`` (241 MB):
  ``annotations/instances_{train,val}2014.json`` (``images``: id, file_name; ``annotations``:
  image_id, category_id; ``categories``: id, name) and ``annotations/captions_{train,val}2014.json``
  (``annotations``: image_id, caption).

Items: the train2014 and val2014 images with at least one object annotation (122,218 = 82,081 +
40,137; 5,069 images without a category are dropped), in the order train2014 then val2014, each by
image id. Labels: 80-d multi-hot, category-id order. Text: the captions of an image as one binary
bag of words over the ``vocab_size`` (default 2,000) most frequent words (lower-cased ``[a-z]+`` tokens,
a short English stop-word list removed, frequency = number of images whose captions use the word,
ties alphabetical), the usual text side of cross-modal COCO hashing. Images: ``image_size``
(default 224), see :mod:`pipeline.data.images`.

Protocols (``split_seed`` draws them; sizes are parameters):

* ``hashnet`` (default; image hashing: Cao et al., HashNet, ICCV 2017, and most deep image hashing
  papers since): 5,000 random queries, the other 117,218 images the database, 10,000 training images
  drawn from the database.
* ``crossmodal``: 2,000 random query pairs, the other 120,218 the database, 10,000 training pairs
  drawn from the database (the DCMH-style protocol of cross-modal papers on COCO, e.g. SSAH; papers
  vary between 2,000 and 5,000 queries: set ``crossmodal.query``).
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from pydantic import Field

from pipeline.data.archives import check_extracted
from pipeline.data.download import RemoteFile, fetch_archive, read_verified_record, record_fetch
from pipeline.data.formats import ModalityData, write_prepared
from pipeline.data.images import ImageDatasetParams, pixel_memmap
from pipeline.data.longtail import derive_seed
from pipeline.data.mirflickr25k import SplitSizes
from pipeline.data.registry import MAP_5000_NUS_COCO, DatasetSpec, register_dataset
from pipeline.data.splits import query_database_split
from pipeline.core.errors import DataError

log = logging.getLogger(__name__)

FILES = (
    RemoteFile("train2014.zip", "http://images.cocodataset.org/zips/train2014.zip", description="COCO 2014 training images"),
    RemoteFile("val2014.zip", "http://images.cocodataset.org/zips/val2014.zip", description="COCO 2014 validation images"),
    RemoteFile("annotations_trainval2014.zip", "http://images.cocodataset.org/annotations/annotations_trainval2014.zip",
               description="COCO 2014 instances and captions"),
)
ROOTS = {"train2014.zip": "train2014", "val2014.zip": "val2014", "annotations_trainval2014.zip": "annotations"}
PARTS = ("train2014", "val2014")
FULL_ITEMS = 122218
STOP_WORDS = frozenset(
    """a an the and or but of in on at to for from by with without into onto over under up down out off near
    next beside behind above below between through while is are was were be been being am it its it's this that
    these those there here some any each other another as than then very too also just so such has have had
    having do does did his her their them they he she we you i my your our him who whom which what where when
    how one two three four five several many few more most all both not no can could will would""".split()
)
_WORD = re.compile(r"[a-z]+")


class CocoParams(ImageDatasetParams):
    vocab_size: int = Field(2000, ge=1)
    hashnet: SplitSizes = SplitSizes(query=5000, train=10000)
    crossmodal: SplitSizes = SplitSizes(query=2000, train=10000)


def caption_words(caption: str) -> set[str]:
    return {w for w in _WORD.findall(caption.lower()) if w not in STOP_WORDS and len(w) > 1}


def build_bow(docs: list[set[str]], vocab_size: int) -> tuple[sp.csr_matrix, list[str]]:
    """Binary bag of words over the ``vocab_size`` most frequent words (document frequency, ties alphabetical)."""
    df = Counter(w for d in docs for w in d)
    vocab = sorted(df, key=lambda w: (-df[w], w))[:vocab_size]
    col = {w: j for j, w in enumerate(vocab)}
    rows, cols = [], []
    for i, d in enumerate(docs):
        js = sorted(col[w] for w in d if w in col)
        rows.extend([i] * len(js))
        cols.extend(js)
    mat = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(docs), len(vocab)))
    return mat, vocab


def _load_json(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"{path}: missing; fetch coco again (annotations_trainval2014.zip)")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc}); fetch coco again") from None


@register_dataset
class Coco(DatasetSpec):
    name = "coco"
    modalities = ("image", "text")
    protocols = ("hashnet", "crossmodal")
    default_protocol = "hashnet"
    map_cutoffs = {"hashnet": MAP_5000_NUS_COCO}  # crossmodal: mAP@all (the cross-modal papers' convention)
    multi_label = True
    Params = CocoParams
    citation = "Lin et al., Microsoft COCO, ECCV 2014; protocol: Cao et al., HashNet, ICCV 2017"

    def fetch(self, params: CocoParams, raw_dir: Path) -> None:
        raw_dir = Path(raw_dir)
        files = {}
        for rf in FILES:
            rf = rf.with_mirror(params.mirror)
            files[rf.name], _ = fetch_archive(rf, raw_dir, self.name, root=ROOTS[rf.name], manual_hint="COCO 2014 downloads: https://cocodataset.org/#download")
        for part in PARTS:
            for kind in ("instances", "captions"):
                if not (raw_dir / "annotations" / f"{kind}_{part}.json").is_file():
                    raise DataError(f"{raw_dir / 'annotations_trainval2014.zip'}: has no annotations/{kind}_{part}.json; not the official archive")
        record_fetch(raw_dir, self.name, files, source=params.mirror or "http://images.cocodataset.org")

    def prepare(self, params: CocoParams, raw_dir: Path, out_dir: Path) -> None:
        raw_dir = Path(raw_dir)
        record = read_verified_record(raw_dir, self.name)
        for root in ROOTS.values():
            check_extracted(raw_dir, root, record)
        categories = None
        files, label_rows, docs = [], [], []
        n_dropped = 0
        for part in PARTS:
            inst = _load_json(raw_dir / "annotations" / f"instances_{part}.json")
            cats = sorted((c["id"], c["name"]) for c in inst["categories"])
            if categories is None:
                categories = cats
            elif cats != categories:
                raise DataError(f"{raw_dir / 'annotations'}: the category lists of train2014 and val2014 differ")
            col = {cid: j for j, (cid, _) in enumerate(categories)}
            images = sorted((im["id"], im["file_name"]) for im in inst["images"])
            cats_of: dict[int, set[int]] = {}
            for a in inst["annotations"]:
                cats_of.setdefault(a["image_id"], set()).add(col[a["category_id"]])
            del inst
            caps = _load_json(raw_dir / "annotations" / f"captions_{part}.json")
            words_of: dict[int, set[str]] = {}
            for a in caps["annotations"]:
                words_of.setdefault(a["image_id"], set()).update(caption_words(a["caption"]))
            del caps
            for img_id, fname in images:
                if img_id not in cats_of:
                    n_dropped += 1
                    continue
                row = np.zeros(len(categories), dtype=np.uint8)
                row[sorted(cats_of[img_id])] = 1
                label_rows.append(row)
                files.append(raw_dir / part / fname)
                docs.append(words_of.get(img_id, set()))
        n = len(files)
        labels = np.stack(label_rows)
        text, vocab = build_bow(docs, params.vocab_size)
        log.info("coco: %d images with a category (%d dropped without), %d words", n, n_dropped, len(vocab))
        if n_dropped + n == 123287 and n != FULL_ITEMS:
            log.warning("coco: %d items, the papers report %d", n, FULL_ITEMS)
        missing = [str(p) for p in files if not p.is_file()]
        if missing:
            raise DataError(f"{raw_dir}: {len(missing)} annotated images are missing (first: {missing[0]}); fetch coco again")
        splits, notes = {}, {}
        for proto, who in (("hashnet", "HashNet"), ("crossmodal", "cross-modal (DCMH-style)")):
            s = getattr(params, proto)
            if s.query + s.train > n:
                raise DataError(f"coco protocol {proto!r}: query {s.query} + train {s.train} exceed the {n} items; lower datasets.coco.{proto}")
            splits[proto] = query_database_split(n, s.query, derive_seed(params.split_seed, proto), n_train=s.train)
            notes[proto] = f"{who}: {n} images with >= 1 category; {s.query} random queries, database = the other {n - s.query}, {s.train} training items from the database"
        with pixel_memmap(files, out_dir, params, desc="coco") as pixels:
            write_prepared(
                out_dir, dataset=self.name, labels=labels, label_names=[name for _, name in categories], multi_label=True,
                modalities={"image": ModalityData("pixels", pixels), "text": ModalityData("bow", text)},
                splits=splits, sources=record["files"],
                params={**params.model_dump(mode="json"), "text_vocabulary": vocab},
                protocol_notes=notes,
            )
