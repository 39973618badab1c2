"""Training-time plug-ins of the shared loop: paper 000's loss layer (Sec. 4.3), for any method.

Paper 000 proposes an optimisation path around the inter-modal hash-code loss, not a network; its loss
layer schedules the training: a temperature continuation of the hash activation, a per-batch balancing of
the loss terms' gradient contributions, a focus on hard pairs through an exponential moving average of
each item's loss, and a separate clipping / scaling of a term's gradient. Each is a plug-in here, switched
on in ``train.plugins`` (params.yaml, :class:`pipeline.config.PluginsConfig`), combinable, applied by
:func:`pipeline.train.loop.fit` and never inside a method. A method opts in to the two plug-ins that need
its cooperation through the contract (methods/base.py): ``supports_temperature`` (its activation is
``tanh(z / T)``) and ``per_item_term`` (its ``training_step`` can return per-item parts of a term).

How the loss is put together with plug-ins on. ``training_step`` returns named terms that sum to
``loss`` (the plug-ins check it). Hard pairs first reweights the items of its term, then gradient
balancing weights every term, then the total is backpropagated: the terms listed in ``term_grad`` are
differentiated on their own (scaled, clipped) and their gradients added to those of the rest. The logged
losses stay the method's unweighted terms; the plug-ins log their own diagnostics per epoch
(``plugin/temperature``, ``plugin/weight/<term>``, ``plugin/hard_fraction``, ``plugin/clipped/<term>``).

Not built (paper 000 mentions them): a temperature driven by the validation metric (only the fixed
schedule), and the short head-only phase at each stage switch.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import torch

from pipeline.config import PluginsConfig, TrialSpec
from pipeline.core.errors import MethodError, TrainingError

RESERVED = ("loss", "per_item")


def temperature_at(start: float, end: float, epoch: int, epochs: int, schedule: str = "geometric") -> float:
    """The temperature of 0-based ``epoch`` of ``epochs``: ``start`` at the first, ``end`` at the last."""
    if epochs <= 1:
        return float(end)
    t = min(max(epoch, 0), epochs - 1) / (epochs - 1)
    if schedule == "linear":
        return float(start + (end - start) * t)
    return float(start * (end / start) ** t)


def balance_weights(norms: dict[str, float], late: dict[str, float] | None = None, max_weight: float = 10.0) -> dict[str, float]:
    """Inverse-norm equalisation: ``w_k = mean_j(n_j) / n_k`` (terms with a zero norm keep 1), clipped to
    ``[1/max_weight, max_weight]``, times ``late[k]``, renormalised to sum to the number of terms."""
    live = {k: v for k, v in norms.items() if v > 0}
    mean = sum(live.values()) / len(live) if live else 0.0
    w = {k: (mean / v if v > 0 else 1.0) for k, v in norms.items()}
    w = {k: min(max(v, 1.0 / max_weight), max_weight) for k, v in w.items()}
    for k, boost in (late or {}).items():  # after the clip, so a term already at max_weight is still boosted
        if k in w:
            w[k] *= boost
    total = sum(w.values())
    return {k: v * len(w) / total for k, v in w.items()} if total > 0 else w


def update_ema(ema: np.ndarray, seen: np.ndarray, values: np.ndarray, decay: float) -> np.ndarray:
    """``decay * ema + (1 - decay) * value`` for items seen before, the value itself at an item's first visit."""
    return np.where(seen, decay * ema + (1 - decay) * values, values)


def hard_pair_weights(ema: np.ndarray, seen: np.ndarray, idx: np.ndarray, quantile: float, low_weight: float) -> np.ndarray:
    """Weights of the batch items ``idx``: ``low_weight`` where the item's EMA loss is below the ``quantile`` of
    the EMAs of every item seen so far, else 1; renormalised to mean 1 over the batch."""
    if not seen.any():
        return np.ones(len(idx))
    threshold = np.quantile(ema[seen], quantile)
    w = np.where(ema[idx] < threshold, low_weight, 1.0)
    m = w.mean()
    return w / m if m > 0 else np.ones(len(idx))


def hash_layer_parameters(method: torch.nn.Module, params: list[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
    """The parameters (among ``params``) of the layers nearest the hash output: every Linear whose output
    width is the code length; all of ``params`` when there is none."""
    ids = {id(p) for p in params}
    bits = int(getattr(method, "bits", -1))
    out = [p for m in method.modules() if isinstance(m, torch.nn.Linear) and m.out_features == bits for p in m.parameters() if id(p) in ids]
    return out or list(params)


class LossPlugins:
    """The active plug-ins of one :func:`~pipeline.train.loop.fit` call."""

    def __init__(self, cfg: PluginsConfig, method, spec: TrialSpec, n_items: int, n_epochs: int) -> None:
        self.cfg, self.method, self.spec = cfg, method, spec
        self.n_epochs = int(n_epochs)
        self.epoch = 0
        name = spec.method
        if cfg.temperature is not None and not getattr(method, "supports_temperature", False):
            raise MethodError(f"train.plugins.temperature: method {name!r} has no tempered hash activation (supports_temperature)")
        if cfg.hard_pairs is not None:
            if not getattr(method, "per_item_term", None):
                raise MethodError(f"train.plugins.hard_pairs: method {name!r} returns no per-item losses (per_item_term)")
            method.per_item_requested = True
        self.n_items = int(n_items)
        #: per phase: EMA of each item's per-item loss and whether the item was seen yet
        self.ema: dict[str, np.ndarray] = {}
        self.seen: dict[str, np.ndarray] = {}
        self.norm_ema: dict[str, float] = {}
        #: True when a plug-in changes how the loss is backpropagated (else the loop calls loss.backward())
        self.shapes_loss = any(x is not None for x in (cfg.grad_balance, cfg.hard_pairs, cfg.term_grad))
        self._diag: dict[str, float] = defaultdict(float)
        self._count: dict[str, int] = defaultdict(int)

    # -- per epoch ----------------------------------------------------------------------------------
    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch
        t = self.cfg.temperature
        if t is not None:
            self.method.set_hash_temperature(temperature_at(t.start, t.end, epoch, self.n_epochs, t.schedule))

    def epoch_metrics(self) -> dict[str, float]:
        out = {f"plugin/{k}": self._diag[k] / self._count[k] for k in self._diag}
        if self.cfg.temperature is not None:
            out["plugin/temperature"] = float(self.method.hash_temperature)
        if self.cfg.hard_pairs is not None:
            for phase, seen in self.seen.items():
                if seen.any():
                    ema = self.ema[phase][seen]
                    out[f"plugin/{phase}/low_loss_items"] = float((ema < np.quantile(ema, self.cfg.hard_pairs.quantile)).sum())
        self._diag.clear()
        self._count.clear()
        return out

    def _log(self, key: str, value: float) -> None:
        self._diag[key] += float(value)
        self._count[key] += 1

    # -- per step -----------------------------------------------------------------------------------
    def terms(self, losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The named terms of ``losses``, checked to sum to ``loss``."""
        terms = {k: v for k, v in losses.items() if k not in RESERVED}
        if not terms:
            return {"loss": losses["loss"]}
        total = sum(terms.values())
        loss = losses["loss"]
        if abs(float(total.detach()) - float(loss.detach())) > 1e-4 * (1.0 + abs(float(loss.detach()))):
            raise TrainingError(
                f"{self.spec.key()}: train.plugins need the named loss terms to sum to 'loss' ({float(total.detach()):.6g} vs "
                f"{float(loss.detach()):.6g}; terms {sorted(terms)})"
            )
        return terms

    def backward(
        self, losses: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], params: list[torch.nn.Parameter], phase: str = "joint"
    ) -> None:
        """Backpropagate the plug-ins' combination of the terms into ``.grad`` of ``params`` (zeroed by the caller)."""
        terms = dict(self.terms(losses))
        cfg = self.cfg
        if cfg.hard_pairs is not None:
            terms = self._hard_pairs(terms, losses, batch, phase)
        if cfg.grad_balance is not None:
            weights = self._balance(terms, params)
            terms = {k: v * weights.get(k, 1.0) for k, v in terms.items()}
        grads = cfg.term_grad
        separate = {k: v for k, v in terms.items() if grads is not None and (k in grads.max_norm or k in grads.scale) and v.requires_grad}
        rest = [v for k, v in terms.items() if k not in separate and v.requires_grad]
        if rest:
            sum(rest).backward(retain_graph=bool(separate))
        for i, (k, v) in enumerate(separate.items()):
            g = torch.autograd.grad(v, params, retain_graph=i < len(separate) - 1, allow_unused=True)
            scale = float(grads.scale.get(k, 1.0))
            norm = math.sqrt(sum(float((x.detach() ** 2).sum()) for x in g if x is not None)) * scale
            limit = grads.max_norm.get(k)
            if limit is not None and norm > limit:
                scale *= limit / norm
                self._log(f"clipped/{k}", 1.0)
            else:
                self._log(f"clipped/{k}", 0.0)
            for p, x in zip(params, g):
                if x is None:
                    continue
                if p.grad is None:
                    p.grad = x.detach() * scale
                else:
                    p.grad.add_(x.detach(), alpha=scale)

    def _hard_pairs(self, terms, losses, batch, phase):
        hp = self.cfg.hard_pairs
        key = self.method.per_item_term
        per_item = losses.get("per_item")
        if per_item is None or key not in terms:
            raise MethodError(f"train.plugins.hard_pairs: method {self.spec.method!r} returned no 'per_item' for its term {key!r}")
        idx = batch["index"].detach().cpu().numpy()
        vals = per_item.detach().float().cpu().numpy()
        ema = self.ema.setdefault(phase, np.zeros(self.n_items))
        seen = self.seen.setdefault(phase, np.zeros(self.n_items, dtype=bool))
        ema[idx] = update_ema(ema[idx], seen[idx], vals, hp.decay)
        seen[idx] = True
        if self.epoch < hp.warmup_epochs:
            return terms
        w = hard_pair_weights(ema, seen, idx, hp.quantile, hp.low_weight)
        self._log("hard_weight_min", float(w.min()))
        wt = torch.as_tensor(w, dtype=per_item.dtype, device=per_item.device)
        out = dict(terms)
        out[key] = terms[key] + ((wt - 1.0) * per_item).sum()
        return out

    def _balance(self, terms, params) -> dict[str, float]:
        gb = self.cfg.grad_balance
        names = [k for k in terms if (not gb.terms or k in gb.terms) and terms[k].requires_grad]
        head = hash_layer_parameters(self.method, params)
        norms = {}
        for k in names:
            g = torch.autograd.grad(terms[k], head, retain_graph=True, allow_unused=True)
            n = math.sqrt(sum(float((x.detach() ** 2).sum()) for x in g if x is not None))
            prev = self.norm_ema.get(k)
            self.norm_ema[k] = n if prev is None else gb.momentum * prev + (1 - gb.momentum) * n
            norms[k] = self.norm_ema[k]
        late = None
        if gb.late_terms and self.epoch >= gb.late_start * self.n_epochs:
            late = {k: gb.late_boost for k in gb.late_terms}
        w = balance_weights(norms, late, gb.max_weight)
        for k, v in w.items():
            self._log(f"weight/{k}", v)
        return w


def make_plugins(cfg: PluginsConfig, method, spec: TrialSpec, n_items: int, n_epochs: int) -> LossPlugins | None:
    """The plug-ins of ``cfg`` for one fit, or None when none is on (the loop then runs as without them)."""
    return LossPlugins(cfg, method, spec, n_items, n_epochs) if cfg.active() else None
