"""Paper 000's representation layer (Sec. 4.1), the rest of its loss layer (Sec. 4.3) and its per-epoch
diagnostics (Sec. 5), as pure mechanisms; :class:`pipeline.train.plugins.LossPlugins` wires them into the loop.

Paper 000 (Wang, Liang, Lu, "optimisation path of retrieval performance based on the inter-modal hash-code
loss"; shared/papers/000) gives no equations; every rule here is an explicit reading of its prose:

* Sec. 4.1, gradient statistics: "record the gradient-norm distribution of the image feature tensors and text
  hidden states, and mark the channels / token positions where the gradients of high-loss samples concentrate
  as unstable". :class:`FeatureGradStats`: per batch the items at or above the batch's per-item-loss quantile;
  per feature, the norm over those items of the inter-modal term's gradient on the backbone feature; summed
  over the epoch. Unstable: norm > mean + z sd over the features. Deviation: on features datasets the
  "backbone output" is the input feature vector (a frozen backbone's features), not a hidden state.
* Sec. 4.1, calibration: "a light calibration module after the backbone encoder: channel re-weighting and a
  local-region gate for images, a sub-word re-weighting unit for text, whose parameters receive only the
  inter-modal loss's gradient". :class:`Calibration`: ``x * w`` (``w`` init 1), for images times a per-item gate
  ``2 sigmoid(u . x / sqrt(d) + c)`` (``u = 0, c = 0``: gate 1), so it starts as the identity. Deviation: the
  backbone features reach the hook flattened, so the image gate is per item, not per region, and the text
  re-weighting is per feature (bag-of-words word / LDA topic), not per sub-word.
* Sec. 4.1, hard-pair queue: "a hard-example queue from the loss ranking, the pairs whose hash distance
  deviates from their semantic relation gathered into mini-batches, sent through a branch with stronger
  perturbation: random crop and colour jitter for images, synonym substitution or phrase reordering for
  text". :func:`replay_queue`: the ``size`` items of highest EMA per-item loss; :func:`augment`. Deviation:
  bag-of-words has no word order or synonyms: word dropout instead; feature vectors get dropout + noise.
* Sec. 4.1, modality scaling: "periodically count each modality's share of the loss and scale gradients per
  modality, raising the weaker modality's weight in the shared subspace while keeping the overall speed".
  :func:`modality_scales`: ``c_m = M L_m / sum_j L_j`` (mean 1: the overall step size is kept), clipped; the
  weaker modality is read as the one with the larger loss share (as OGM-GE, Peng et al. CVPR 2022, reads the
  stronger one as the better-fitting). Note: a constant factor on a whole pass's gradient does not change an
  Adam step (scale-invariant up to its epsilon): the scaling acts under SGD only.
* Sec. 4.3, validation-driven temperature: "lower the temperature step by step according to the retrieval
  metric on the validation set". :class:`PlateauRule`: T times ``factor`` whenever the monitored metric has
  not improved for ``patience`` epochs. The bench's standard trials have no validation split, so there the
  rule watches the epoch's training loss (``monitor: loss``); tuning mode has one (``i2t/map@all`` per epoch).
* Sec. 4.3, head-only phase: "at stage-switch nodes, fix a short stretch of iterations that update only the
  layers directly attached to the hash output". Stage switches: listed epochs, plateau-temperature steps and
  the start of grad_balance's late boost (pipeline/train/plugins.py).
* Sec. 5, diagnostics: "bit flip frequency, gradient variance, the number of steps the hard set takes to
  converge". :func:`bit_flip_fraction`, :class:`GradVariance` (trace of the covariance of a term's hash-layer
  gradient over the epoch's mini-batches), :class:`HardSet` (items whose EMA loss exceeds the mean EMA by more
  than ``hard_z`` standard deviations; the epochs each item spends in it before it leaves). Deviation: the
  paper counts steps to convergence; we count epochs, and a ratio-of-mean threshold was tried first and
  dropped: DCMH's per-item likelihood (a sum over all n items) never reached 2x the mean, the set stayed empty.
"""

from __future__ import annotations

import math

import numpy as np
import torch



def update_ema(ema: np.ndarray, seen: np.ndarray, values: np.ndarray, decay: float) -> np.ndarray:
    """``decay * ema + (1 - decay) * value`` for items seen before, the value itself at an item's first visit."""
    return np.where(seen, decay * ema + (1 - decay) * values, values)


class Calibration(torch.nn.Module):
    """``x * weight`` and, with ``gate``, times ``2 sigmoid(u . x / sqrt(d) + c)`` per item; the identity at init."""

    def __init__(self, dim: int, gate: bool) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(dim))
        self.gate_u = torch.nn.Parameter(torch.zeros(dim)) if gate else None
        self.gate_c = torch.nn.Parameter(torch.zeros(())) if gate else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x * self.weight
        if self.gate_u is not None:
            g = 2.0 * torch.sigmoid(x @ self.gate_u / math.sqrt(x.shape[1]) + self.gate_c)
            out = out * g.unsqueeze(1)
        return out


class ItemLoss:
    """EMA (``decay``) of each training item's per-item loss, per phase (first visit: the value itself)."""

    def __init__(self, n_items: int, decay: float) -> None:
        self.n, self.decay = int(n_items), float(decay)
        self.ema: dict[str, np.ndarray] = {}
        self.seen: dict[str, np.ndarray] = {}

    def update(self, phase: str, idx: np.ndarray, values: np.ndarray) -> None:
        ema = self.ema.setdefault(phase, np.zeros(self.n))
        seen = self.seen.setdefault(phase, np.zeros(self.n, dtype=bool))
        ema[idx] = update_ema(ema[idx], seen[idx], values, self.decay)
        seen[idx] = True

    def total(self) -> tuple[np.ndarray, np.ndarray]:
        """(sum over phases of the EMAs, items seen in every phase)."""
        if not self.ema:
            return np.zeros(self.n), np.zeros(self.n, dtype=bool)
        tot = sum(self.ema.values())
        seen = np.logical_and.reduce(list(self.seen.values()))
        return tot, seen


def replay_queue(ema: np.ndarray, seen: np.ndarray, size: int) -> np.ndarray:
    """Indices of the ``size`` seen items of highest EMA loss, hardest first (ties: lower index first)."""
    cand = np.flatnonzero(seen)
    order = np.argsort(-ema[cand], kind="stable")
    return cand[order[:size]]


def augment(x: torch.Tensor, kind: str, cfg, gen: torch.Generator) -> torch.Tensor:
    """The replay branch's stronger perturbation of one modality's batch (see :class:`~pipeline.config.model.ReplayConfig`)."""
    if kind == "bow":
        keep = torch.rand(x.shape, generator=gen, device="cpu").to(x.device) >= cfg.word_dropout
        return x * keep
    if kind == "pixels":
        n, c, h, w = x.shape
        out = x
        if cfg.crop > 0:
            pad = torch.nn.functional.pad(x, (cfg.crop,) * 4, mode="reflect")
            offs = torch.randint(0, 2 * cfg.crop + 1, (n, 2), generator=gen)
            out = torch.stack([pad[i, :, int(a) : int(a) + h, int(b) : int(b) + w] for i, (a, b) in enumerate(offs)])
        if cfg.jitter > 0:
            bright = 1 + (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * cfg.jitter
            contrast = 1 + (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * cfg.jitter
            mean = out.mean(dim=(1, 2, 3), keepdim=True)
            out = ((out - mean) * contrast.to(x) + mean) * bright.to(x)
            out = out.clamp(0.0, 1.0)
        return out
    flat = x.reshape(x.shape[0], -1)
    keep = (torch.rand(flat.shape, generator=gen) >= cfg.dropout).to(flat) / (1 - cfg.dropout)
    std = flat.std(dim=0, keepdim=True).clamp_min(1e-8) if flat.shape[0] > 1 else torch.zeros_like(flat[:1])  # one item: no spread, no noise
    noise = torch.randn(flat.shape, generator=gen).to(flat) * cfg.noise * std
    return (flat * keep + noise).reshape(x.shape)


def modality_scales(losses: dict[str, float], min_scale: float, max_scale: float) -> dict[str, float]:
    """``c_m = M L_m / sum_j L_j``, clipped to ``[min_scale, max_scale]`` (all 1 while the losses sum to <= 0)."""
    total = sum(max(v, 0.0) for v in losses.values())
    if total <= 0:
        return {k: 1.0 for k in losses}
    m = len(losses)
    return {k: min(max(m * max(v, 0.0) / total, min_scale), max_scale) for k, v in losses.items()}


class PlateauRule:
    """Lower-on-plateau: :meth:`step` takes the epoch's metric and returns True when ``patience`` epochs in a row
    have not improved on the best by more than ``min_delta`` (relative); the count then restarts."""

    def __init__(self, mode: str, patience: int, min_delta: float = 0.0) -> None:
        self.sign = 1.0 if mode == "max" else -1.0
        self.patience, self.min_delta = int(patience), float(min_delta)
        self.best: float | None = None
        self.bad = 0

    def step(self, value: float) -> bool:
        v = self.sign * float(value)
        if self.best is None or v > self.best + self.min_delta * abs(self.best):
            self.best, self.bad = v, 0
            return False
        self.bad += 1
        if self.bad >= self.patience:
            self.bad = 0
            return True
        return False


def bit_flip_fraction(prev: np.ndarray, now: np.ndarray) -> float:
    """Share of the bits (items x bits) whose sign (``>= 0`` -> +1) differs between two code matrices."""
    return float(((prev >= 0) != (now >= 0)).mean())


class GradVariance:
    """Per key, the trace of the covariance of a gradient vector over the steps it was added in:
    ``mean_b ||g_b||^2 - ||mean_b g_b||^2`` (0 for fewer than two steps)."""

    def __init__(self) -> None:
        self.sum: dict[str, torch.Tensor] = {}
        self.sq: dict[str, float] = {}
        self.n: dict[str, int] = {}

    def add(self, key: str, g: torch.Tensor) -> None:
        g = g.detach().double().flatten()
        self.sum[key] = self.sum[key] + g if key in self.sum else g.clone()
        self.sq[key] = self.sq.get(key, 0.0) + float((g * g).sum())
        self.n[key] = self.n.get(key, 0) + 1

    def pop(self) -> dict[str, float]:
        out = {}
        for k, s in self.sum.items():
            n = self.n[k]
            out[k] = max(self.sq[k] / n - float((s / n).pow(2).sum()), 0.0) if n > 1 else 0.0
        self.sum, self.sq, self.n = {}, {}, {}
        return out


class HardSet:
    """Items whose loss exceeds the mean loss of the items considered by more than ``z`` standard deviations;
    :meth:`update` returns (set size, epochs spent in the set by each item that left it this epoch)."""

    def __init__(self, n_items: int, z: float) -> None:
        self.z = float(z)
        self.entered = np.full(int(n_items), -1)  # epoch an item entered the set, -1 when outside

    def update(self, epoch: int, loss: np.ndarray, seen: np.ndarray) -> tuple[int, np.ndarray]:
        if not seen.any():
            return 0, np.zeros(0)
        hard = seen & (loss > loss[seen].mean() + self.z * loss[seen].std())
        inside = self.entered >= 0
        left = inside & ~hard
        stays = epoch - self.entered[left]
        self.entered[left] = -1
        self.entered[hard & ~inside] = epoch
        return int(hard.sum()), stays.astype(float)


class FeatureGradStats:
    """Per modality, the per-feature norm of the inter-modal gradient over an epoch's high-loss items."""

    def __init__(self, quantile: float, z: float) -> None:
        self.quantile, self.z = float(quantile), float(z)
        self.sq: dict[str, torch.Tensor] = {}

    @staticmethod
    def high_loss(per_item: torch.Tensor, quantile: float) -> torch.Tensor:
        """Mask of the items whose per-item loss is at or above the batch's ``quantile``."""
        v = per_item.detach().float()
        return v >= torch.quantile(v, quantile)

    def add(self, modality: str, grad: torch.Tensor, mask: torch.Tensor) -> None:
        g = grad.detach().double().reshape(grad.shape[0], -1)[mask]
        sq = (g * g).sum(dim=0)
        self.sq[modality] = self.sq[modality] + sq if modality in self.sq else sq

    def pop(self) -> dict[str, float]:
        out = {}
        for m, sq in self.sq.items():
            norms = sq.sqrt()
            total = float(norms.sum())
            k = max(1, int(math.ceil(0.1 * norms.numel())))
            out[f"{m}/top10_share"] = float(norms.topk(k).values.sum()) / total if total > 0 else 0.0
            out[f"{m}/unstable"] = float((norms > norms.mean() + self.z * norms.std(unbiased=False)).sum())
        self.sq = {}
        return out
