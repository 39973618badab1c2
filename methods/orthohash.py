"""OrthoHash (Hoe et al., "One Loss for All: Deep Hashing with a Single Cosine Similarity based Learning
Objective", NeurIPS 2021), image hashing.

Recalled from the paper (no copy in /work/shared/papers; values to be checked against it):

* Sec. 3.1-3.2: every class gets a fixed binary "weight" (class code) ``c_j`` in {-1,+1}^K, mutually
  (near-)orthogonal: Hadamard rows when possible, else Bernoulli(0.5) (same construction as CSQ,
  :func:`methods.losses.centers.make_hash_centers`). The loss is a single cosine-similarity softmax
  cross-entropy with an additive margin: ``CE(s * (cos(v, c_j) - m [j = y]))``; maximising
  ``cos(v, c_y)`` both classifies and pulls the sign of ``v`` to ``c_y`` (low quantization error).
* Sec. 3.3: batch normalisation on the code layer (``v = BN(W x)``) balances the bits; codes are ``sign(v)``.
* Multi-label: the margin is subtracted at every positive label (``logits = s (cos - m y)``) and the
  loss is the authors' default, ``multi_label_loss: softmax``: softmax cross-entropy against the
  multi-hot target normalised to sum 1, ``-sum_j (y_j / sum y) log softmax(logits)_j``, averaged over
  the batch. Source: the official code, github.com/kamwoh/orthohash, ``functions/loss/orthohash.py``
  (``OrthoHashLoss``, ``multiclass_loss='label_smoothing'``: ``labels / labels.sum(1)`` times
  ``log_softmax``) with ``main.py``'s ``--multiclass-loss`` default ``label_smoothing`` (choices
  ``bce``, ``imbalance``, ``label_smoothing``). The registered variant ``orthohash-bce`` is the code's
  ``bce`` option: sigmoid BCE on the same margin logits, averaged over items *and classes* (the code's
  ``binary_cross_entropy_with_logits(...).mean()``). Not implemented: the code's ``imbalance`` option
  (BCE with a mask that down-weights confidently correct negatives). Until 2026-12 HashBench defaulted
  to BCE, summed over classes, labelled as the paper's: that was wrong.
* Defaults s = 8, m = 0.2 (the paper's usual setting; it tunes m per dataset), and an optional
  quantization term ``lambda_q * mean(1 - cos(v, sign v))`` (the paper shows it is mostly unnecessary;
  default weight 0.0 here -- unsure of the paper's exact value).
* BatchNorm is ``affine=False`` (our choice, so it cannot rescale bits away from balance).

Paper setup (``paper_setup``, suites with ``network: paper``), from the authors' released code (github
kamwoh/orthohash: ``main.py`` at commit 0059387, ``configs.py``, ``models/alexnet.py``, read through the
project's search tool):

* AlexNet with ImageNet weights up to fc7 (4096, ReLU), then the hash layer ``Linear(4096, K)`` + BatchNorm
  (``backbone: alexnet``, ``weights: alexnet_imagenet1k_v1``, ``hidden: []``; ``models/alexnet.py``), 224 px
  (``crop: 224``), ImageNet mean/std (``norm: 2``). The paper's VGG-16 rows: ``backbone: vgg16, weights:
  vgg16_imagenet1k_v1`` in a suite's method_params.
* Adam, lr 1e-4, betas (0.9, 0.999), weight decay 5e-4 (``optim_kwargs``); one rate for backbone and head
  (``configs.optimizer`` gets ``model.parameters()``); ``StepLR(step_size=int(0.8 * epochs), gamma=0.1)``
  stepped per epoch (``lr_schedule: {name: step, step_fraction: 0.8, gamma: 0.1}``); 100 epochs; batch 256.

Deviations of the paper setup: no training augmentation (the authors' resize 256 + random crop 224 +
horizontal flip for NUS-WIDE/COCO, random resized crop for ImageNet-100, flip + light colour jitter on
CIFAR); the hash layer keeps a bias and an ``affine=False`` BatchNorm (theirs: no bias, affine BN, weights
N(0, 0.01)).
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from methods.base import DataInfo, TrainData
from methods.image_base import EncoderParams, ImageHashMethod
from methods.losses import make_hash_centers
from methods.losses.codebook import cosine_margin_ce, cosine_quantization
from methods.registry import register_method, register_variant

log = logging.getLogger(__name__)


class OrthoHashParams(EncoderParams):
    """OrthoHash hyperparameters."""

    scale: float = Field(8.0, gt=0, description="s of the logits s*(cos - m) (paper: 8)")
    margin: float = Field(0.2, ge=0, description="additive cosine margin m at the true class (paper default 0.2; tuned per dataset)")
    lambda_q: float = Field(0.0, ge=0, description="weight of the optional quantization term mean(1 - cos(v, sign v))")
    multi_label_loss: Literal["softmax", "bce"] = Field(
        "softmax", description="loss for multi-label data: softmax CE to the normalised multi-hot target (the official code's default, "
        "'label_smoothing') or sigmoid BCE averaged over classes (its 'bce' option; variant orthohash-bce)"
    )
    batch_norm: bool = Field(True, description="BatchNorm1d (affine=False) on the code layer (paper Sec. 3.3)")
    shuffle_codes: bool = Field(False, description="assign Hadamard rows to classes in a seeded random order")
    code_tries: int = Field(10, ge=1, description="Bernoulli path: best of this many draws (largest min pairwise distance)")
    seed: int | None = Field(None, description="seed of the class codes; None = from the trial-seeded torch RNG")


@register_method
class OrthoHash(ImageHashMethod):
    """OrthoHash: cosine-margin softmax CE to fixed orthogonal class codes, BN on the code layer."""

    name = "orthohash"
    Params = OrthoHashParams
    supports_distributed = True  # per-item mean losses: sharded global batches + gradient all-reduce
    #: the authors' code's network and recipe (module docstring, with sources and deviations)
    paper_setup = {
        "params": {"backbone": "alexnet", "weights": "alexnet_imagenet1k_v1", "hidden": [], "input_size": 224},
        "train": {
            "epochs": 100,
            "batch_size": 256,
            "optimizer": {"name": "adam", "lr": 1e-4, "weight_decay": 5e-4},
            "lr_schedule": {"name": "step", "step_fraction": 0.8, "gamma": 0.1},
        },
    }
    paper = "J. T. Hoe et al. One Loss for All: Deep Hashing with a Single Cosine Similarity based Learning Objective. NeurIPS 2021."

    def __init__(self, params: OrthoHashParams, info: DataInfo, bits: int) -> None:
        super().__init__(params, info, bits)
        p = params
        codes, kind = make_hash_centers(int(info.n_classes), self.bits, self.generator(), shuffle=p.shuffle_codes, tries=p.code_tries)
        self.code_kind = kind
        self.register_buffer("class_codes", codes)
        log.info("orthohash: %d %s class codes of %d bits", info.n_classes, kind, self.bits)
        self.bn = nn.BatchNorm1d(self.bits, affine=False) if p.batch_norm else nn.Identity()

    def code(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.net(x))

    def training_step(self, batch: dict[str, torch.Tensor], phase: str) -> dict[str, torch.Tensor]:
        v = self.code(batch["image"])
        multi = self.params.multi_label_loss if self.info.multi_label else "softmax"
        ce = cosine_margin_ce(v, self.class_codes, batch["labels"], self.params.scale, self.params.margin, multi=multi)
        out = {"margin_ce": ce}
        loss = ce
        if self.params.lambda_q > 0:
            q = self.params.lambda_q * cosine_quantization(v)
            out["quantization"] = q
            loss = loss + q
        out["loss"] = loss
        return out

    def on_train_start(self, data: TrainData) -> None:
        self.check_label_columns(data.labels, self.class_codes.shape[0], "class codes")


register_variant("orthohash-bce", "orthohash", "OrthoHash with the official code's 'bce' multi-label loss (sigmoid BCE, mean over items and classes)", multi_label_loss="bce")
