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

The rest of the loss layer and paper 000's representation layer (Sec. 4.1) and diagnostics (Sec. 5) are
mechanisms of pipeline/train/representation.py (its docstring gives the paper's wording and every deviation),
wired in here and switched on the same way: ``temperature: {schedule: plateau}`` (T lowered when the
monitored metric plateaus), ``head_only`` (the first steps of each stage-switch epoch update only the hash
layer), ``calibration`` (re-weighting / gate modules on the backbone features, stepped by their own optimizer
on the inter-modal term's gradient only), ``replay`` (the hardest items replayed after each pass with stronger
augmentation), ``modality_scale`` (each modality's pass's gradient scaled by its loss share),
``grad_stats`` and ``diagnostics`` (``diag/*`` metrics; they watch and do not change training). The loop calls
:meth:`LossPlugins.before_backward` and :meth:`LossPlugins.after_backward` around every single-worker step's
backward pass, :meth:`LossPlugins.replay_batches` after each phase's pass and :meth:`LossPlugins.observe` after
each epoch's metrics. The methods offer ``inter_modal_term`` and ``representation_inputs`` (methods/base.py).

Not built: checkpoints hold neither the plug-ins' state (EMAs, the calibration's optimizer, the plateau rule)
nor resume it, so a resumed trial with plug-ins is not bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import torch

from pipeline.config import PluginsConfig, TrialSpec
from pipeline.core.errors import MethodError, TrainingError
from pipeline.train import representation as rep
from pipeline.train.representation import update_ema

RESERVED = ("loss", "per_item")
COUNTS = ("replayed_items", "head_only_steps")  # diagnostics logged as per-epoch sums


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

    def __init__(self, cfg: PluginsConfig, method, spec: TrialSpec, n_items: int, n_epochs: int, train_data=None) -> None:
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
        self.train_data = train_data
        self._setup_representation(name)

    # -- representation layer, head-only phase, diagnostics (pipeline/train/representation.py) -------
    def _setup_representation(self, name: str) -> None:
        cfg, method = self.cfg, self.method
        inter = getattr(method, "inter_modal_term", None)
        needs_inter = [k for k in ("calibration", "grad_stats", "modality_scale") if getattr(cfg, k) is not None]
        if needs_inter and not inter:
            raise MethodError(f"train.plugins.{needs_inter[0]}: method {name!r} names no inter-modal loss term (inter_modal_term)")
        needs_items = [k for k in ("replay", "grad_stats") if getattr(cfg, k) is not None]
        if needs_items and not getattr(method, "per_item_term", None):
            raise MethodError(f"train.plugins.{needs_items[0]}: method {name!r} returns no per-item losses (per_item_term)")
        wants_inputs = cfg.calibration is not None or cfg.grad_stats is not None
        inputs = method.representation_inputs() if wants_inputs and hasattr(method, "representation_inputs") else {}
        if (cfg.calibration is not None or cfg.grad_stats is not None) and not inputs:
            which = "calibration" if cfg.calibration is not None else "grad_stats"
            raise MethodError(f"train.plugins.{which}: method {name!r} exposes no backbone features (representation_inputs)")
        self.replaying = False
        self.items = None  # per-item loss EMAs (replay queue, hard set)
        decay = cfg.replay.decay if cfg.replay is not None else (cfg.diagnostics.decay if cfg.diagnostics is not None else None)
        if decay is not None and getattr(method, "per_item_term", None):
            method.per_item_requested = True
            self.items = rep.ItemLoss(self.n_items, decay)
        self.hard_set = rep.HardSet(self.n_items, cfg.diagnostics.hard_z) if cfg.diagnostics is not None and self.items is not None else None
        self.gvar = rep.GradVariance() if cfg.diagnostics is not None else None
        self.prev_codes: dict[str, np.ndarray] | None = None
        self.fstats = rep.FeatureGradStats(cfg.grad_stats.quantile, cfg.grad_stats.z) if cfg.grad_stats is not None else None
        self._feat: dict[str, torch.Tensor] = {}
        self._cal_grads = None
        self.calib: dict[str, rep.Calibration] = {}
        if cfg.calibration is not None:
            dev = next(iter(method.parameters())).device
            for m in inputs:
                cal = rep.Calibration(_input_width(inputs[m]), cfg.calibration.gate and m == "image").to(dev)
                method.add_module(f"calibration_{m}", cal)  # part of the model (state_dict, encode), not of its optimizers
                self.calib[m] = cal
            self.cal_params = [p for c in self.calib.values() for p in c.parameters()]
            self.cal_opt = torch.optim.Adam(self.cal_params, lr=cfg.calibration.lr)
        self._hooks = [mod.register_forward_pre_hook(self._pre_hook(m)) for m, mod in inputs.items()] if (self.calib or self.fstats) else []
        self.mloss: dict[str, float] = {}
        self.switch_epochs: set[int] = set()
        if cfg.head_only is not None:
            self.switch_epochs |= set(cfg.head_only.epochs)
            gb = cfg.grad_balance
            if gb is not None and gb.late_terms:
                self.switch_epochs.add(int(math.ceil(gb.late_start * self.n_epochs)))
        self._steps: dict[str, int] = defaultdict(int)
        t = cfg.temperature
        self.plateau = None
        if t is not None and t.schedule == "plateau":
            mode = t.mode if t.mode != "auto" else ("min" if t.monitor == "loss" or t.monitor.startswith("loss/") else "max")
            self.plateau = rep.PlateauRule(mode, t.patience, t.min_delta)
            self.plateau_t = float(t.start)
        self.aug_gen = torch.Generator().manual_seed(int(getattr(self.spec, "seed", 0)) + 7919)

    def _pre_hook(self, modality: str):
        def hook(module, args):
            x = args[0]
            if self.fstats is not None and module.training and torch.is_grad_enabled():
                if not x.requires_grad:
                    x = x.detach().requires_grad_(True)
                self._feat[modality] = x
            if modality in self.calib:
                x = self.calib[modality](x)
            return (x, *args[1:])

        return hook

    @property
    def single_worker(self) -> bool:
        """True when a plug-in needs the one-worker path of the loop (per-term backward or extra steps)."""
        c = self.cfg
        return self.shapes_loss or any(x is not None for x in (c.calibration, c.replay, c.modality_scale, c.grad_stats, c.head_only, c.diagnostics))

    def head_only_now(self, phase: str) -> bool:
        return self.cfg.head_only is not None and self.epoch in self.switch_epochs and self._steps[phase] < self.cfg.head_only.steps

    def before_backward(self, losses: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], params: list, phase: str) -> None:
        """Per step, before the loop backpropagates: per-item EMAs, the calibration's own gradient (inter-modal
        term only), the high-loss feature gradients, per-term hash-layer gradients for the variance."""
        cfg = self.cfg
        inter = getattr(self.method, "inter_modal_term", None)
        per_item = losses.get("per_item")
        if self.items is not None and per_item is not None and not self.replaying:
            self.items.update(phase, batch["index"].detach().cpu().numpy(), per_item.detach().float().cpu().numpy())
        if cfg.modality_scale is not None and not self.replaying:
            if phase not in self.method.modalities:
                raise MethodError(f"train.plugins.modality_scale: method {self.spec.method!r} trains in phase {phase!r}, not one pass per modality")
            v, mom = float(losses[inter].detach()), cfg.modality_scale.momentum
            self.mloss[phase] = v if phase not in self.mloss else mom * self.mloss[phase] + (1 - mom) * v
        if self.calib:
            term = losses[inter]
            self._cal_grads = torch.autograd.grad(term, self.cal_params, retain_graph=True, allow_unused=True) if term.requires_grad else None
        if self.fstats is not None and self._feat and per_item is not None and not self.replaying:
            mask = rep.FeatureGradStats.high_loss(per_item, self.fstats.quantile)
            feats = list(self._feat.items())
            grads = torch.autograd.grad(losses[inter], [x for _, x in feats], retain_graph=True, allow_unused=True)
            for (m, _), g in zip(feats, grads):
                if g is not None:
                    self.fstats.add(m, g, mask)
        self._feat = {}
        if self.gvar is not None and not self.replaying:
            head = hash_layer_parameters(self.method, params)
            for k, v in self.terms(losses).items():
                if v.requires_grad:
                    g = torch.autograd.grad(v, head, retain_graph=True, allow_unused=True)
                    self.gvar.add(f"{k}@{phase}", torch.cat([(x if x is not None else torch.zeros_like(p)).flatten() for x, p in zip(g, head)]))

    def after_backward(self, params: list, phase: str) -> None:
        """Per step, after the backward pass, before the optimizer step: the head-only phase (every other
        parameter's gradient dropped), the modality scale, the calibration's own step."""
        head_only = self.head_only_now(phase)
        self._steps[phase] += 1
        if head_only:
            keep = {id(p) for p in hash_layer_parameters(self.method, params)}
            for p in params:
                if id(p) not in keep:
                    p.grad = None
            self._log("head_only_steps", 1.0)
        if self.cfg.modality_scale is not None and len(self.mloss) == len(self.method.modalities):
            c = rep.modality_scales(self.mloss, self.cfg.modality_scale.min_scale, self.cfg.modality_scale.max_scale)[phase]
            for p in params:
                if p.grad is not None:
                    p.grad.mul_(c)
            self._log(f"modality_scale/{phase}", c)
        if self.calib:
            grads, self._cal_grads = self._cal_grads, None
            if grads is not None and not head_only:
                for p, g in zip(self.cal_params, grads):
                    p.grad = None if g is None else g.detach()
                self.cal_opt.step()
            for p in self.cal_params:
                p.grad = None

    def replay_batches(self, phase: str, part, batch_size: int, device):
        """The replay branch after ``phase``'s pass: the hardest items' batches, augmented (a generator; the loop
        runs its usual step on each)."""
        rc = self.cfg.replay
        if rc is None or self.epoch < rc.start_epoch or self.items is None or phase not in self.items.ema:
            return
        queue = rep.replay_queue(self.items.ema[phase], self.items.seen[phase], rc.size)
        self.replaying = True
        try:
            for start in range(0, len(queue), batch_size):
                batch = part.batch(queue[start : start + batch_size], device=device)
                for m in self.method.modalities:
                    batch[m] = rep.augment(batch[m], self.method.info.modalities[m].kind, rc, self.aug_gen)
                self._log("replayed_items", float(len(batch["index"])))
                yield batch
        finally:
            self.replaying = False

    def observe(self, epoch: int, metrics: dict[str, float]) -> None:
        """After an epoch's metrics (validation ones included): the plateau temperature's rule."""
        if self.plateau is None:
            return
        t = self.cfg.temperature
        if t.monitor == "loss":
            value = sum(v for k, v in metrics.items() if k.startswith("loss/") and k.endswith("/loss") and not k.startswith("loss/replay/"))
        elif t.monitor in metrics:
            value = metrics[t.monitor]
        else:
            return  # e.g. a validation metric on an epoch without validation
        if self.plateau.step(value) and self.plateau_t > t.end:
            self.plateau_t = max(t.end, self.plateau_t * t.factor)
            self.switch_epochs.add(epoch + 1)

    @torch.no_grad()
    def _train_codes(self) -> dict[str, np.ndarray]:
        method, data = self.method, self.train_data
        was = method.training
        method.eval()
        out: dict[str, list] = defaultdict(list)
        idx = []
        for batch in data.batches():
            idx.append(batch["index"].cpu().numpy())
            for m in method.modalities:
                out[m].append(method.encode(batch, m).float().cpu().numpy())
        method.train(was)
        order = np.argsort(np.concatenate(idx))
        return {m: np.concatenate(v)[order] for m, v in out.items()}

    def _diagnostics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.train_data is not None and self.train_data.batches is not None and self.method.trains_by_gradient:
            codes = self._train_codes()
            if self.prev_codes is not None:
                flips = {m: rep.bit_flip_fraction(self.prev_codes[m], codes[m]) for m in codes}
                out.update({f"diag/bit_flip/{m}": v for m, v in flips.items()})
                out["diag/bit_flip"] = float(np.mean(list(flips.values())))
            self.prev_codes = codes
        per_term: dict[str, list[float]] = defaultdict(list)
        for key, v in self.gvar.pop().items():
            per_term[key.split("@")[0]].append(v)
        out.update({f"diag/grad_var/{k}": float(np.mean(v)) for k, v in per_term.items()})
        if self.hard_set is not None:
            loss, seen = self.items.total()
            size, stays = self.hard_set.update(self.epoch, loss, seen)
            out["diag/hard_set"] = float(size)
            out["diag/hard_exits"] = float(len(stays))
            if len(stays):
                out["diag/hard_exit_epochs"] = float(stays.mean())
        return out

    # -- per epoch ----------------------------------------------------------------------------------
    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch
        self._steps.clear()
        t = self.cfg.temperature
        if self.plateau is not None:
            self.method.set_hash_temperature(self.plateau_t)
        elif t is not None:
            self.method.set_hash_temperature(temperature_at(t.start, t.end, epoch, self.n_epochs, t.schedule))
        if self.cfg.diagnostics is not None and self.prev_codes is None and self.train_data is not None and self.train_data.batches is not None:
            self.prev_codes = self._train_codes()  # the codes before this epoch's updates

    def epoch_metrics(self) -> dict[str, float]:
        out = {f"plugin/{k}": self._diag[k] / self._count[k] for k in self._diag}
        for k in COUNTS:  # counts per epoch, not means per step
            if k in self._diag:
                out[f"plugin/{k}"] = self._diag[k]
        if self.cfg.diagnostics is not None:
            out.update(self._diagnostics())
        if self.fstats is not None:
            out.update({f"diag/feat_grad/{k}": v for k, v in self.fstats.pop().items()})
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
        if not getattr(self, "replaying", False):  # augmented replays do not move the EMAs
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


def _input_width(module: torch.nn.Module) -> int:
    """The input width of a representation-input module: its first Linear's ``in_features``."""
    for m in module.modules():
        if isinstance(m, torch.nn.Linear):
            return int(m.in_features)
    raise MethodError(f"representation input {type(module).__name__} has no Linear layer to read its input width from")


def make_plugins(cfg: PluginsConfig, method, spec: TrialSpec, n_items: int, n_epochs: int, train_data=None) -> LossPlugins | None:
    """The plug-ins of ``cfg`` for one fit, or None when none is on (the loop then runs as without them)."""
    return LossPlugins(cfg, method, spec, n_items, n_epochs, train_data) if cfg.active() else None
