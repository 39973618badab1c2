"""NABirds: 48,562 photographs of North American birds in 555 visual categories (fine-grained, image).

Source: G. Van Horn, S. Branson, R. Farrell, S. Haber, J. Barry, P. Ipeirotis, P. Perona, S. Belongie,
"Building a Bird Recognition App and Large Scale Dataset with Citizen Scientists", CVPR 2015;
https://dl.allaboutbirds.org/nabirds . License-gated (a terms-of-use form at the Cornell Lab of
Ornithology): place ``nabirds.tar.gz`` in ``data/raw/nabirds/`` by hand (or set ``mirror`` to a
private copy's folder, fetched like any download). No checksum is published;
the sha256 is recorded in the lock at the first fetch (trust on first use).

Archive layout (``nabirds/`` inside): ``images/<class id, 4 digits>/<file>.jpg``; ``images.txt``
(``<image id> <path under images/>``); ``image_class_labels.txt`` (``<image id> <class id>``);
``train_test_split.txt`` (``<image id> <1 = train, 0 = test>``); ``classes.txt`` (``<class id> <name>``,
1,011 nodes of the taxonomy, of which the 555 leaf "visual categories" label the images); plus
``hierarchy.txt``, ``bounding_boxes.txt``, ``parts/`` and others (unused: whole images are used).

Labels: the 555 class ids that label images, in increasing id order (one-hot). Item order: images.txt.

Protocol ``crh`` (default; the only one): the official split; queries = the 24,633 test images, training
set = database = the 23,929 training images. This is the fine-grained hashing protocol of ExchNet
(Cui et al., ECCV 2020), A^2-Net (Wei et al., NeurIPS 2020) and later fine-grained hashing work (called
the CRH protocol in our issue). ``split_seed`` is unused (the split is fixed by the source).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pipeline.data.archives import check_extracted
from pipeline.data.download import RemoteFile, fetch_archive, manual_placement_error, read_verified_record, record_fetch
from pipeline.data.formats import ModalityData, write_prepared
from pipeline.data.images import ImageDatasetParams, pixel_memmap
from pipeline.data.registry import DatasetSpec, register_dataset
from pipeline.data.splits import Split
from pipeline.core.errors import DataError

log = logging.getLogger(__name__)

PAGE = "https://dl.allaboutbirds.org/nabirds"
ARCHIVE = RemoteFile(
    "nabirds.tar.gz", None,
    description="NABirds v1 (license-gated): nabirds/{images/, images.txt, image_class_labels.txt, train_test_split.txt, classes.txt}",
)
REQUIRED = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")


class NabirdsParams(ImageDatasetParams):
    pass


def _pairs(path: Path) -> list[tuple[str, str]]:
    if not path.is_file():
        raise DataError(f"{path}: missing; the archive does not have the NABirds layout")
    out = []
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.strip().split(maxsplit=1)
        if len(parts) != 2:
            raise DataError(f"{path}:{n}: expected '<id> <value>', got {line!r}")
        out.append((parts[0], parts[1].strip()))
    return out


@register_dataset
class Nabirds(DatasetSpec):
    name = "nabirds"
    modalities = ("image",)
    protocols = ("crh",)
    default_protocol = "crh"
    multi_label = False
    Params = NabirdsParams
    citation = "Van Horn et al., Building a Bird Recognition App and Large Scale Dataset with Citizen Scientists, CVPR 2015"

    def fetch(self, params: NabirdsParams, raw_dir: Path) -> None:
        raw_dir = Path(raw_dir)
        rf = ARCHIVE.with_mirror(params.mirror)  # a private mirror of the licensed archive, if any
        if not (raw_dir / rf.name).is_file() and not rf.url:
            found = sorted(p.name for p in raw_dir.iterdir()) if raw_dir.is_dir() else []
            raise manual_placement_error(
                self.name, raw_dir, [rf], found=found,
                hint=f"NABirds is license-gated: accept the terms at {PAGE} (Cornell Lab of Ornithology), download nabirds.tar.gz and copy it there unchanged.",
            )
        sha, root = fetch_archive(rf, raw_dir, self.name, root="nabirds")
        for f in REQUIRED:
            if not (root / f).is_file():
                raise DataError(f"{raw_dir / ARCHIVE.name}: has no nabirds/{f}; not the official NABirds archive")
        if not (root / "images").is_dir():
            raise DataError(f"{raw_dir / ARCHIVE.name}: has no nabirds/images/ folder; not the official NABirds archive")
        record_fetch(raw_dir, self.name, {ARCHIVE.name: sha}, source=f"manual placement ({PAGE})")

    def prepare(self, params: NabirdsParams, raw_dir: Path, out_dir: Path) -> None:
        raw_dir = Path(raw_dir)
        record = read_verified_record(raw_dir, self.name)
        root = check_extracted(raw_dir, "nabirds", record)
        images = _pairs(root / "images.txt")
        label_of = dict(_pairs(root / "image_class_labels.txt"))
        split_of = dict(_pairs(root / "train_test_split.txt"))
        class_names = dict(_pairs(root / "classes.txt"))
        missing = [i for i, _ in images if i not in label_of or i not in split_of]
        if missing:
            raise DataError(f"{root}: image {missing[0]} (and {len(missing) - 1} more) has no class label or no train/test flag")
        used = sorted({int(label_of[i]) for i, _ in images})
        unknown = [c for c in used if str(c) not in class_names and f"{c:04d}" not in class_names]
        if unknown:
            raise DataError(f"{root / 'classes.txt'}: class ids {unknown[:5]} label images but are not listed")
        col = {c: j for j, c in enumerate(used)}
        names = [class_names.get(str(c), class_names.get(f"{c:04d}", str(c))) for c in used]
        ids = np.asarray([col[int(label_of[i])] for i, _ in images], dtype=np.int64)
        is_train = np.asarray([split_of[i] == "1" for i, _ in images])
        if not set(split_of[i] for i, _ in images) <= {"0", "1"}:
            raise DataError(f"{root / 'train_test_split.txt'}: flags must be 0 or 1")
        files = [root / "images" / rel for _, rel in images]
        absent = [str(p) for p in files if not p.is_file()]
        if absent:
            raise DataError(f"{root / 'images'}: {len(absent)} images of images.txt are missing (first: {absent[0]}); fetch nabirds again")
        labels = np.eye(len(used), dtype=np.uint8)[ids]
        train = np.flatnonzero(is_train).astype(np.int64)
        split = Split(query=np.flatnonzero(~is_train).astype(np.int64), train=train, database=train.copy())
        log.info("nabirds: %d images, %d classes, %d train, %d test", len(images), len(used), len(train), len(split.query))
        with pixel_memmap(files, out_dir, params, desc="nabirds") as pixels:
            write_prepared(
                out_dir, dataset=self.name, labels=labels, label_names=names, multi_label=False,
                modalities={"image": ModalityData("pixels", pixels)}, splits={"crh": split}, sources=record["files"],
                params=params.model_dump(mode="json"),
                protocol_notes={"crh": f"official split: {len(split.query)} test images are queries; {len(train)} training images are train and database; {len(used)} classes"},
            )
