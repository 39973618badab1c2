"""Wikipedia image-text benchmark (embedded in the repository; no download).

Source: N. Rasiwasia, J. Costa Pereira, E. Coviello, G. Doyle, G. Lanckriet, R. Levy, N. Vasconcelos,
"A New Approach to Cross-Modal Multimedia Retrieval", ACM Multimedia 2010. The files in
``data/embedded/wikipedia`` are copied unchanged from the public repository
2012013382/JFSSL-Cross-Modal-Retrieval (folder wikipedia_info/, commit 6779ff11); their sha256 are in
SHA256SUMS there, and SOURCES.md gives the provenance.

Content: 2,866 image-text pairs in 10 categories; image = 128-d bag of SIFT visual words, text =
10-d LDA topic distribution (both kept as dense features).

Protocol ``standard`` (the one of cross-modal hashing papers such as CMFH, SCM, SePH): the 693
test pairs are the queries; the 2,173 training pairs are both the training set and the retrieval
database. Relevance: same category. The split is fixed by the source; ``split_seed`` is unused.
Prepared item order: the 2,173 training pairs, then the 693 test pairs, each in file order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io

from pipeline.data.fetching import copy_verified, read_fetch_record, read_sha256sums, write_fetch_record
from pipeline.data.formats import ModalityData, write_prepared
from pipeline.data.registry import DatasetParams, DatasetSpec, register_dataset
from pipeline.data.splits import Split
from pipeline.core.errors import DataError

EMBEDDED = Path(__file__).resolve().parents[2] / "data" / "embedded" / "wikipedia"


@register_dataset
class Wikipedia(DatasetSpec):
    name = "wikipedia"
    modalities = ("image", "text")
    protocols = ("standard",)
    default_protocol = "standard"
    multi_label = False
    Params = DatasetParams
    citation = "Rasiwasia et al., A New Approach to Cross-Modal Multimedia Retrieval, ACM MM 2010"

    def fetch(self, params: DatasetParams, raw_dir: Path) -> None:
        sums = read_sha256sums(EMBEDDED / "SHA256SUMS")
        files = copy_verified(EMBEDDED, raw_dir, sums)
        write_fetch_record(raw_dir, self.name, files, source=f"embedded copy: {EMBEDDED}")

    def prepare(self, params: DatasetParams, raw_dir: Path, out_dir: Path) -> None:
        record = read_fetch_record(raw_dir, self.name)
        mat = scipy.io.loadmat(raw_dir / "raw_features.mat")
        names = (raw_dir / "categories.list").read_text().split()
        classes = []
        for listing, n_expected in (("trainset_txt_img_cat.list", 2173), ("testset_txt_img_cat.list", 693)):
            rows = [line.split("\t") for line in (raw_dir / listing).read_text().splitlines() if line.strip()]
            if len(rows) != n_expected:
                raise DataError(f"{raw_dir / listing}: expected {n_expected} lines, found {len(rows)}")
            classes.append(np.array([int(r[2]) - 1 for r in rows]))
        cls = np.concatenate(classes)
        if cls.min() < 0 or cls.max() >= len(names):
            raise DataError(f"{raw_dir}: category numbers outside 1..{len(names)}")
        image = np.concatenate([mat["I_tr"], mat["I_te"]]).astype(np.float32)
        text = np.concatenate([mat["T_tr"], mat["T_te"]]).astype(np.float32)
        if image.shape[0] != cls.shape[0] or text.shape[0] != cls.shape[0]:
            raise DataError(f"{raw_dir / 'raw_features.mat'}: feature rows do not match the listings")
        labels = np.eye(len(names), dtype=np.uint8)[cls]
        n_tr = len(classes[0])
        train = np.arange(n_tr, dtype=np.int64)
        split = Split(query=np.arange(n_tr, len(cls), dtype=np.int64), train=train, database=train.copy())
        write_prepared(
            out_dir,
            dataset=self.name,
            labels=labels,
            label_names=names,
            multi_label=False,
            modalities={"image": ModalityData("features", image), "text": ModalityData("features", text)},
            splits={"standard": split},
            sources=record["files"],
            params=params.model_dump(mode="json"),
            protocol_notes={"standard": "693 test pairs are queries; 2,173 training pairs are train and database"},
        )
