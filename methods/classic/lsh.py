"""LSH: sign random projections (Charikar, STOC 2002; the "LSH" baseline of ITQ, Gong & Lazebnik, CVPR 2011).

``h(x) = sign((x - mean) W)`` with ``W`` (d x K) of i.i.d. N(0, 1) entries, so that for two items
``P[h_k(x) = h_k(y)] = 1 - theta(x, y) / pi`` (theta: the angle between the centred vectors; Charikar 2002,
Sec. 3). Data-independent apart from the centring: the ITQ paper's LSH baseline runs on zero-centred data.

Deviations: none (centring on the training mean is the protocol of the ITQ paper's comparisons).
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field

from methods.base import ClosedFormMethod, DataInfo, MethodParams
from methods.classic.common import VECTOR_KINDS, batch_vectors, resolve_seed
from methods.registry import register_method


class LSHParams(MethodParams):
    center: bool = Field(True, description="subtract the training mean before projecting")
    seed: int | None = Field(None, description="seed of W; None = drawn from the trial-seeded torch RNG")


@register_method
class LSH(ClosedFormMethod):
    """Sign random projections."""

    name = "lsh"
    modalities = ("image",)
    input_kinds = VECTOR_KINDS
    Params = LSHParams
    paper = "M. Charikar. Similarity Estimation Techniques from Rounding Algorithms. STOC 2002."

    def __init__(self, params: LSHParams, info: DataInfo, bits: int) -> None:
        super().__init__(params, info, bits)
        self.seed = resolve_seed(params.seed)
        d = info.modalities["image"].dim
        self.register_buffer("mean", torch.zeros(d))
        self.register_buffer("proj", torch.zeros(d, bits))

    def solve(self, features, labels):
        x = features["image"]
        rng = np.random.default_rng(self.seed)
        if self.params.center:
            self.set_buffer("mean", x.mean(0))
        self.set_buffer("proj", rng.standard_normal((x.shape[1], self.bits)))
        return {}

    def encode(self, batch, modality):
        x = batch_vectors(batch, modality)
        return (x - self.mean) @ self.proj
