"""ADIH: adaptive deep incremental cross-modal hashing (Zhou, Xu, Zheng, Xie; paper 003 in /work/shared/papers).

K. Zhou, L. Xu, B. Zheng, Y. Xie, 自适应高效深度跨模态增量哈希检索算法 (adaptive deep incremental hashing,
ADIH), /work/shared/papers/003_e765a13684e50bd6.txt. Most of the paper's equations are missing from that
copy; what follows is reconstructed from its text (Sec. 2.2-2.7), the DCMH formulation it cites for the
bit-balance term and the discrete bit-wise (DCC) solvers of DLFH/SDH that it describes, and it is marked
as such.

**Objective of the original step (eq. (3), reconstructed; eq. (26) for ``a`` modalities).** One network
per modality (``f_a``, outputs ``F_a``), one code matrix per modality ``H_a in {-1,+1}^(n x k)``, labels
giving ``S in {-1,+1}^(n x n)`` (+1 iff two items share a label, paper Sec. 2.1):

    min  sum_{a<b} ||k S - H_a W_ab H_b^T||^2 + alpha sum_a ||H_a - F_a||^2 + beta sum_a ||F_a^T 1||^2

The text says codes are mapped to a latent space ``V`` (``V_a = H_a W_a``) whose inner products carry
the similarity, ``W = W_1^T W_2`` (eqs. (1)-(2)); the first term keeps the latent similarity at ``k S``,
the second projects the network outputs onto the codes, the third is DCMH's bit balance.

**Alternating optimisation (Algorithm 1)**, one epoch = (1)-(2) one pass per modality updating its network
with everything else fixed (phases named after the modalities: loss ``alpha ||H_a - F_a||^2 + beta
||F_a^T 1||^2`` on the batch's rows; the other terms do not depend on the network), then in
:meth:`ADIH.on_epoch_end` (3) ``W`` in closed form (eq. (7)) and (4)-(5) each modality's codes bit by bit
under the discrete constraint (eqs. (8)-(13); :func:`methods.losses.adih.bitwise_update`), the other
modalities' codes fixed. Also once in :meth:`on_train_start` after initialising every ``H_a`` to one shared random draw
(seeded by the trial seed), so the first network pass already regresses onto label-informed codes
(Algorithm 1's loop entered at step (3)). Not ``sign(sum_b F_b)`` as DCMH: the untrained networks'
outputs share a common offset, those codes are nearly identical, and the fitted latent scale ``w``
comes out negative (codes of the two modalities anti-aligned; measured on Wikipedia: random-level mAP).

**Incremental step (Algorithm 2, eq. (14), reconstructed).** The codes of the original items and ``W``
stay fixed; only the new items' codes ``H'_a`` and the networks are learnt, on the new items only:

    min  sum_{a != b} ||k S' - H'_a W_ab [H_b[anchors]; H'_b]^T||^2 + lam sum_a ||H'_a - F'_a||^2 + mu sum_a ||F'_a^T 1||^2

with ``S'`` the similarity of the new items to "query samples drawn from the original and the new data"
(Algorithm 2, step 2): here the anchors are up to ``anchors`` original items (seeded sample, their fixed
codes) plus all new items (their current codes of the other modality). This is exactly eq. (3) on
(original + new) with the original codes and ``W`` held fixed, restricted to the sampled original
items; the new-vs-new block is the paper's "S_ij, the similarity among new data". The paper's
``P = -2 K H_Q S^T - 2 lam F'`` (eq. (19), ``K = k I``) is our ``-2 P`` below; the bit-wise solver is the
same function. The networks then regress onto ``H'``.

Algorithm 2 trains the networks on the new data only (``replay=False``, default, the literal reading).
The original database keeps its codes, but the old classes' *queries* are encoded by the updated
networks, which forget them: measured on Wikipedia (1 new class, 32 bits, 20 epochs each step, seed 0)
the old-query mAP falls from 0.31/0.72 (i2t/t2i, after the original step) to 0.13/0.35, all queries
0.20/0.41 against full retraining's 0.28/0.70. ``replay=True`` also passes the anchors (sampled
original items) through the networks with their fixed codes as targets (the "query samples drawn from
the original data" of Algorithm 2, step 2, taking part in the network updates): with 300 anchors, old
queries 0.23/0.68, new 0.52/0.82, all 0.26/0.69, the increment's training time about a ninth of full
retraining's (1.0 s vs 9.1 s on a loaded 2-core CPU).

**Reconstructions and deviations (each a documented choice):**

* ``w_mode="scalar"`` (default): ``W_ab = w I`` with ``w`` the closed-form least-squares scale. The paper's
  eq. (7) is a general bilinear ``W`` (``w_mode="full"``, implemented and tested). But the paper ranks by
  *Hamming distance* between the modalities' codes (Sec. 2.4), which measures ``H_a H_b^T``, not
  ``H_a W H_b^T``: with a general ``W`` the codes of the two modalities are only related through ``W``
  (the objective is invariant under ``H_a -> H_a R``, ``W -> R^T W`` for any signed permutation ``R``) and
  Hamming ranking breaks: on a 600-item, 10-class, 16-bit toy of the solver (/tmp/adih/sim.py in the
  development notes), cross-modal Hamming mAP of the learnt codes was 0.40 with ``full`` (0.71 when
  ranked by ``H_a W H_b^T``) and 1.00 with ``scalar``. The paper's own incremental objective (eq. (14))
  compares codes by plain inner products (``K H_Q``), i.e. ``W`` proportional to ``I``, which is what
  ``scalar`` keeps: a shared latent space (``W_1 = W_2`` up to a rotation) with one fitted scale.
* ``beta`` (and ``mu``) weigh ``||F^T 1||^2 / n``, i.e. ``beta = n * beta_paper``: the balance gradient on
  one row is ``2 beta`` times the training set's mean output, of the order of the projection gradient
  whatever ``n``. With the paper's unnormalised sum at weight 1 (DCMH's ``eta = 1``) the balance gradient
  is ``n`` times larger and swamps the projection term: measured on Wikipedia, 32 bits, 10 epochs,
  i2t/t2i mAP 0.12/0.11 (random level 0.11) against 0.28/0.55 with the normalised term; at the
  unnormalised weights 0.1 / 0.01 still 0.20/0.18 and 0.26/0.34. The full-set mean is estimated by the
  batch mean (``balance_f1="batch"``, default) or by the stored outputs of the other items plus the live
  batch (``"stored"``, DCMH's scheme; 0.28/0.53 in the same run).
* The loss of a network pass is divided by the batch size (``normalize``, one constant factor).
* ``alpha``, ``beta``, ``lam``, ``mu`` have no values in the paper copy; defaults are 1 (DCMH's
  ``gamma = eta = 1`` for the same projection/balance terms, which the paper cites; ``beta`` normalised
  as above).
* ``relax=True`` is ADIH+R: the code sub-problems are solved without the discrete constraint (closed form
  ``H = P (Q + alpha I)^-1``); ``beta=0, mu=0`` is ADIH-B; ``incremental=False`` is ADIH-I: the
  incremental runner (pipeline/protocols/incremental.py) then retrains from scratch on all data instead of the
  incremental step. In an ordinary trial all three flags but ``relax``/``beta`` change nothing.
* Network: an MLP per modality on features/bag-of-words (``hidden``), the small CNN or a torchvision
  model on pixels (the paper's CNN is not specified in this copy).
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
from pydantic import Field

from methods.base import DataInfo, HashMethod, MethodParams, TrainData
from methods.losses.adih import (
    bitwise_update,
    closed_form_w,
    code_objective,
    code_terms,
    relaxed_update,
    sign_pm1,
    similarity_times,
)
from methods.nets import build_encoder
from methods.registry import register_method, register_variant
from pipeline.core.errors import MethodError

log = logging.getLogger(__name__)


class ADIHParams(MethodParams):
    """ADIH hyperparameters (the paper copy gives no values; sources and choices in the module docstring)."""

    alpha: float = Field(1.0, ge=0, description="weight of the projection terms ||H_a - F_a||^2 (eq. (3); DCMH's gamma = 1)")
    beta: float = Field(1.0, ge=0, description="weight of the bit-balance terms ||F_a^T 1||^2 (eq. (3); DCMH's eta = 1); 0 = ADIH-B")
    lam: float = Field(1.0, ge=0, description="incremental step: weight of ||H'_a - F'_a||^2 (eq. (14) lambda)")
    mu: float = Field(1.0, ge=0, description="incremental step: weight of ||F'_a^T 1||^2 (eq. (14) mu); 0 with beta=0 = ADIH-B")
    w_mode: Literal["scalar", "full"] = Field("scalar", description="W = w I with a fitted scale (default, Hamming-consistent) or the paper's general bilinear W (eq. (7))")
    w_ridge: float = Field(0.0, ge=0, description="ridge added to H^T H in the full W (0: pseudo-inverses)")
    relax: bool = Field(False, description="ADIH+R: continuous relaxation of the code sub-problems instead of the discrete bit-wise solver")
    incremental: bool = Field(True, description="False = ADIH-I: the incremental protocol retrains from scratch on all data")
    code_sweeps: int = Field(1, ge=1, description="passes over the k bits per code update (eqs. (9)-(13))")
    anchors: int = Field(2000, ge=1, description="incremental step: original items sampled as query anchors (Algorithm 2 step 2)")
    anchor_seed: int = Field(0, description="seed of the anchor sample")
    replay: bool = Field(
        False,
        description="incremental step: the networks also regress the anchors' fixed codes (the sampled original items "
        "of Algorithm 2 step 2 revisited); False = networks trained on the new items only",
    )
    modalities: tuple[str, ...] = Field(("image", "text"), min_length=2, description="modalities (any number >= 2, eq. (26))")
    backbone: str = Field("auto", description="'auto' (MLP on features/bow, small CNN on pixels), 'mlp', 'small_cnn' or a torchvision model")
    hidden: tuple[int, ...] = Field((1024,), description="hidden widths of each modality's MLP head")
    dropout: float = Field(0.0, ge=0, lt=1)
    normalize: bool = Field(True, description="divide each network pass's batch loss by the batch size")
    balance_f1: Literal["stored", "batch"] = Field(
        "batch", description="full-set F^T 1 of the balance term: stored outputs of the other items + the live batch, or n/B times the batch sum"
    )


@register_method
class ADIH(HashMethod):
    """ADIH: per-modality codes coupled in a latent space, discrete bit-wise code updates, incremental step."""

    name = "adih"
    modalities = ("image", "text")
    input_kinds = frozenset({"features", "pixels", "bow"})
    Params = ADIHParams
    supports_distributed = True  # F rows gathered after each pass; the discrete code update on rank 0, broadcast
    paper = "K. Zhou, L. Xu, B. Zheng, Y. Xie. Adaptive deep incremental (cross-modal) hashing, ADIH (paper 003)."
    supports_incremental = True

    def __init__(self, params: ADIHParams, info: DataInfo, bits: int) -> None:
        super().__init__(params, info, bits)
        p = params
        self.mods = tuple(p.modalities)
        if len(set(self.mods)) != len(self.mods):
            raise MethodError(f"adih: modalities {list(self.mods)} has duplicates")
        missing = [m for m in self.mods if m not in info.modalities]
        if missing:
            raise MethodError(f"adih: modalities {missing} are not in dataset {info.dataset!r} (it has {sorted(info.modalities)})")
        self.nets = torch.nn.ModuleDict(
            {m: build_encoder(info.modalities[m], bits, p.backbone, p.hidden, p.dropout) for m in self.mods}
        )
        n, k = int(info.n_train), int(bits)
        for m in self.mods:
            self.register_buffer(f"F_{m}", torch.zeros(n, k))
            self.register_buffer(f"H_{m}", torch.zeros(n, k))
        for i, j in self.pairs:
            self.register_buffer(f"W_{i}_{j}", torch.eye(k))
        self.register_buffer("train_labels", torch.zeros(n, int(info.n_classes)))
        self.stage = "original"

    # -- small accessors -------------------------------------------------------------------------
    @property
    def pairs(self) -> list[tuple[int, int]]:
        a = len(self.mods)
        return [(i, j) for i in range(a) for j in range(i + 1, a)]

    def W(self, i: int, j: int) -> torch.Tensor:
        """Coupling with similarity ``H_i W H_j^T`` for any ordered pair (``W_ji = W_ij^T``)."""
        return getattr(self, f"W_{i}_{j}") if i < j else getattr(self, f"W_{j}_{i}").t()

    def codes(self, m: str) -> torch.Tensor:
        """Learnt codes of the original training items for modality ``m`` (n, k)."""
        return getattr(self, f"H_{m}")

    def new_codes(self, m: str) -> torch.Tensor:
        """Learnt codes of the new items (incremental step) for modality ``m``."""
        return getattr(self, f"Hn_{m}")

    def _bufs(self, m: str) -> tuple[torch.Tensor, torch.Tensor]:
        if self.stage == "increment":
            return getattr(self, f"Fn_{m}"), getattr(self, f"Hn_{m}")
        return getattr(self, f"F_{m}"), getattr(self, f"H_{m}")

    def distributed_loss_scale(self, local_n: int, global_n: int) -> float:
        return local_n / global_n if self.params.normalize else 1.0

    def distributed_item_buffers(self, phase: str) -> tuple[str, ...]:
        return (f"Fn_{phase}",) if self.stage == "increment" else (f"F_{phase}",)

    # -- hooks -----------------------------------------------------------------------------------
    def configure_optimizers(self, make_optimizer) -> dict[str, torch.optim.Optimizer]:
        return {m: make_optimizer(self.nets[m].parameters()) for m in self.mods}

    def phases(self, epoch: int) -> list[str]:
        return list(self.mods)

    @torch.no_grad()
    def _forward_all(self, data: TrainData, outs: dict[str, torch.Tensor]) -> None:
        if data.batches is None:
            for o in outs.values():
                o.normal_()
            return
        was = self.training
        self.eval()
        seen = torch.zeros(next(iter(outs.values())).shape[0], dtype=torch.bool, device=self.train_labels.device)
        for batch in data.batches():
            idx = batch["index"].to(seen.device)
            for m, o in outs.items():
                o[idx] = self.nets[m](batch[m].to(o.device)).float()
            seen[idx] = True
        self.train(was)
        if not bool(seen.all()):
            raise MethodError(f"adih: TrainData.batches covered {int(seen.sum())} of {seen.numel()} items")

    @torch.no_grad()
    def on_train_start(self, data: TrainData) -> None:
        self.store_train_labels(data.labels)
        self.stage = "original"
        outs = {m: getattr(self, f"F_{m}") for m in self.mods}
        self._forward_all(data, outs)
        init = sign_pm1(torch.randn(self.codes(self.mods[0]).shape, device=self.train_labels.device))
        for m in self.mods:
            self.codes(m).copy_(init)
        self._update_codes()

    def training_step(self, batch: dict[str, torch.Tensor], phase: str) -> dict[str, torch.Tensor]:
        """One batch of step (1)/(2) of Algorithm 1 (or (1)/(2) of Algorithm 2 in the increment) for modality ``phase``."""
        if phase not in self.nets:
            raise MethodError(f"adih: unknown phase {phase!r}; phases are the modalities {list(self.mods)}")
        f_buf, h_buf = self._bufs(phase)
        idx = batch["index"]
        out = self.nets[phase](batch[phase])
        inc = self.stage == "increment"
        if inc and self.n_replay:
            # replayed original items (positions >= n_new) regress onto their fixed codes
            h_buf = torch.cat([h_buf, self.codes(phase)[self.anchor_index]])
        w_proj = self.params.lam if inc else self.params.alpha
        w_bal = self.params.mu if inc else self.params.beta
        n, bsz = f_buf.shape[0], out.shape[0]
        proj = ((h_buf[idx] - out) ** 2).sum()
        # beta weighs ||F^T 1||^2 / n (see the module docstring): its gradient on one row is 2 beta F^T 1 / n,
        # the mean output of the training set
        if self.params.balance_f1 == "stored":
            # the batch rows live, every other row from the stored outputs
            offset = (f_buf.sum(dim=0) - f_buf[idx].sum(dim=0)).detach()
            bal = ((out.sum(dim=0) + offset) ** 2).sum() / n
        else:
            # the mean output estimated by the batch mean: gradient 2 beta mean_batch on every row
            bal = (out.sum(dim=0) ** 2).sum() / bsz
        norm = float(bsz) if self.params.normalize else 1.0
        terms = {"projection": w_proj * proj / norm, "balance": w_bal * bal / norm}
        with torch.no_grad():
            f_buf[idx] = out.detach().to(f_buf.dtype)
        return {"loss": terms["projection"] + terms["balance"], **terms}

    @torch.no_grad()
    def on_epoch_end(self, epoch: int, data: TrainData) -> dict[str, float]:
        """Steps (3)-(5) of Algorithm 1 (W, then each modality's codes), or (3)-(4) of Algorithm 2 in the increment."""
        return self._update_codes()

    @torch.no_grad()
    def _update_codes(self) -> dict[str, float]:
        p = self.params
        out: dict[str, float] = {}
        if self.stage == "original":
            labels = self.train_labels
            for i, j in self.pairs:
                hi, hj = self.codes(self.mods[i]), self.codes(self.mods[j])
                w = closed_form_w(hi, hj, similarity_times(labels, labels, hj), mode=p.w_mode, ridge=p.w_ridge)
                getattr(self, f"W_{i}_{j}").copy_(w)
            out["w_scale"] = float(sum(torch.diagonal(self.W(i, j)).mean() for i, j in self.pairs) / len(self.pairs))
            for a, m in enumerate(self.mods):
                others = [b for b in range(len(self.mods)) if b != a]
                anchors = [self.codes(self.mods[b]) for b in others]
                s_anchors = [similarity_times(labels, labels, h) for h in anchors]
                ws = [self.W(a, b) for b in others]
                out.update(self._solve(m, getattr(self, f"F_{m}"), self.codes(m), anchors, s_anchors, ws, p.alpha))
        else:
            new_labels, anc_labels = self.new_labels, self.anchor_labels
            ref_labels = torch.cat([anc_labels, new_labels])
            for a, m in enumerate(self.mods):
                others = [b for b in range(len(self.mods)) if b != a]
                anchors = [torch.cat([self.codes(self.mods[b])[self.anchor_index], self.new_codes(self.mods[b])]) for b in others]
                s_anchors = [similarity_times(new_labels, ref_labels, h) for h in anchors]
                ws = [self.W(a, b) for b in others]
                f_new = getattr(self, f"Fn_{m}")[: self.new_labels.shape[0]]
                out.update(self._solve(m, f_new, self.new_codes(m), anchors, s_anchors, ws, p.lam))
        return out

    def _solve(self, m, f, h, anchors, s_anchors, ws, weight) -> dict[str, float]:
        pmat, qmat = code_terms(f, anchors, s_anchors, ws, weight)
        if self.params.relax:
            new = relaxed_update(pmat, qmat, weight)
            changed = float((sign_pm1(new) != sign_pm1(h)).float().mean())
        else:
            new = bitwise_update(h, pmat, qmat, sweeps=self.params.code_sweeps)
            changed = float((new != h).float().mean())
        h.copy_(new)
        return {f"h_changed/{m}": changed, f"code_objective/{m}": float(code_objective(h, pmat, qmat))}

    # -- incremental step ------------------------------------------------------------------------
    def _anchor_sample(self, n_old: int) -> torch.Tensor:
        """The seeded sample of original items used as anchors (all of them when there are at most ``anchors``)."""
        if n_old <= self.params.anchors:
            return torch.arange(n_old)
        gen = torch.Generator().manual_seed(int(self.params.anchor_seed))
        return torch.sort(torch.randperm(n_old, generator=gen)[: self.params.anchors]).values

    n_replay = 0

    def increment_replay(self, n_old: int):
        """With ``replay``: the anchors (original items) are revisited by the incremental step's network passes."""
        import numpy as np

        if not self.params.replay:
            return np.zeros(0, dtype=np.int64)
        return self._anchor_sample(n_old).numpy().astype(np.int64)

    @torch.no_grad()
    def on_increment_start(self, old: TrainData, new: TrainData) -> None:
        """Algorithm 2 set-up: fix the original codes and W, sample the original anchors, initialise the new codes.

        With ``replay`` the last ``len(anchors)`` rows of ``new`` must be the anchors (as the runner passes them)."""
        if self.stage != "original":
            raise MethodError("adih: on_increment_start called twice (one increment per trained model is supported)")
        dev = self.train_labels.device
        n_old = int(self.train_labels.shape[0])
        anchor = self._anchor_sample(n_old).to(dev)
        n_part, k = int(new.labels.shape[0]), self.bits
        n_rep = len(anchor) if self.params.replay else 0
        n_new = n_part - n_rep
        new_labels = new.labels.to(self.train_labels)
        if n_new <= 0 or (n_rep and not torch.equal(new_labels[n_new:], self.train_labels[anchor])):
            raise MethodError(
                f"adih: with replay=true the incremental data must end with the {n_rep} anchor items "
                f"(increment_replay); got {n_part} rows"
            )
        self.n_replay = n_rep
        gen = torch.Generator().manual_seed(int(self.params.anchor_seed) + 1)
        self.register_buffer("anchor_index", anchor)
        self.register_buffer("anchor_labels", self.train_labels[self.anchor_index].clone())
        self.register_buffer("new_labels", new_labels[:n_new].clone())
        for m in self.mods:
            self.register_buffer(f"Fn_{m}", torch.zeros(n_part, k, device=dev))
            self.register_buffer(f"Hn_{m}", torch.zeros(n_new, k, device=dev))
        self._forward_all(new, {m: getattr(self, f"Fn_{m}") for m in self.mods})
        init = sign_pm1(torch.randn(n_new, k, generator=gen)).to(dev)
        for m in self.mods:
            self.new_codes(m).copy_(init)
        self.stage = "increment"
        self._update_codes()

    def encode(self, batch: dict[str, torch.Tensor], modality: str) -> torch.Tensor:
        if modality not in self.nets:
            raise MethodError(f"adih: cannot encode modality {modality!r}; it has {list(self.mods)}")
        return self.nets[modality](batch[modality])


# variants (listed by `hashbench list`; a suite names them like methods)
register_variant('adih-i', 'adih', 'ADIH-I (paper 003): no incremental learning, the increment retrains on all data', incremental=False)
register_variant('adih-r', 'adih', 'ADIH+R (paper 003): continuous relaxation of the code sub-problems', relax=True)
register_variant('adih-b', 'adih', 'ADIH-B (paper 003): no bit balance', beta=0.0, mu=0.0)
