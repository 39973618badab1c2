"""MFPMC: cross-modal hashing with multi-scale fusion and projection matching constraint.

Deng W., Zhao Y., Yang W., Zhang B., Li H., Ye S. "Cross-Modal Hash Method Based on Multi-Scale Fusion
and Projection Matching Constraint", Laser & Optoelectronics Progress 59(24): 2410006, 2022
(DOI 10.3788/LOP202259.2410006; /work/shared/papers/001_abcdfdc1773e1e0e.txt). Sections, equations and
tables below are the paper's.

Model (Sec. 2.2-2.4, Fig. 1), all in methods/nets/mfpmc_nets.py:

* image feature net ``F^x``: IMFM (Table 1: average pools 5/10/15 + 1x1 convs, fused) -> CNN-F (or a
  torchvision backbone, or an MLP on precomputed features) -> low-dimensional feature ``f^x``;
* text feature net ``F^y``: TMFM (Table 2: average pools 50/30/15/10/5 over the bag-of-words + 1x1 convs,
  fused) -> three-layer feed-forward net -> ``f^y``;
* hash functions ``h^x``, ``h^y``: one fully connected layer each (Sec. 2.4), real-valued ``H^x``, ``H^y``;
* discriminator ``D`` on the low-dimensional features (image = real, text = fake).

Objective (eq. 15 is garbled in the paper copy; its weights are named in Sec. 3.5: xi for the
projection matching loss, tau for the intra-modal loss J2, gamma for the inter-modal loss J1, eta for the
quantization loss J4, mu for the label embedding loss J5)::

    J = xi L_p + w_adv L_adv + gamma J1 + tau J2 + eta J4 + mu J5
    L_adv (eq. 1)  -1/n sum [log D(f^x_i) + log(1 - D(f^y_j))]
    L_p   (eq. 8)  KL(q^{i->t} || P) + KL(q^{t->i} || P), q = softmax_j(f_a_i . f_b_j / ||f_b_j||) (eqs. 6-7)
    J1    (eq. 10) -sum_ij (S_ij psi_ij - log(1 + e^psi_ij)) + alpha (||H^x 1||^2 + ||H^y 1||^2), psi = 1/2 H^x_i . H^y_j
    J2    (eq. 11) ||W^T H^x - L||^2 + ||W^T H^y - L||^2 + beta ||W||^2
    J4    (eq. 13) ||B - H^x||^2 + ||B - H^y||^2   (one B for both modalities)
    J5    (eq. 14) ||B - L V||^2 + lambda ||V||^2

Optimisation (Sec. 2.5): with W, V, B fixed, every network (``F^x``, ``F^y``, ``D``, ``h^x``, ``h^y``) is
trained by stochastic gradients of J over mini-batches (one phase ``"joint"``, one optimizer); after the
pass, with the networks fixed, W, V and B are updated in closed form one at a time
(:meth:`MFPMC.on_epoch_end`; methods/losses/mfpmc.py): ``W = (H^xT H^x + H^yT H^y + beta I)^-1 (H^x + H^y)^T L``,
``V = (L^T L + lambda I)^-1 L^T B``, ``B = sign(eta (H^x + H^y) + mu L V)``.

Defaults from the paper (Sec. 3.2): alpha = 0.8, beta = 0.01, xi = 10, tau = 1, gamma = 1.2, eta = 0.8,
mu = 1.2. Not given by the paper, ours: lambda = 0.01 (mirrors beta), w_adv = 1 (eq. 15 shows no weight
on L_adv), delta = 1e-8 (CMPM's epsilon), feature_dim = 512 (SSAH's feature width), text FFN widths
4096-4096-512, image MLP head 4096 on features.

Ablation switches (Table 5): ``imfm``, ``tmfm``, ``lfpmc`` (Base = all three off; the adversarial term
and J1-J5 stay on in Base, as the paper's Base removes only the fusion modules and LFPMC); also
``adversarial`` and the weights (``tau = 0`` drops J2, ``mu = 0`` drops J5 and V from the B update).

Reconstructions and deviations (each is a parameter where it is a choice):

* Adversarial training: the paper updates theta_D together with the other parameters by SGD on J, and
  wants the features of the two modalities indistinguishable. Minimising L_adv jointly would make the
  feature nets *help* D, so the features reach D through a gradient-reversal layer (Ganin & Lempitsky,
  2015): D descends L_adv, the feature nets ascend it (scaled by ``adv_weight``), in the same step.
* Log base: eqs. (1) and (7) print log10; kept (``log_base = 10``; a constant factor on those terms,
  so xi keeps the authors' scale). J1's printed log10 would leave the likelihood without an optimum
  for similar pairs, so J1 uses the natural log (DCMH's likelihood, which eq. 9 defines).
* ``f_bar = f / ||f||_F^2`` (eq. 6) is read as the unit vector ``f / ||f||`` ("normalised unit feature
  vector"; CMPM's projection, which eqs. 6-7 follow).
* Similarities: P (eq. 5) from ``S = 2 S_tilde - 1`` would have negative entries (no distribution), and
  J1's likelihood with S = -1 is unbounded below. Both therefore use a similarity in [0, 1]:
  ``p_similarity: cosine`` (S_tilde, default) or ``shifted`` (the paper's S clipped at 0), and
  ``j1_similarity: cosine`` (S_tilde as a soft target, default) or ``binary`` (share a label, DCMH).
  On single-label data (the embedded Wikipedia) every choice gives the same 0/1 matrix.
* L_p's sums over n run over the mini-batch (both modalities of the batch's items, live features on
  both sides), as in CMPM's training; P is computed from the batch's labels.
* J1 in a batch: the batch's image codes against the stored text codes of all n training items plus
  the batch's text codes against the stored image codes (each pair's gradient reaches each side once
  per epoch). The full-set bit sums ``H 1`` of the balance term are estimated as n/B times the batch's
  sum (DCMH's ``balance_f1="batch"``; stored sums lag the networks, see methods/dcmh.py).
* ``normalize: paper`` (default; :func:`methods.losses.mfpmc.batch_term_scales`, the one place the
  batch loss is scaled): the mini-batch estimate of eq. (15)'s J divided by n, so J1, J2, J4 and J5
  weigh against each other as the paper's sums (J1 over n^2 pairs, the others over n items) and L_p,
  L_adv as its means beside them: the batch sums times 1/B, the means times 1/n. Consequence of the
  printed weighting: J1 is of order n^2 and xi L_p of order 1, so L_p's share of the gradient is tiny,
  while Sec. 3.5 finds L_p the most important term; the authors' code (not available) must weigh it
  otherwise. ``normalize: mean`` is HashBench's earlier weighting (J1 by B n, J2/J4/J5 by B, means as
  printed): J1 n times lighter against J2/J4/J5 than the paper, L_p n times heavier than the paper
  against all of them. The closed-form W/V/B steps use the printed sums (J4 and J5 share one weight,
  so B is unaffected; W and V do not depend on tau, mu).
* In the network phase W, V, B are constants: the returned ``j2`` and ``j5`` terms leave out
  ``beta ||W||^2`` and ``lambda ||V||^2`` (constant there), and ``j5`` (no gradient) is logged so that
  ``loss`` is the batch estimate of J. ``refresh: true`` recomputes H^x, H^y by a forward pass with the
  trained networks before the closed-form steps (the paper fixes the networks first); ``false`` uses the
  codes stored during the pass (DCMH's practice, no extra pass).
* Optimiser: the pipeline's (``train.optimizer``, Adam by default); the paper says SGD (Sec. 2.5).
* Data-parallel training (not in the paper): H^x/H^y rows are copied to every rank after each step, J1's
  balance uses the global batch's sums over the ranks, and L_p is computed over the global batch's pairs
  with its exact gradient (``_global_lfpmc``: each rank's rows against the gathered features, the gradient on
  those summed over the ranks); W, V, B are solved on every rank from identical inputs and rank 0's are
  broadcast. ``normalize: none`` under several workers sums the mean terms (L_p, L_adv) over the ranks.
* Paper setup (``paper_setup``, suites with ``network: paper``): CNN-F with MatConvNet's ImageNet weights
  behind IMFM (Sec. 2.1, Table 1: ``image_backbone: cnnf``, ``image_weights: cnnf_imagenet_vgg_f``), 224 px
  input, and SGD (Sec. 2.5: "stochastic gradient descent" for the network parameters). Not stated in the
  paper and therefore not verified: learning rate, momentum, schedule, epochs and batch size; we keep the
  global lr (1e-3), batch and epochs with SGD momentum 0.9 (torch's usual value, ours).

Measured with the paper's weighting (``normalize: paper``), Wikipedia, 16 bits, ``image_hidden: [512]``,
``text_hidden: [512, 512]``, Adam 1e-3, batch 128, mAP@all i2t / t2i (random codes 0.111): 10 epochs seed 0
0.175 / 0.145, seed 1 0.182 / 0.152 (``mean``: 0.271 / 0.313, 0.164 / 0.164); 30 epochs seed 0 0.211 / 0.248
(``mean``: 0.245 / 0.578). On this CPU stand-in the printed weighting (J1 dominating, L_p negligible)
costs most of t2i: a negative result kept as the default because it is the paper's objective; ``normalize:
mean`` is the tuned-for-Wikipedia alternative. The numbers below were measured with ``mean``.

Measured on the embedded Wikipedia (features: 128-d SIFT BoW, 10-d LDA), 30 epochs, Adam 1e-3, batch 128,
``image_hidden: [512]``, ``text_hidden: [512, 512]``, mAP@all (random codes 0.111), mean ± std over seeds
0-2, on a loaded 2-core CPU: 16 bits i2t 0.197 ± 0.043 / t2i 0.361 ± 0.179; 32 bits 0.236 ± 0.025 / 0.500 ±
0.114; 64 bits 0.265 ± 0.019 / 0.635 ± 0.043 (DCMH, params.yaml defaults: 0.157 / 0.157, 0.175 / 0.169,
0.190 / 0.184). Ablation at 64 bits (Table 5's variants): Base 0.281 / 0.728, +IMFM 0.281 / 0.730, +TMFM
0.261 / 0.669, +IMFM+TMFM 0.266 / 0.672, +LFPMC 0.291 / 0.711, full 0.265 / 0.635: on these feature
vectors the fusion modules do not help (neighbouring BoW bins / LDA topics have no scale structure for
pooling to exploit) and TMFM costs t2i; LFPMC raises i2t. B settles within ~5 epochs
(``b_changed_fraction`` < 0.001): the label-embedding term makes B a near label-determined code early,
which is why short codes vary much with the seed (16 bits with ``mu = 0``: 0.247 ± 0.021 / 0.531 ± 0.050).
``tmfm_fusion: sum`` instead of SSAH's concatenation: +TMFM 0.280 / 0.702, full 0.284 / 0.678 at 64 bits.
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
from pydantic import Field

from methods.base import DataInfo, HashMethod, MethodParams, TrainData
from methods.dcmh import sign_pm1
from methods.losses import bit_balance_loss, pairwise_nll, similarity_from_labels
from methods.losses.mfpmc import (
    adversarial_loss,
    batch_term_scales,
    label_cosine_similarity,
    label_projection_distribution,
    lfpmc_loss,
    projection_matching_kl,
    shifted_label_similarity,
    solve_b,
    solve_v,
    solve_w,
)
from methods.nets.cnnf import CNNF_IMAGENET
from methods.nets.mfpmc_nets import IMFM_POOLS, TMFM_POOLS, ModalityDiscriminator, build_image_net, build_text_net, grad_reverse
from methods.registry import register_method, register_variant
from pipeline.core.errors import MethodError

log = logging.getLogger(__name__)


class MFPMCParams(MethodParams):
    """MFPMC hyperparameters; sources in the module docstring."""

    # loss weights and regularisers (paper Sec. 3.2 unless marked ours)
    alpha: float = Field(0.8, ge=0, description="bit balance weight in J1 (paper: 0.8)")
    beta: float = Field(0.01, ge=0, description="||W||^2 weight in J2 (paper: 0.01)")
    xi: float = Field(10.0, ge=0, description="weight of the projection matching loss L_p (paper: 10)")
    tau: float = Field(1.0, ge=0, description="weight of the intra-modal label regression J2 (paper: 1)")
    gamma: float = Field(1.2, ge=0, description="weight of the inter-modal likelihood J1 (paper: 1.2)")
    eta: float = Field(0.8, ge=0, description="weight of the unified-code quantization J4 (paper: 0.8)")
    mu: float = Field(1.2, ge=0, description="weight of the label embedding J5 (paper: 1.2)")
    lam: float = Field(0.01, gt=0, description="||V||^2 weight in J5 (not in the paper; ours, as beta)")
    adv_weight: float = Field(1.0, ge=0, description="weight of L_adv (eq. 15 shows none; ours: 1)")
    delta: float = Field(1e-8, gt=0, description="delta of eq. 7 (CMPM's epsilon)")
    log_base: float = Field(10.0, gt=1, description="log base of eqs. 1 and 7 (paper prints log10)")
    # ablation switches (Table 5)
    imfm: bool = Field(True, description="image multi-scale fusion module (Table 1)")
    tmfm: bool = Field(True, description="text multi-scale fusion module (Table 2)")
    lfpmc: bool = Field(True, description="low-dimensional feature projection matching constraint L_p")
    adversarial: bool = Field(True, description="modality discriminator and L_adv (gradient reversal)")
    # similarities
    j1_similarity: Literal["cosine", "binary"] = Field("cosine", description="S of J1: cosine label similarity (soft) or share-a-label")
    p_similarity: Literal["cosine", "shifted"] = Field("cosine", description="S of P (eq. 5): cosine S_tilde or max(2 S_tilde - 1, 0)")
    # networks
    imfm_pools: tuple[int, ...] = Field(IMFM_POOLS, description="IMFM pool sizes (Table 1: 5, 10, 15)")
    tmfm_pools: tuple[int, ...] = Field(TMFM_POOLS, description="TMFM pool sizes (Table 2: 50, 30, 15, 10, 5)")
    imfm_fusion: Literal["sum", "concat"] = Field("sum", description="how IMFM fuses its branches with the input (see mfpmc_nets)")
    tmfm_fusion: Literal["sum", "concat"] = Field("concat", description="how TMFM fuses its branches with the input (SSAH: concat)")
    image_backbone: str = Field("auto", description="'auto' (cnnf on pixels, mlp on features), 'cnnf', 'small_cnn', 'mlp' or a torchvision model")
    image_weights: str | None = Field(None, description="pretrained weights of cnnf / a torchvision backbone: a weights entry (cnnf = MatConvNet imagenet-vgg-f) or a local state_dict file")
    cnnf_input_size: int = Field(224, ge=64, description="CNN-F input side; other sizes are resized to it")
    image_hidden: tuple[int, ...] | None = Field(None, description="MLP head widths after the image backbone (None: 4096 on features, none after conv backbones)")
    text_hidden: tuple[int, ...] = Field((4096, 4096), description="hidden widths of the text feed-forward net (three layers with feature_dim)")
    feature_dim: int = Field(512, ge=1, description="width of the low-dimensional features f^x, f^y (ours; SSAH's 512)")
    feature_activation: Literal["relu", "tanh", "none"] = Field("relu", description="activation on the low-dimensional features")
    disc_hidden: tuple[int, ...] = Field((512,), description="hidden widths of the discriminator MLP")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout in the MLP heads and CNN-F's fc layers")
    # optimisation details
    normalize: Literal["paper", "mean", "none"] = Field(
        "paper", description="weighting of the batch terms: paper = eq. (15)'s sums and means (J / n); mean = J1 / (B n), J2/J4/J5 / B; "
        "none = unscaled (see methods.losses.mfpmc.batch_term_scales)"
    )
    refresh: bool = Field(True, description="recompute H^x, H^y with the trained nets before the closed-form W/V/B steps")


@register_method
class MFPMC(HashMethod):
    """MFPMC: multi-scale fusion nets, LFPMC + adversarial feature alignment, J1-J5, closed-form W/V/B."""

    name = "mfpmc"
    modalities = ("image", "text")
    input_kinds = frozenset({"features", "pixels", "bow"})
    Params = MFPMCParams
    # H^x/H^y rows synchronised after every step, J1's balance from the ranks' summed batch sums, W/V/B on rank 0
    # broadcast; L_p (a softmax over the global batch's pairs) with its 1-worker gradient (_global_lfpmc)
    supports_distributed = True
    per_item_term = "j1_likelihood"  # training_step's "per_item": each batch item's part of J1's likelihood
    inter_modal_term = "j1_likelihood"
    #: the paper's image network and optimiser (module docstring: what the paper does not state is ours)
    paper_setup = {
        "params": {"image_backbone": "cnnf", "image_weights": CNNF_IMAGENET},
        "train": {"optimizer": {"name": "sgd", "momentum": 0.9}},
    }
    paper = (
        "W. Deng, Y. Zhao, W. Yang, B. Zhang, H. Li, S. Ye. Cross-Modal Hash Method Based on Multi-Scale Fusion "
        "and Projection Matching Constraint. Laser & Optoelectronics Progress 59(24): 2410006, 2022."
    )

    def __init__(self, params: MFPMCParams, info: DataInfo, bits: int) -> None:
        super().__init__(params, info, bits)
        p = params
        if info.modalities["text"].kind == "pixels":
            raise MethodError(f"mfpmc: text modality of dataset {info.dataset!r} is pixels; expected bow or features")
        self.image_net = build_image_net(
            info.modalities["image"], p.feature_dim, p.image_backbone, p.image_hidden, p.imfm, p.imfm_pools, p.imfm_fusion,
            p.image_weights, p.cnnf_input_size, p.dropout, p.feature_activation,
        )
        self.text_net = build_text_net(
            info.modalities["text"], p.feature_dim, p.text_hidden, p.tmfm, p.tmfm_pools, p.tmfm_fusion, p.dropout, p.feature_activation
        )
        self.image_hash = torch.nn.Linear(p.feature_dim, bits)
        self.text_hash = torch.nn.Linear(p.feature_dim, bits)
        self.discriminator = ModalityDiscriminator(p.feature_dim, p.disc_hidden) if p.adversarial else None
        n, c = int(info.n_train), int(info.n_classes)
        self.register_buffer("Hx_buf", torch.zeros(n, bits))
        self.register_buffer("Hy_buf", torch.zeros(n, bits))
        self.register_buffer("B_buf", torch.zeros(n, bits))
        self.register_buffer("W_buf", torch.zeros(bits, c))
        self.register_buffer("V_buf", torch.zeros(c, bits))
        self.register_buffer("train_labels", torch.zeros(n, c))

    # -- hooks -----------------------------------------------------------------------------------
    def configure_optimizers(self, make_optimizer) -> dict[str, torch.optim.Optimizer]:
        return {"joint": make_optimizer(self.parameters())}

    def phases(self, epoch: int) -> list[str]:
        return ["joint"]

    def representation_inputs(self) -> dict[str, torch.nn.Module]:
        return {"image": self.image_net.head, "text": self.text_net.head}  # after IMFM / TMFM and the trunk

    def distributed_loss_scale(self, local_n: int, global_n: int) -> float:
        return local_n / global_n if self.params.normalize != "none" else 1.0

    def distributed_step_buffers(self, phase: str) -> tuple[str, ...]:
        return ("Hx_buf", "Hy_buf")  # J1 of later steps reads the rows stored by earlier ones

    def _similarity(self, a: torch.Tensor, b: torch.Tensor, kind: str) -> torch.Tensor:
        if kind == "binary":
            return similarity_from_labels(a, b)
        if kind == "shifted":
            return shifted_label_similarity(a, b).clamp_min(0.0)
        return label_cosine_similarity(a, b)

    @torch.no_grad()
    def _refresh_codes(self, data: TrainData) -> None:
        """H^x, H^y of every training item from one forward pass of the current (fixed) networks."""
        was_training = self.training
        self.eval()
        seen = torch.zeros(self.Hx_buf.shape[0], dtype=torch.bool, device=self.Hx_buf.device)
        for batch in data.batches():
            idx = batch["index"].to(self.Hx_buf.device)
            self.Hx_buf[idx] = self.image_hash(self.image_net(batch["image"])).float()
            self.Hy_buf[idx] = self.text_hash(self.text_net(batch["text"])).float()
            seen[idx] = True
        self.train(was_training)
        if not bool(seen.all()):
            raise MethodError(
                f"mfpmc: TrainData.batches of dataset {self.info.dataset!r} covered {int(seen.sum())} of {seen.numel()} training items"
            )

    @torch.no_grad()
    def on_train_start(self, data: TrainData) -> None:
        self.store_train_labels(data.labels)
        if data.batches is not None:
            self._refresh_codes(data)
        else:
            self.Hx_buf.normal_()
            self.Hy_buf.normal_()
        p = self.params
        self.B_buf.copy_(sign_pm1(self.Hx_buf + self.Hy_buf))
        self.W_buf.copy_(solve_w(self.Hx_buf, self.Hy_buf, self.train_labels, p.beta))
        self.V_buf.copy_(solve_v(self.B_buf, self.train_labels, p.lam))

    def training_step(self, batch: dict[str, torch.Tensor], phase: str) -> dict[str, torch.Tensor]:
        """One mini-batch of the network phase (W, V, B fixed). Returned terms are weighted and sum to ``loss``."""
        if phase != "joint":
            raise MethodError(f"mfpmc: unknown phase {phase!r}; the only phase is 'joint'")
        p = self.params
        idx, lab = batch["index"], batch["labels"]
        fx, fy = self.image_net(batch["image"]), self.text_net(batch["text"])
        hx, hy = self.image_hash(fx), self.text_hash(fy)
        n, bsz = self.Hx_buf.shape[0], hx.shape[0]
        k = batch_term_scales(p.normalize, n, bsz)
        terms: dict[str, torch.Tensor] = {}

        # J1 (eq. 10): batch images vs all stored texts + batch texts vs all stored images; balance with H 1 ~ n/B * batch sum
        s = self._similarity(lab, self.train_labels, p.j1_similarity)
        # clones: the buffers are refreshed in place below, before the loop backpropagates
        hy_all, hx_all = self.Hy_buf.clone(), self.Hx_buf.clone()
        nll_rows = pairwise_nll(hx, hy_all, s, scale=0.5, reduction="rows") + pairwise_nll(hy, hx_all, s, scale=0.5, reduction="rows")
        nll = nll_rows.sum()
        if self.shard_info is None:
            scale = n / bsz - 1.0
            bal = bit_balance_loss(hx, offset=scale * hx.detach().sum(0)) + bit_balance_loss(hy, offset=scale * hy.detach().sum(0))
        else:  # n / B times the global batch's sums (summed over the ranks), as one worker estimates H 1
            gn = self.shard_info.global_n
            bal = sum(bit_balance_loss(h, offset=(n / gn) * self.global_sum(h.sum(0)) - h.detach().sum(0)) for h in (hx, hy))
        terms["j1_likelihood"] = k["j1"] * p.gamma * nll
        terms["j1_balance"] = self.shared_term(k["j1"] * p.gamma * p.alpha * bal, bsz)

        labf = lab.to(hx.dtype)
        if p.tau > 0:  # J2 (eq. 11) with W fixed
            w = self.W_buf
            terms["j2"] = k["j2"] * p.tau * (((hx @ w - labf) ** 2).sum() + ((hy @ w - labf) ** 2).sum())
        b = self.B_buf[idx]
        terms["j4"] = k["j4"] * p.eta * (((b - hx) ** 2).sum() + ((b - hy) ** 2).sum())  # eq. 13
        if p.mu > 0:  # J5 (eq. 14): constant in this phase, logged so that loss estimates J
            terms["j5"] = (k["j5"] * p.mu * ((b - labf @ self.V_buf) ** 2).sum()).detach()
        if p.lfpmc and p.xi > 0:  # L_p (eqs. 5-8) over the batch's pairs
            if self.shard_info is None:
                pmat = label_projection_distribution(self._similarity(lab, lab, p.p_similarity))
                terms["lfpmc"] = k["lfpmc"] * p.xi * lfpmc_loss(fx, fy, pmat, p.delta, p.log_base)
            else:
                terms["lfpmc"] = k["lfpmc"] * p.xi * self._global_lfpmc(fx, fy, lab)
        if self.discriminator is not None and p.adv_weight > 0:  # eq. 1 through gradient reversal
            # D descends w_adv L_adv; through the reversal the feature nets get -w_adv dL_adv/df (they ascend it)
            zx = self.discriminator(grad_reverse(fx))
            zy = self.discriminator(grad_reverse(fy))
            terms["adversarial"] = k["adversarial"] * p.adv_weight * adversarial_loss(zx, zy, p.log_base)

        with torch.no_grad():
            self.Hx_buf[idx] = hx.detach().to(self.Hx_buf.dtype)
            self.Hy_buf[idx] = hy.detach().to(self.Hy_buf.dtype)
        total = sum(terms.values())
        out = {"loss": total, **terms}
        if self.per_item_requested:  # each batch item's share of J1's likelihood (its image row + its text row)
            out["per_item"] = k["j1"] * p.gamma * nll_rows
        return out

    def _global_lfpmc(self, fx: torch.Tensor, fy: torch.Tensor, lab: torch.Tensor) -> torch.Tensor:
        """L_p of the whole global batch on a data-parallel rank, with the 1-worker gradient. Each row ``i``'s KL
        term needs every pair ``(i, j)`` of the global batch, and each ``f_j`` gets gradient from every row ``i``:
        this rank computes its rows' terms (divided by the global batch size) against the gathered features as
        constants, takes their gradient on those constants, sums it over the ranks and applies each rank's part
        to its own features through a linear surrogate; divided by the loss scale (the loop multiplies by it)."""
        p, info = self.params, self.shard_info
        m, local_n = info.global_n, fx.shape[0]
        pos = info.positions.to(fx.device)
        gx = self.global_rows(fx).requires_grad_()
        gy = self.global_rows(fy).requires_grad_()
        glab = self.global_rows(lab.to(fx.dtype))
        pmat = label_projection_distribution(self._similarity(lab, glab, p.p_similarity))  # local rows of the global P
        part = (projection_matching_kl(fx, gy, pmat, p.delta, p.log_base) + projection_matching_kl(fy, gx, pmat, p.delta, p.log_base)) * (local_n / m)
        dgx, dgy = torch.autograd.grad(part, (gx, gy), retain_graph=True)
        dgx, dgy = self.global_sum(dgx), self.global_sum(dgy)
        surrogate = (dgx[pos] * fx).sum() + (dgy[pos] * fy).sum()
        return (part + surrogate - surrogate.detach()) / self.distributed_loss_scale(local_n, m)

    @torch.no_grad()
    def on_epoch_end(self, epoch: int, data: TrainData) -> dict[str, float]:
        """Sec. 2.5: networks fixed, then W, V and B in closed form, one after the other."""
        p = self.params
        if p.refresh and data.batches is not None:
            self._refresh_codes(data)
        hx, hy, lab = self.Hx_buf, self.Hy_buf, self.train_labels
        self.W_buf.copy_(solve_w(hx, hy, lab, p.beta))
        self.V_buf.copy_(solve_v(self.B_buf, lab, p.lam))
        new_b = solve_b(hx, hy, lab, self.V_buf, p.eta, p.mu)
        changed = float((new_b != self.B_buf).float().mean())
        self.B_buf.copy_(new_b)
        n = float(hx.shape[0])
        j2 = (((hx @ self.W_buf - lab) ** 2).sum() + ((hy @ self.W_buf - lab) ** 2).sum()) / n
        j5 = ((new_b - lab @ self.V_buf) ** 2).sum() / n
        return {"b_changed_fraction": changed, "j2_per_item": float(j2), "j5_per_item": float(j5)}

    def encode(self, batch: dict[str, torch.Tensor], modality: str) -> torch.Tensor:
        if modality == "image":
            return self.image_hash(self.image_net(batch["image"]))
        if modality == "text":
            return self.text_hash(self.text_net(batch["text"]))
        raise MethodError(f"mfpmc: cannot encode modality {modality!r}; it has 'image' and 'text'")


# variants (listed by `hashbench list`; a suite names them like methods)
register_variant('mfpmc-base', 'mfpmc', 'MFPMC ablation (paper 001, Table 5): Base = no IMFM, no TMFM, no LFPMC', imfm=False, tmfm=False, lfpmc=False)
register_variant('mfpmc-imfm', 'mfpmc', 'MFPMC ablation (paper 001, Table 5): Base + IMFM', tmfm=False, lfpmc=False)
register_variant('mfpmc-tmfm', 'mfpmc', 'MFPMC ablation (paper 001, Table 5): Base + TMFM', imfm=False, lfpmc=False)
register_variant('mfpmc-imfm-tmfm', 'mfpmc', 'MFPMC ablation (paper 001, Table 5): Base + IMFM + TMFM', lfpmc=False)
register_variant('mfpmc-lfpmc', 'mfpmc', 'MFPMC ablation (paper 001, Table 5): Base + LFPMC', imfm=False, tmfm=False)
