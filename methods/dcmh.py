"""DCMH: Deep Cross-Modal Hashing (Jiang & Li, CVPR 2017).

An image net ``f`` and a text net ``g`` output ``K`` real values per item; with ``F``/``G`` the outputs
of all ``n`` training items (rows here, columns in the paper) and ``B`` in {-1,+1}^(n x K) the shared
codes, the paper minimises (Sec. 3.2)

    J = -sum_ij (S_ij Theta_ij - log(1 + e^Theta_ij)) + gamma (||B - F||^2 + ||B - G||^2) + eta (||F^T 1||^2 + ||G^T 1||^2),
    Theta_ij = 1/2 F_i . G_j,   S_ij = 1 iff items i and j share a label,

by alternating (Algorithm 1): (a) update the image net with ``G`` and ``B`` fixed, over mini-batches of
images, with the batch's rows of ``F`` recomputed and every other row taken from the stored ``F``;
(b) the same for the text net with ``F`` fixed; (c) ``B = sign(gamma (F + G)) = sign(F + G)``.
Here (a) and (b) are the phases ``"image"`` and ``"text"`` and (c) runs in :meth:`DCMH.on_epoch_end`.

The batch loss is the part of J that depends on the batch's rows: the likelihood of the batch
against ALL ``n_train`` items of the other modality, the batch's quantization error, and the full-set
balance ``||F^T 1||^2`` whose gradient on every batch row is the paper's ``2 eta F^T 1`` (Sec. 3.3).

The recipe (defaults), each value with its source: the authors' code (github jiangqy/DCMH-CVPR2017: the
MATLAB demo ``DCMH_demo.m``/``process_DCMH.m``/``update_net.m``/``net_structure_txt.m``, which the readme
recommends, and the TensorFlow demo ``DCMH_demo.py``/``net_structure_txt.py``), read through the project's
search tool:

* ``gamma = eta = 1``: the paper (Sec. 4.1) and both demos.
* batch size 128 (``train.batch_size``): both demos (``batch_size = 128``).
* ``train.sampler: random_batches``: both demos draw every iteration's batch afresh as the first 128 of a
  new random permutation of the training items (TF: ``num_train / batch_size`` iterations per pass,
  MATLAB: ``ceil`` of it), not one permutation per epoch.
* SGD without momentum (``train.optimizer``): TF ``GradientDescentOptimizer``; MATLAB ``update_net.m`` is plain
  gradient descent too (with weight decay 5e-4, which the TF demo does not use: weight decay 0 here).
* learning rate 10^-1.5 decreasing over training (``train.lr_schedule``): TF ``linspace(10^-1.5, 10^-6,
  MAX_ITER)`` per epoch (our ``linear`` to ``final_lr: 1e-6``, the default); MATLAB ``logspace(-1.5, -3,
  maxIter)`` (``lr_schedule: {name: log, final_lr: 0.001}``).
* ``normalize=True``: both demos divide the batch objective (TF) or its gradient (MATLAB) by
  ``batch_size * n_train``. One constant factor on every term: the minimiser, the relative weights and
  every gradient direction are the paper's.
* ``layer_init: normal(0, 0.01)`` for weights and biases: ``0.01 * randn`` in ``net_structure_txt`` (both
  demos) for the text net; the image net is a pretrained CNN-F whose new last layer is drawn the same way.
  On features (Wikipedia) the whole image MLP is drawn so.
* ``balance_f1``: the authors' code uses the stored rows of the other items (``stale``); ``auto`` (the
  default) takes ``stale`` under SGD and ``drift`` under an adaptive optimiser (Adam, AdamW), see below.
* Paper setup (``paper_setup``, suites with ``network: paper``, i.e. the full profile): the image network
  is CNN-F with MatConvNet's ImageNet weights (``image_backbone: cnnf``, ``image_weights:
  cnnf_imagenet_vgg_f``, paper Sec. 3.1 / 4.1 and ``net_structure_img`` of both demos: fc8 replaced by the
  K-unit hash layer, so ``image_hidden: []``), 224 x 224 input minus the ImageNet mean colour (the MATLAB
  demo's ``normalization.averageImage``; :mod:`methods.nets.cnnf`), 500 epochs (``MAX_ITER``/``maxIter``).
  Not verified: whether the demos augment (we do not).
* 500 epochs (``MAX_ITER``/``maxIter``) on a pretrained CNN-F: **not** in the recipe (``train_defaults``). The CPU suites train
  30 epochs of MLPs on features, so the same schedule is compressed about 16x and the N(0, 0.01) net,
  whose small outputs make every likelihood gradient small, is under-trained there (measured in the
  README's DCMH section); suites set ``train.epochs`` themselves.

Why the per-epoch permutation destabilises the bit balance (eta = 1). Under plain gradient steps, the
common mode of the outputs (the per-bit mean ``m`` of ``F`` over the training items) moves by
``-k * m_hat`` per step, where ``m_hat`` is the balance estimator's view of ``F^T 1 / n`` and the gain
``k = 2 eta lr (1 + h . h_bar)`` (``h``: the last hidden layer's activations; the last layer's bias and weights
shift every item's output together). With the stored rows (``stale``), ``m_hat`` is the mean of the outputs
as they were when each row was last refreshed:

* one permutation per epoch: every row is refreshed once per pass of ``P = n / batch`` steps, so
  ``m_hat`` is exactly the average of the outputs of the last ``P`` steps (a box filter), a delay of about
  half a pass. Delayed negative feedback diverges once ``k`` exceeds about ``pi / P`` (0.29 for Wikipedia's
  ``P = 17``, from the roots of ``z^P (z - 1) + (k / P)(z^(P-1) + ... + 1)``);
* fresh random batches: a row is refreshed with probability ``1 / P`` per step, so ``m_hat`` is an
  exponential filter of the outputs (time constant ``P`` steps), whose phase lag never reaches 180
  degrees: stable for any ``k < 4P - 2`` (66 for Wikipedia), since the roots of
  ``z^2 + (k/P + 1/P - 2) z + 1 - 1/P`` have modulus ``sqrt(1 - 1/P) < 1`` while complex.

Measured on Wikipedia (16 bits, seed 0, 30 epochs, SGD 10^-1.5 linear to 10^-6, eta = 1). At the
N(0, 0.01) init the image net's 4096 ReLU units have a mean activation of about 0.045, so ``k`` is about
0.6: above the box filter's limit, far below the exponential filter's (and below 2, the limit of a lag-free
estimate). The permutation made the balance loss grow 0.13 -> 1.9 -> 36 -> 109 over epochs 0, 5, 10, 15
with 95% of B flipping per epoch, until the decaying rate brought ``k`` under the limit; random batches
kept it under 0.1 from the first epoch, B settled (under 1% flips) by epoch 10; ``drift`` and ``batch`` (no lag)
were stable under either sampler. With PyTorch's default init (larger activations, larger ``k``): random
batches with ``stale`` trained (i2t / t2i 0.209 / 0.201), the permutation with ``stale`` 0.194 / 0.172, and
the lag-free ``batch`` estimate diverged in the first epoch: at high gain only the filtering lag of the
stored rows keeps plain SGD stable. Adam is the opposite case: its steps have a fixed size whatever the
gradient (and a momentum memory of ~10 steps), so a delayed estimate is not damped: ``stale`` under Adam
grew the balance loss to ~6,700 with random batches (mAP at random level, 0.126 / 0.113), while ``drift``,
which removes most of the lag, trains (0.233 / 0.322). Hence the estimator follows the optimiser
(``auto``): ``stale`` for SGD (with the authors' random batches), ``drift`` for Adam/AdamW.

``balance_f1``: ``drift`` corrects the stored sum by the batch's mean change since its rows were stored,
times the number of rows not yet refreshed in this pass (see :meth:`DCMH._balance_offset`); it assumes
those rows are as old as the batch's, which holds under one permutation per epoch (the sampler it was
made for). ``stale`` uses the stored rows as they are. ``batch``: ``n / B`` times the batch sum (no lag, no
filtering). All estimate the same quantity; with the stored rows equal to the network's outputs they
coincide.

Data-parallel training (``resources.num_workers > 1``, pipeline/train/distributed.py): not in the paper or
the authors' code. F/G rows are copied to every rank after each step (``distributed_step_buffers``), and the
balance estimate uses the global batch's sums over the ranks (``_global_balance_f1``), so each rank's
gradient is its share of the 1-worker gradient; the logged balance term is shared out among the ranks
(``shared_term``). 2 workers match 1 worker to float summation order (tests/test_distributed.py). With
``hard_pairs`` (per-item losses) several workers are refused by the loop.
"""

from __future__ import annotations

import logging

from typing import Literal

import torch
from pydantic import Field

from methods.base import DataInfo, HashMethod, LayerInit, MethodParams, TrainData
from methods.losses import bit_balance_loss, pairwise_nll, quantization_loss, similarity_from_labels
from methods.nets import build_encoder
from methods.nets.cnnf import CNNF_PAPER_IMAGE
from methods.registry import register_method
from pipeline.core.errors import MethodError

log = logging.getLogger(__name__)


def sign_pm1(x: torch.Tensor) -> torch.Tensor:
    """Sign with the project's convention: ``x >= 0 -> +1``, else ``-1`` (float)."""
    return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))


def dcmh_objective(
    f: torch.Tensor, g: torch.Tensor, b: torch.Tensor, s: torch.Tensor, gamma: float = 1.0, eta: float = 1.0
) -> torch.Tensor:
    """The full DCMH objective J (Jiang & Li, CVPR 2017, Sec. 3.2) as a plain sum; ``f, g, b``: (n, K), ``s``: (n, n)."""
    return (
        pairwise_nll(f, g, s, scale=0.5, reduction="sum")
        + gamma * (quantization_loss(b, f) + quantization_loss(b, g))
        + eta * (bit_balance_loss(f) + bit_balance_loss(g))
    )


class DCMHParams(MethodParams):
    """DCMH hyperparameters (defaults from the paper where it gives one)."""

    gamma: float = Field(1.0, ge=0, description="weight of ||B-F||^2 + ||B-G||^2 (paper: gamma = 1)")
    eta: float = Field(1.0, ge=0, description="weight of the bit-balance terms ||F^T 1||^2 + ||G^T 1||^2 (paper: eta = 1)")
    image_backbone: str = Field("auto", description="'auto' (MLP on features, small CNN on pixels), 'mlp', 'small_cnn', 'cnnf' (the papers' CNN-F), 'efficientnet_lite0' or a torchvision model name")
    text_backbone: str = Field("auto", description="'auto' / 'mlp' (bag-of-words or text features)")
    image_hidden: tuple[int, ...] = Field((4096,), description="hidden widths of the image MLP head (CNN-F's fc layers are 4096 wide)")
    text_hidden: tuple[int, ...] = Field((8192,), description="hidden widths of the text MLP (paper: BoW -> 8192 -> K)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout after every hidden layer of the MLP heads")
    image_weights: str | None = Field(None, description="pretrained weights of the image backbone: a weights entry (e.g. cnnf, resnet50; `hashbench fetch-weights`) or a local state_dict file; none = random init (tagged)")
    normalize: bool = Field(True, description="divide the batch objective by batch_size * n_train (see module docstring)")
    balance_f1: Literal["auto", "drift", "stale", "batch"] = Field(
        "auto",
        description="estimate of the full-set F^T 1 in the balance gradient 2 eta F^T 1: auto (stale under SGD, drift under "
        "Adam/AdamW; see the module docstring), stored rows corrected by the batch's drift, stored rows as they are "
        "(the authors' code), or n/B times the batch sum",
    )
    layer_init: LayerInit = Field(
        LayerInit(scheme="normal", std=0.01), description="encoder initialisation (authors' code: 0.01 * randn for weights and biases)"
    )
    init: Literal["forward", "random"] = Field(
        "forward",
        description="initial F, G buffers: one forward pass of the untrained nets over TrainData.batches (N(0, 1) draws "
        "when the loop gives no batches), or N(0, 1) draws as in the authors' code",
    )


@register_method
class DCMH(HashMethod):
    """Deep Cross-Modal Hashing with the paper's alternating optimisation (image pass, text pass, closed-form B)."""

    name = "dcmh"
    modalities = ("image", "text")
    input_kinds = frozenset({"features", "pixels", "bow"})
    Params = DCMHParams
    # F/G rows synchronised after every step, the balance estimate from sums over the ranks, B = sign(F + G) broadcast
    supports_distributed = True
    paper = "Q.-Y. Jiang and W.-J. Li. Deep Cross-Modal Hashing. CVPR 2017."
    per_item_term = "likelihood"  # training_step's "per_item": each batch row's likelihood part
    inter_modal_term = "likelihood"  # the pairwise likelihood couples F and G
    #: the authors' code's training recipe (sources in the module docstring); epochs are the suite's
    train_defaults = {
        "batch_size": 128,
        "sampler": "random_batches",
        "optimizer": {"name": "sgd", "lr": 10**-1.5, "momentum": 0.0, "weight_decay": 0.0},
        "lr_schedule": {"name": "linear", "final_lr": 1e-6},
    }
    #: the paper's network (ImageNet CNN-F, hash layer for fc8) and the demos' 500 epochs (module docstring)
    paper_setup = {"params": CNNF_PAPER_IMAGE, "train": {"epochs": 500}}

    def __init__(self, params: DCMHParams, info: DataInfo, bits: int) -> None:
        super().__init__(params, info, bits)
        if info.modalities["text"].kind == "pixels":
            raise MethodError(f"dcmh: text modality of dataset {info.dataset!r} is pixels; expected bow or features")
        p = params
        self.image_net = build_encoder(
            info.modalities["image"], bits, p.image_backbone, p.image_hidden, p.dropout, weights=p.image_weights
        )
        self.text_net = build_encoder(info.modalities["text"], bits, p.text_backbone, p.text_hidden, p.dropout)
        n = int(info.n_train)
        # Whole-training-set state (rows = training items in the order of batch["index"]); persistent so a
        # checkpoint restores the alternating optimisation exactly.
        self.register_buffer("F_buf", torch.zeros(n, bits))
        self.register_buffer("G_buf", torch.zeros(n, bits))
        self.register_buffer("B_buf", torch.zeros(n, bits))
        self.register_buffer("train_labels", torch.zeros(n, int(info.n_classes)))
        # rows refreshed so far in the current pass, per phase (for balance_f1="drift"); reset every epoch
        self._visited: dict[str, torch.Tensor] = {}
        self.balance_mode: str | None = None  # the estimator in use (balance_f1 with 'auto' resolved by the optimiser)

    # -- hooks -----------------------------------------------------------------------------------
    def configure_optimizers(self, make_optimizer) -> dict[str, torch.optim.Optimizer]:
        opts = {"image": make_optimizer(self.image_net.parameters()), "text": make_optimizer(self.text_net.parameters())}
        self._resolve_balance_f1(opts.values())
        return opts

    def _resolve_balance_f1(self, optimizers) -> str:
        """The balance estimator in use: ``balance_f1``, or for ``auto`` ``stale`` under plain SGD and ``drift``
        under any other (adaptive) optimiser (module docstring: the estimator must match the optimiser)."""
        mode = getattr(self.params, "balance_f1", "drift")
        if mode == "auto":
            opts = list(optimizers)
            mode = "stale" if opts and all(isinstance(o, torch.optim.SGD) for o in opts) else "drift"
        self.balance_mode = mode
        return mode

    def provenance_tags(self) -> dict[str, str]:
        tags = super().provenance_tags()
        if getattr(self.params, "eta", 0) > 0 and getattr(self, "balance_mode", None):
            tags["balance_f1"] = self.balance_mode + (" (auto)" if self.params.balance_f1 == "auto" else "")
        return tags

    def phases(self, epoch: int) -> list[str]:
        return ["image", "text"]

    def representation_inputs(self) -> dict[str, torch.nn.Module]:
        return {"image": self.image_net.head, "text": self.text_net.head}  # the MLP heads take the trunks' features

    @torch.no_grad()
    def on_train_start(self, data: TrainData) -> None:
        self.store_train_labels(data.labels)
        if self.params.init == "forward" and data.batches is not None:
            was_training = self.training
            self.eval()
            seen = torch.zeros(self.F_buf.shape[0], dtype=torch.bool, device=self.F_buf.device)
            for batch in data.batches():
                idx = batch["index"].to(self.F_buf.device)
                self.F_buf[idx] = self.image_net(batch["image"].to(self.F_buf.device)).float()
                self.G_buf[idx] = self.text_net(batch["text"].to(self.F_buf.device)).float()
                seen[idx] = True
            self.train(was_training)
            if not bool(seen.all()):
                raise MethodError(
                    f"dcmh: TrainData.batches of dataset {self.info.dataset!r} covered {int(seen.sum())} of {seen.numel()} training items"
                )
        else:
            self.F_buf.normal_()
            self.G_buf.normal_()
        self.B_buf.copy_(sign_pm1(self.F_buf + self.G_buf))
        self._visited = {}

    def _phase_io(self, phase: str, batch: dict[str, torch.Tensor]):
        """(network, its own output buffer, the other modality's buffer, its input) for an alternating phase."""
        if phase == "image":
            return self.image_net, self.F_buf, self.G_buf, batch["image"]
        if phase == "text":
            return self.text_net, self.G_buf, self.F_buf, batch["text"]
        raise MethodError(f"{self.name}: unknown phase {phase!r}; phases are 'image' and 'text'")

    def distributed_loss_scale(self, local_n: int, global_n: int) -> float:
        return local_n / global_n if self.params.normalize else 1.0  # normalize: the sums are divided by the batch size

    def distributed_step_buffers(self, phase: str) -> tuple[str, ...]:
        # later steps of the pass read the stored rows (balance estimate; PRDH's intra-modal pairs)
        return ("F_buf",) if phase == "image" else ("G_buf",)

    def training_step(self, batch: dict[str, torch.Tensor], phase: str) -> dict[str, torch.Tensor]:
        """One mini-batch of phase (a) ``"image"`` or (b) ``"text"`` of Algorithm 1.

        The returned terms are the weighted contributions to ``loss`` (they sum to it), each divided
        by ``batch_size * n_train`` when ``normalize`` is on.
        """
        net, own, other, x = self._phase_io(phase, batch)
        idx = batch["index"]
        out = net(x)
        s = similarity_from_labels(batch["labels"], self.train_labels)
        # Theta of the batch against ALL training items of the other modality (the paper's sum over j).
        nll_rows = pairwise_nll(out, other, s, scale=0.5, reduction="rows")
        nll = nll_rows.sum()
        quant = quantization_loss(self.B_buf[idx], out, reduction="sum")
        # ||F^T 1||^2 over the whole training set: the batch rows are live, the others come from the buffer.
        offset = self._balance_offset(phase, idx, out.detach().to(own.dtype), own)
        bal = bit_balance_loss(out, offset=offset)
        norm = float(out.shape[0] * own.shape[0]) if self.params.normalize else 1.0
        terms = {
            "likelihood": nll / norm,
            "quantization": self.params.gamma * quant / norm,
            "balance": self.shared_term(self.params.eta * bal / norm, out.shape[0]),
        }
        # Algorithm 1: the stored column F_{*i} (G_{*i}) is the forward output of this iteration.
        with torch.no_grad():
            own[idx] = out.detach().to(own.dtype)
        out_terms = {"loss": terms["likelihood"] + terms["quantization"] + terms["balance"], **terms}
        if self.per_item_requested:  # per-item parts of the likelihood, for the loop's hard-pair plug-in
            out_terms["per_item"] = nll_rows / norm
        return out_terms

    @torch.no_grad()
    def _balance_offset(self, phase: str, idx: torch.Tensor, out: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
        """``offset`` such that ``out.sum(0) + offset`` estimates the current full-set column sum ``F^T 1``.

        ``stale``: the stored rows of every item not in the batch (what the authors' code does); under
        Adam the stored sum lags the network by up to one pass and the balance gradient overshoots
        (measured: bit means oscillate and training collapses to random-code mAP). ``drift``: the stored
        sum plus the batch's mean change since its rows were stored, times the number of rows not yet
        refreshed in this pass (they are as old as the batch's rows); this removes the lag of the common
        mode at the cost of a little sampling noise. ``batch``: ``n / B`` times the batch sum.
        """
        n, bsz = own.shape[0], out.shape[0]
        mode = getattr(self, "balance_mode", None) or self._resolve_balance_f1([])
        if self.shard_info is not None:
            return self._global_balance_f1(mode, phase, idx, out, own) - out.sum(dim=0)
        if mode == "stale":
            return own.sum(dim=0) - own[idx].sum(dim=0)
        if mode == "batch":
            return (n / bsz - 1.0) * out.sum(dim=0)
        visited = self._visited.setdefault(phase, torch.zeros(n, dtype=torch.bool, device=own.device))
        # rows not refreshed yet in this pass, the batch's own rows included (kept on device: no sync)
        n_unvisited = (~visited).sum() + visited[idx].sum()
        drift = (out - own[idx]).sum(dim=0)
        f1 = own.sum(dim=0) + drift * (n_unvisited.to(own.dtype) / bsz)
        visited[idx] = True
        return f1 - out.sum(dim=0)

    @torch.no_grad()
    def _global_balance_f1(self, mode: str, phase: str, idx: torch.Tensor, out: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
        """The estimate of ``F^T 1`` that one worker computes from the whole global batch, on a data-parallel
        rank: the same formulas with the batch sums summed over the ranks (every rank's stored rows are the
        1-worker rows, :meth:`distributed_step_buffers`), identical on every rank."""
        n = own.shape[0]
        gidx = self.shard_info.global_index.to(own.device)
        bsz = int(gidx.shape[0])
        live = self.global_sum(out.sum(dim=0))
        if mode == "batch":
            return (n / bsz) * live
        stored = self.global_sum(own[idx].sum(dim=0))
        if mode == "stale":
            return own.sum(dim=0) - stored + live
        visited = self._visited.setdefault(phase, torch.zeros(n, dtype=torch.bool, device=own.device))
        n_unvisited = (~visited).sum() + visited[gidx].sum()
        f1 = own.sum(dim=0) + (live - stored) * (n_unvisited.to(own.dtype) / bsz)
        visited[gidx] = True
        return f1

    @torch.no_grad()
    def on_epoch_end(self, epoch: int, data: TrainData) -> dict[str, float]:
        """Step (c): ``B = sign(gamma (F + G))``, i.e. ``sign(F + G)`` for gamma > 0 (ties -> +1)."""
        self._visited = {}
        new_b = sign_pm1(self.F_buf + self.G_buf)
        changed = float((new_b != self.B_buf).float().mean())
        self.B_buf.copy_(new_b)
        return {"b_changed_fraction": changed}

    def encode(self, batch: dict[str, torch.Tensor], modality: str) -> torch.Tensor:
        if modality == "image":
            return self.image_net(batch["image"])
        if modality == "text":
            return self.text_net(batch["text"])
        raise MethodError(f"dcmh: cannot encode modality {modality!r}; it has 'image' and 'text'")
