"""CRH: Center-Reassigned Hashing ("Codebook-Centric Deep Hashing", AAAI 2026, arXiv 2511.12162), image hashing.

Paper source: /work/shared/papers/002 (an article summarising the paper; it gives the structure but
not the loss formulas or most constants). Sections below refer to that article.

* Sec. 2.1 codebook: ``M >= C`` candidate centres in {-1,+1}^K "sampled uniformly so that pairwise
  Hamming distances are large". Here: best of ``codebook_tries`` seeded Bernoulli(0.5) draws, scored by the
  smallest per-head minimum pairwise distance (:func:`methods.losses.codebook.sample_codebook`); the
  achieved distances are stored in ``codebook_stats``. ``M = codebook_factor * C`` (default 2C).
  Initial assignment: a random set of C distinct centres (per head) for the C classes.
* Sec. 2.2 loss: margin cross-entropy of the code to its class's assigned centre against the other
  classes' centres, plus a quantization loss, weighted sum. The article gives no formula; we use the
  cosine-margin CE ``CE(s * (cos(h, c_j) - m [j = y]))`` over the C assigned centres (the OrthoHash form)
  on ``h = tanh(z)``, and ``lambda_q * mean (|h| - 1)^2``. ``scale``, ``margin`` and ``lambda_q`` defaults
  are ours (s=8, m=0.2 as OrthoHash; lambda_q=0.1), not confirmed from the paper.
* Sec. 2.3 reassignment every ``reassign_every`` epochs (default 5, the article's example): cost
  ``D[c, m]`` = mean Hamming distance of class c's current binary codes to centre m (label-weighted
  ``y_ic / sum y_i`` for multi-label data), minimised by a greedy pass over a seeded random class order
  (default; the article reports greedy better than Hungarian) or the Hungarian algorithm.
* Codes for the cost matrix are computed with BatchNorm in training mode (batch statistics, running
  statistics restored afterwards; ``codes_mode: train``): early in training the running statistics lag
  and eval-mode codes collapse to a handful of distinct codes (seen on the synthetic multi-label set:
  2 distinct codes over 600 items after 2 epochs), which makes every class pick the same centres.
* Sec. 2.4 multi-head: the K bits are split into H heads of ``head_bits`` bits (K/H each); every head is
  reassigned on its own from the same codebook's columns of that head, and a class's centre is the
  concatenation of its per-head sub-centres. Head size (the article's Sec. 4 "head dimension"): the
  best head dimension d is the smallest power of 2 whose 2^d sub-codes can hold the codebook without
  collisions, i.e. 2^d >= M (the inequality's symbols are lost in the article copy; this is the reading
  consistent with "as small as possible while avoiding codebook collisions"). ``head_bits: auto`` (default)
  computes it (:func:`methods.losses.codebook.auto_head_bits`): 8 bits for digits/CIFAR-10 (M = 20),
  8 for MS-COCO (M = 160), 16 for NABirds (M = 1,110). Where d does not divide K or d >= K the code is
  one head. At the collision edge (2^d = M, e.g. the 8-label synthetic set: M = 16, d = 4) every sub-code
  of a head is a centre and neighbouring centres differ in one bit; there 4 epochs reached mAP 0.452
  (random 0.443) against 0.522 with ``head_bits: 8`` (tests/test_crh.py, 16 bits).
* Paper setup (``paper_setup``, suites with ``network: paper``): ResNet-34 with ImageNet weights (Sec. 2.2:
  "a deep network such as ResNet-34"; ``backbone: resnet34``, ``weights: resnet34_imagenet1k_v1``, the hash
  layer on the 512-d pooled features, ``hidden: []``), 224 px input, torchvision's ImageNet normalisation.
  The article states no optimiser, learning rate, schedule, epochs or batch size, so none is set (the
  global ``train`` block applies): not verified, a deviation to be read with every full-profile CRH number.
* Ablations (Table 2): CRH-M = ``multi_head: false`` (one head, centres reassigned); CRH-U =
  ``reassign: false, multi_head: false`` (one head, the initial random centres kept). The article (line 38
  of the copy) measures CRH-U's loss "relative to CRH-M, which keeps the reassignment" (1.76%-3.08% mAP),
  i.e. CRH-U is CRH-M without reassignment; a multi-head code without reassignment is only a differently
  sampled set of fixed random centres. Until 2026-12 HashBench's ``crh-u`` kept the multi-head split.

Logged from ``on_epoch_end`` at every reassignment: ``reassigned_classes`` (classes whose centre changed),
``assignment_cost`` (mean cost of the new assignment) and ``pcc``: Pearson correlation between the
pairwise centre similarities ``1 - 2 d_H / K`` and a reference class similarity over class pairs. The
reference (the paper uses CLIP features, unavailable here) is the cosine similarity of the class means of
the raw inputs for single-label data and the cosine similarity of label columns (co-occurrence) for
multi-label data.
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F_
from pydantic import Field

from methods.base import DataInfo, TrainData
from methods.image_base import EncoderParams, ImageHashMethod
from methods.losses.codebook import (
    assign_greedy,
    assign_hungarian,
    assignment_cost_matrix,
    auto_head_bits,
    cosine_margin_ce,
    head_slices,
    pearson,
    sample_codebook,
)
from methods.registry import register_method, register_variant
from pipeline.core.errors import MethodError

log = logging.getLogger(__name__)


class CRHParams(EncoderParams):
    """CRH hyperparameters."""

    scale: float = Field(8.0, gt=0, description="s of the margin CE logits s*(cos - m) (ours; OrthoHash's value)")
    margin: float = Field(0.2, ge=0, description="cosine margin m at the assigned centre (ours; OrthoHash's value)")
    lambda_q: float = Field(0.1, ge=0, description="weight of the quantization loss mean (|h|-1)^2 (ours)")
    codebook_factor: float = Field(2.0, ge=1, description="codebook size M = ceil(factor * C) (2C by default)")
    codebook_tries: int = Field(100, ge=1, description="best of this many Bernoulli codebook draws (largest min distance)")
    reassign: bool = Field(True, description="reassign centres during training; false = CRH-U")
    reassign_every: int = Field(5, ge=1, description="epochs between reassignments (article: every 5 epochs)")
    assignment: Literal["greedy", "hungarian"] = Field("greedy", description="greedy (random class order) or Hungarian")
    multi_head: bool = Field(True, description="split the code into heads reassigned separately; false = CRH-M")
    codes_mode: Literal["train", "eval"] = Field(
        "train",
        description="codes for the cost matrix: 'train' = BatchNorm batch statistics as in training (running stats restored), 'eval' = running stats",
    )
    head_bits: int | Literal["auto"] = Field(
        "auto", description="bits per head (K/H), must divide the code length; auto: smallest power of 2 d with 2^d >= M (article Sec. 4)"
    )
    seed: int | None = Field(None, description="seed of codebook, initial assignment and greedy orders; None = from the trial-seeded torch RNG")


@register_method
class CRH(ImageHashMethod):
    """Center-Reassigned Hashing: codebook centres, margin CE to the assigned centre, periodic reassignment."""

    name = "crh"
    Params = CRHParams
    supports_temperature = True  # h = tanh(z / T) feeds the margin loss and the codes
    supports_distributed = True  # per-item mean losses: sharded global batches + gradient all-reduce
    #: the article's network (module docstring); it states no recipe
    paper_setup = {"params": {"backbone": "resnet34", "weights": "resnet34_imagenet1k_v1", "hidden": [], "input_size": 224}}
    paper = "Codebook-Centric Deep Hashing (Center-Reassigned Hashing, CRH). AAAI 2026, arXiv 2511.12162."

    def __init__(self, params: CRHParams, info: DataInfo, bits: int) -> None:
        super().__init__(params, info, bits)
        p = params
        n_cls = int(info.n_classes)
        size = max(int(np.ceil(p.codebook_factor * n_cls)), n_cls)
        if not p.multi_head:
            heads = 1
        elif p.head_bits == "auto":
            d = auto_head_bits(size)
            heads = bits // d if d < bits and bits % d == 0 else 1
        else:
            if p.head_bits < 1 or bits % p.head_bits:
                raise MethodError(f"crh: head_bits={p.head_bits} does not divide {bits} bits (set multi_head: false, head_bits: auto or another head_bits)")
            heads = bits // p.head_bits
        self.slices = head_slices(self.bits, heads)
        self.gen = self.generator()
        self.rng = np.random.default_rng(self.target_seed)
        codebook, stats = sample_codebook(size, self.bits, self.gen, heads=heads, tries=p.codebook_tries)
        self.codebook_stats = stats
        assign = torch.stack([torch.randperm(size, generator=self.gen)[:n_cls] for _ in self.slices])  # (H, C)
        self.register_buffer("codebook", codebook)
        self.register_buffer("assign", assign)
        self.register_buffer("centers", self._centers_from(assign))
        self.n_reassign = 0
        self.class_reference: torch.Tensor | None = None
        log.info("crh: codebook %d x %d bits, %d head(s), min distance %s", size, self.bits, heads, stats)

    def _centers_from(self, assign: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.codebook[assign[h]][:, s] for h, s in enumerate(self.slices)], dim=1)

    def training_step(self, batch: dict[str, torch.Tensor], phase: str) -> dict[str, torch.Tensor]:
        z = self.net(batch["image"])
        h = self.squash(z)
        ce = cosine_margin_ce(h, self.centers, batch["labels"], self.params.scale, self.params.margin, multi="softmax")
        quant = self.params.lambda_q * ((h.abs() - 1) ** 2).mean()
        return {"loss": ce + quant, "margin_ce": ce, "quantization": quant}

    def on_train_start(self, data: TrainData) -> None:
        self.check_label_columns(data.labels, self.centers.shape[0], "class centres")
        y = data.labels.float()
        if self.info.multi_label:
            ref = F_.normalize(y.t(), dim=1)
        elif data.batches is not None:
            sums = None
            for b in data.batches():
                x = b["image"].flatten(1).float()
                s = b["labels"].float().t() @ x
                sums = s if sums is None else sums + s
            ref = F_.normalize(sums / y.sum(0).clamp_min(1).unsqueeze(1), dim=1)
        else:
            ref = None
        self.class_reference = None if ref is None else (ref @ ref.t()).cpu()

    def pcc(self) -> float:
        """Pearson correlation of centre similarities and the reference class similarities over class pairs."""
        if self.class_reference is None:
            return 0.0
        c = self.centers.cpu()
        sim = (c @ c.t()) / c.shape[1]
        iu = torch.triu_indices(c.shape[0], c.shape[0], offset=1)
        return pearson(sim[iu[0], iu[1]].numpy(), self.class_reference[iu[0], iu[1]].numpy())

    def reassign_centers(self, codes: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """One reassignment from binary ``codes`` (n, K) and ``labels`` (n, C); returns the logged values."""
        new = self.assign.clone()
        total = 0.0
        for h, s in enumerate(self.slices):
            cost = assignment_cost_matrix(codes[:, s], labels, self.codebook[:, s])
            if self.params.assignment == "hungarian":
                a = assign_hungarian(cost)
            else:
                a = assign_greedy(cost, order=self.rng.permutation(cost.shape[0]))
            new[h] = torch.as_tensor(a, device=new.device)
            total += float(cost[torch.arange(cost.shape[0]), new[h].cpu()].mean())
        changed = int((new != self.assign).any(dim=0).sum())
        self.assign.copy_(new)
        self.centers.copy_(self._centers_from(new))
        self.n_reassign += 1
        return {"reassigned_classes": float(changed), "assignment_cost": total / len(self.slices), "pcc": self.pcc()}

    def on_epoch_end(self, epoch: int, data: TrainData) -> dict[str, float]:
        if not self.params.reassign or (epoch + 1) % self.params.reassign_every or data.batches is None:
            return {}
        codes, labels = self.current_codes(data)
        return self.reassign_centers(codes, labels)

    @torch.no_grad()
    def current_codes(self, data: TrainData) -> tuple[torch.Tensor, torch.Tensor]:
        """Binary codes of the whole training set as training sees them (see ``codes_mode``) and their labels."""
        was = self.training
        saved = {k: v.clone() for k, v in self.net.named_buffers()}
        self.train(self.params.codes_mode == "train")
        codes, labels = [], []
        for b in data.batches():
            codes.append(torch.sign(self.net(b["image"])))
            labels.append(b["labels"])
        self.train(was)
        for k, v in self.net.named_buffers():  # train-mode passes must not move BatchNorm running statistics
            v.copy_(saved[k])
        codes_t = torch.cat(codes)
        return torch.where(codes_t == 0, torch.ones_like(codes_t), codes_t), torch.cat(labels)


# variants (listed by `hashbench list`; a suite names them like methods)
register_variant('crh-u', 'crh', 'CRH-U ablation (CRH article, Table 2): CRH-M without reassignment (one head, fixed random centres)', reassign=False, multi_head=False)
register_variant('crh-m', 'crh', 'CRH-M ablation (CRH article, Table 2): one head instead of the multi-head codebook', multi_head=False)
