"""Sanity references per dataset and protocol: a leakage audit and a classifier's one-hot codes.

*Leakage audit.* Items shared between the query, database and training parts of a split, counted by index
(the same row of the prepared arrays) and by content (the sha256 of an item's row in each prepared
array: the raw bytes of a dense row, or the column indices and values of a bag-of-words CSR row; an
item's *content* over all modalities is the sha256 of its per-modality digests). Users of a popular
hashing repository found 888 of its 1,000 test images inside the retrieval database (issue 14); this
counts the same thing for every protocol the report shows. "database = training set" is a property of
several protocols by design (Wikipedia, digits, the long-tail ones) and is reported as such.

*Classifier one-hot codes* (Sablayrolles, Douze, Usunier, Jégou, "How should we evaluate supervised
hashing?", ICASSP 2017, arXiv 1609.06753: "a trivial solution that encodes the output of a classifier
significantly outperforms existing supervised or semi-supervised methods"). A multinomial logistic
regression (scikit-learn's ``LogisticRegression``, lbfgs, L2, C = 1) is trained on the training part of
each modality, on the same input rows the methods see (dense features standardised with the training
mean and sd, pixels scaled to [0, 1] and flattened, bag-of-words as counts); an item's code is the
one-hot vector of its predicted class, so two items are at Hamming distance 0 when the predicted
classes agree and 2 otherwise, and retrieval is "same predicted class first" (ties: the profile's tie
rule). Cross-modal directions use the query modality's classifier for the queries and the database
modality's for the database. Multi-label data: one binary logistic regression per label, the code is
the predicted label set (bit c = P(label c) > 0.5; an item with no predicted label gets its most
probable one), compared by Hamming distance. If this row beats the hashing methods, the protocol
rewards classification rather than hashing. Inputs larger than ``MAX_CELLS`` (items x dimensions of
the training part) are not fitted; the report says so.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Callable

import numpy as np

from pipeline.config import EvalConfig
from pipeline.core.errors import HashBenchError
from pipeline.data.formats import PreparedDataset
from pipeline.eval.codes import pack_codes
from pipeline.eval.evaluate import direction_name
from pipeline.eval.metrics import evaluate_retrieval

log = logging.getLogger(__name__)

MAX_CELLS = 60_000_000
REFERENCES_FILE = "_references.json"  # beside the suites' results in results/eval/<profile>/
PARTS = ("query", "database", "train")


# -- leakage ------------------------------------------------------------------------------------------------


def row_digests(array) -> np.ndarray:
    """sha256 (hex) of every row: raw bytes of a dense row (dtype and row shape included), or the indices and
    values of a CSR row."""
    out = []
    if hasattr(array, "indptr"):  # scipy CSR
        csr = array.tocsr()
        csr.sort_indices()
        for i in range(csr.shape[0]):
            a, b = csr.indptr[i], csr.indptr[i + 1]
            h = hashlib.sha256(np.asarray(csr.indices[a:b], dtype=np.int64).tobytes())
            h.update(np.asarray(csr.data[a:b], dtype=np.float64).tobytes())
            out.append(h.hexdigest())
        return np.asarray(out)
    arr = np.asarray(array)
    head = f"{arr.dtype.str}{arr.shape[1:]}".encode()
    for i in range(arr.shape[0]):
        out.append(hashlib.sha256(head + np.ascontiguousarray(arr[i]).tobytes()).hexdigest())
    return np.asarray(out)


def combine_digests(per_modality: dict[str, np.ndarray]) -> np.ndarray:
    """One digest per item over all its modalities (sorted by modality name)."""
    names = sorted(per_modality)
    n = len(per_modality[names[0]])
    return np.asarray([hashlib.sha256("|".join(per_modality[m][i] for m in names).encode()).hexdigest() for i in range(n)])


def _pair(a_idx: np.ndarray, b_idx: np.ndarray, digests: np.ndarray | None) -> dict:
    """Items of part a that are also in part b, by index and by content (a-items whose digest occurs in b)."""
    shared = int(np.intersect1d(a_idx, b_idx).size)
    out = {"by_index": shared}
    if digests is not None:
        inb = set(digests[b_idx].tolist())
        out["by_content"] = int(sum(d in inb for d in digests[a_idx].tolist()))
        outside = np.setdiff1d(a_idx, b_idx)  # content duplicates that are *other* items (not the same index)
        out["by_content_other_items"] = int(sum(d in inb for d in digests[outside].tolist()))
    return out


def leakage_audit(split, digests: dict[str, np.ndarray]) -> dict:
    """Counts of shared items between the parts of ``split`` (query, train, database index arrays), by index and
    by content, per modality and over all modalities together (``item``)."""
    q, t, d = (np.unique(np.asarray(getattr(split, p), dtype=np.int64)) for p in ("query", "train", "database"))
    views = dict(digests)
    if len(digests) > 1:
        views["item"] = combine_digests(digests)
    result = {"sizes": {"query": int(len(q)), "train": int(len(t)), "database": int(len(d))},
              "train_is_database": bool(np.array_equal(t, d)), "train_in_database": bool(np.isin(t, d).all()), "modalities": {}}
    for name, dig in views.items():
        result["modalities"][name] = {
            "query_database": _pair(q, d, dig),
            "query_train": _pair(q, t, dig),
            "database_train": _pair(d, t, dig),
            "query_duplicates": int(len(q) - len(set(dig[q].tolist()))),
        }
    return result


def audit_dataset(ds: PreparedDataset, protocol: str) -> dict:
    digests = {m: row_digests(ds.modality(m)) for m in ds.manifest["modalities"]}
    return {"dataset": ds.name, "protocol": protocol, "manifest": ds.manifest_sha256, **leakage_audit(ds.split(protocol), digests)}


# -- classifier one-hot codes -------------------------------------------------------------------------------


def _inputs(ds: PreparedDataset, modality: str, train: np.ndarray):
    """(rows -> model input) for one modality, with the statistics taken from the training part."""
    kind = ds.modality_spec(modality).kind
    arr = ds.modality(modality)
    if kind == "bow":
        return lambda idx: arr[np.asarray(idx)].astype(np.float64)
    flat = lambda idx: np.asarray(arr[np.sort(np.asarray(idx))], dtype=np.float64).reshape(len(idx), -1)[np.argsort(np.argsort(idx))]  # noqa: E731
    if kind == "pixels":
        return lambda idx: flat(idx) / 255.0
    x = flat(train)
    mean, sd = x.mean(0), x.std(0)
    sd[sd == 0] = 1.0
    return lambda idx: (flat(idx) - mean) / sd


def predicted_codes(x_train, y_train: np.ndarray, xs: list, multi_label: bool, seed: int = 0) -> list[np.ndarray]:
    """{-1,+1} codes of the predicted class (one-hot) or label set (multi-label) for each array in ``xs``; the
    code length is the number of classes rounded up to a multiple of 8 (padding bits are -1 for every item)."""
    from sklearn.linear_model import LogisticRegression

    y = np.asarray(y_train) > 0
    n_classes = y.shape[1]
    width = -(-n_classes // 8) * 8
    if not multi_label:
        clf = LogisticRegression(max_iter=500, random_state=seed).fit(x_train, y.argmax(1))
        outs = []
        for x in xs:
            prob = np.zeros((x.shape[0], n_classes))
            prob[:, clf.classes_] = clf.predict_proba(x)
            bits = np.zeros((x.shape[0], width), dtype=bool)
            bits[np.arange(x.shape[0]), prob.argmax(1)] = True
            outs.append(np.where(bits, 1, -1).astype(np.int8))
        return outs
    probs = [np.zeros((x.shape[0], n_classes)) for x in xs]
    for c in range(n_classes):
        if y[:, c].all() or not y[:, c].any():
            for p in probs:
                p[:, c] = float(y[:, c].all())
            continue
        clf = LogisticRegression(max_iter=500, random_state=seed).fit(x_train, y[:, c])
        for p, x in zip(probs, xs):
            p[:, c] = clf.predict_proba(x)[:, 1]
    outs = []
    for p in probs:
        bits = np.zeros((p.shape[0], width), dtype=bool)
        bits[:, :n_classes] = p > 0.5
        empty = ~bits[:, :n_classes].any(1)
        bits[np.flatnonzero(empty), p[empty].argmax(1)] = True
        outs.append(np.where(bits, 1, -1).astype(np.int8))
    return outs


def classifier_reference(ds: PreparedDataset, protocol: str, directions: list[tuple[str, str]], cfg: EvalConfig) -> dict:
    """{direction: {metric: value}} of the classifier's one-hot codes under ``cfg``, or {"skipped": reason} per direction."""
    split = ds.split(protocol)
    labels = np.asarray(ds.labels)
    multi = bool(ds.manifest["multi_label"])
    codes: dict[str, tuple[np.ndarray, np.ndarray] | str] = {}
    for m in sorted({m for pair in directions for m in pair}):
        dims = int(np.prod(ds.modality_spec(m).shape))
        if dims * len(split.train) > MAX_CELLS:
            codes[m] = f"not fitted: {len(split.train)} x {dims} training inputs exceed the report stage's limit"
            continue
        feed = _inputs(ds, m, split.train)
        q, d = predicted_codes(feed(split.train), labels[split.train], [feed(split.query), feed(split.database)], multi)
        codes[m] = (pack_codes(q), pack_codes(d))
    out = {}
    for qm, dm in directions:
        name = direction_name(qm, dm)
        if isinstance(codes[qm], str) or isinstance(codes[dm], str):
            out[name] = {"skipped": codes[qm] if isinstance(codes[qm], str) else codes[dm]}
            continue
        r = evaluate_retrieval(codes[qm][0], codes[dm][1], labels[split.query], labels[split.database], topk=tuple(cfg.topk), ties=cfg.ties, ap_norm=cfg.ap_norm, radius=cfg.radius)
        out[name] = {k: float(v) for k, v in r.values.items()}
    return out


def dataset_sanity(ds: PreparedDataset, protocol: str, directions: list[tuple[str, str]], cfg: EvalConfig, cache_dir: Path | None = None) -> dict:
    """Leakage audit and classifier reference of one (dataset, protocol), cached by manifest hash and evaluation settings."""
    key = hashlib.sha256(json.dumps([ds.manifest_sha256, protocol, sorted(directions), cfg.model_dump(mode="json")], sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir / f"{ds.name}-{protocol}-{key}.json" if cache_dir else None
    if path is not None and path.is_file():
        return json.loads(path.read_text())
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # lbfgs on small inputs: BLAS threads only contend (measured 20 s vs 0.5 s on Wikipedia)
        result = {"leakage": audit_dataset(ds, protocol), "classifier": classifier_reference(ds, protocol, directions, cfg)}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.part")
        tmp.write_text(json.dumps(result, indent=1, sort_keys=True))
        tmp.replace(path)
    return result


def dataset_directions(ds: PreparedDataset) -> list[tuple[str, str]]:
    """Every direction a method can be evaluated in on ``ds``: within each modality, and image <-> text."""
    mods = sorted(ds.manifest["modalities"])
    pairs = [(m, m) for m in mods]
    if "image" in mods and "text" in mods:
        pairs += [("image", "text"), ("text", "image")]
    return pairs


def profile_sanity(targets: dict[tuple[str, str], EvalConfig], prepared: Callable[[str], Path], cache_dir: Path | None) -> dict[str, dict]:
    """{"dataset/protocol": sanity result} for every (dataset, protocol) -> evaluation settings of a profile; a
    dataset that cannot be read gets ``{"error": ...}`` instead of failing the stage."""
    out: dict[str, dict] = {}
    for (dataset, protocol), cfg in sorted(targets.items()):
        try:
            ds = PreparedDataset(prepared(dataset))
            out[f"{dataset}/{protocol}"] = dataset_sanity(ds, protocol, dataset_directions(ds), cfg, cache_dir)
        except (HashBenchError, OSError, ValueError) as exc:
            log.warning("sanity references of %s/%s: %s", dataset, protocol, exc)
            out[f"{dataset}/{protocol}"] = {"error": str(exc)}
    return out
