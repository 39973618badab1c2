"""Evaluation of one trial's codes: every retrieval direction, every metric, and the binary index.

The numbers come from :mod:`pipeline.metrics` (exact, tie-aware) and :mod:`pipeline.index` (faiss);
this module only decides which codes are compared and flattens the results for logging.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from pipeline.codes import pack_codes
from pipeline.config import EvalConfig
from pipeline.index import IndexStats, measure_index
from pipeline.metrics import RetrievalMetrics, evaluate_retrieval

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
) -> EvaluationResult:
    """Take signs, pack, and evaluate each (query modality, database modality) direction.

    With ``cfg.random_baseline`` the mAP@all of uniformly random codes (fixed seed) on the same labels
    is computed too, so every table can show the chance level beside the methods."""
    packed = {part: {m: pack_codes(c) for m, c in mods.items()} for part, mods in codes.items()}
    results: dict[str, DirectionResult] = {}
    conventions: dict[str, str] = {}
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
        results[name] = DirectionResult(name, qm, dm, metrics, stats, random_map)
    return EvaluationResult(results, packed, conventions)
