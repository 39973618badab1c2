"""Evaluation of one trial's codes: every retrieval direction, every metric, and the binary index.

The numbers come from :mod:`pipeline.eval.metrics` (exact, tie-aware) and :mod:`pipeline.eval.index` (faiss);
this module only decides which codes are compared and flattens the results for logging.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import numpy as np

from pipeline.eval.codes import pack_codes
from pipeline.config import ClassGroupsConfig, EvalConfig
from pipeline.eval.index import IndexStats, measure_index
from pipeline.eval.metrics import RetrievalMetrics, class_groups, class_groups_by_threshold, evaluate_retrieval, map_by_group

log = logging.getLogger(__name__)

SHORT = {"image": "i", "text": "t"}


def direction_name(query_modality: str, db_modality: str) -> str:
    """``i2t`` for image queries against text database codes, and so on."""
    return f"{SHORT.get(query_modality, query_modality)}2{SHORT.get(db_modality, db_modality)}"


def retrieval_directions(modalities: tuple[str, ...]) -> list[tuple[str, str]]:
    """Cross-modal methods are evaluated image->text and text->image; single-modal ones within their modality."""
    if "image" in modalities and "text" in modalities:
        return [("image", "text"), ("text", "image")]
    return [(m, m) for m in modalities]


@dataclass
class DirectionResult:
    name: str
    query_modality: str
    db_modality: str
    metrics: RetrievalMetrics
    index: list[IndexStats] = field(default_factory=list)
    random_map: float | None = None
    group_map: dict[str, float] = field(default_factory=dict)
    group_queries: dict[str, int] = field(default_factory=dict)


@dataclass
class EvaluationResult:
    directions: dict[str, DirectionResult]
    packed: dict[str, dict[str, np.ndarray]]
    conventions: dict[str, str]

    def flat_metrics(self) -> dict[str, float]:
        """``{direction}/{metric}`` and ``{direction}/index/{kind}/{figure}`` as floats for logging."""
        out: dict[str, float] = {}
        for d in self.directions.values():
            for k, v in d.metrics.values.items():
                out[f"{d.name}/{k}"] = float(v)
            if d.random_map is not None:
                out[f"{d.name}/random/map@all"] = float(d.random_map)
            for g, v in d.group_map.items():
                out[f"{d.name}/map@all/{g}"] = float(v)
                out[f"{d.name}/n_queries/{g}"] = float(d.group_queries[g])
            for st in d.index:
                for k, v in asdict(st).items():
                    if isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None:
                        out[f"{d.name}/index/{st.kind}/{k}"] = float(v)
        return out


def evaluate_codes(
    codes: dict[str, dict[str, np.ndarray]],
    *,
    query_labels: np.ndarray,
    db_labels: np.ndarray,
    directions: list[tuple[str, str]],
    cfg: EvalConfig,
    train_labels: np.ndarray | None = None,
) -> EvaluationResult:
    """Take signs, pack, and evaluate each (query modality, database modality) direction.

    With ``cfg.random_baseline`` the mAP@all of uniformly random codes (fixed seed) on the same labels
    is computed too, so every table can show the chance level beside the methods. With
    ``cfg.class_groups.by`` set, the mAP@all of the head / medium / tail queries is added
    (``{direction}/map@all/{group}``); the groups come from the class counts of ``train_labels`` (the
    database labels when not given, exact for the long-tail protocols where database = train) and
    the rule, counts and groups are recorded in ``conventions["class_groups"]``."""
    packed = {part: {m: pack_codes(c) for m, c in mods.items()} for part, mods in codes.items()}
    results: dict[str, DirectionResult] = {}
    conventions: dict[str, str] = {}
    query_groups = None
    if cfg.class_groups.by != "none":
        counts_from = "train" if train_labels is not None else "database (no train labels passed)"
        query_groups, note = query_class_groups(query_labels, db_labels if train_labels is None else train_labels, cfg.class_groups)
        conventions["class_groups"] = f"{note}; counts from the {counts_from} labels"
        log.info("class groups: %s", conventions["class_groups"])
    for qm, dm in directions:
        name = direction_name(qm, dm)
        q, d = packed["query"][qm], packed["database"][dm]
        metrics = evaluate_retrieval(q, d, query_labels, db_labels, topk=tuple(cfg.topk), ties=cfg.ties, ap_norm=cfg.ap_norm, radius=cfg.radius)
        conventions.update(metrics.conventions)
        random_map = None
        if cfg.random_baseline:
            rng = np.random.default_rng(0)
            bits = q.shape[1] * 8
            rq = pack_codes(rng.standard_normal((q.shape[0], bits)))
            rd = pack_codes(rng.standard_normal((d.shape[0], bits)))
            random_map = evaluate_retrieval(rq, rd, query_labels, db_labels, topk=(), ties=cfg.ties, ap_norm=cfg.ap_norm, radius=cfg.radius).values["map@all"]
        stats = [measure_index(kind, d, q, k=min(cfg.index.k, len(d)), n_latency_queries=cfg.index.latency_queries) for kind in cfg.index.kinds]
        result = DirectionResult(name, qm, dm, metrics, stats, random_map)
        if query_groups is not None:
            result.group_map = map_by_group(metrics.per_query_ap, query_groups)
            result.group_queries = {g: int((query_groups == g).sum()) for g in result.group_map}
        results[name] = result
    return EvaluationResult(results, packed, conventions)


def query_class_groups(query_labels: np.ndarray, train_labels: np.ndarray, cfg: ClassGroupsConfig) -> tuple[np.ndarray, str]:
    """Group (head / medium / tail) of every query from the training class counts, and a note of the rule.

    A single-label query takes its class's group; a multi-label query takes the group of its rarest
    label (the class with the smallest training count); a query without labels is "none"."""
    counts = np.asarray(train_labels).astype(np.int64).sum(0)
    if cfg.by == "fraction":
        groups = class_groups(counts, cfg.head_frac, cfg.tail_frac)
        rule = f"by fraction: {cfg.head_frac:.3g} most frequent classes head, {cfg.tail_frac:.3g} rarest tail"
    else:
        groups = class_groups_by_threshold(counts, cfg.head_min, cfg.tail_max)
        rule = f"by threshold: train count > {cfg.head_min} head, < {cfg.tail_max} tail"
    q = np.asarray(query_labels) > 0
    masked = np.where(q, counts[None, :], np.iinfo(np.int64).max)
    rarest = masked.argmin(1)
    out = np.where(q.any(1), groups[rarest], "none").astype(str)
    per_class = ", ".join(f"{c}:{int(n)}={g}" for c, (n, g) in enumerate(zip(counts, groups)))
    return out, f"{rule}; class:train_count=group {per_class}"
