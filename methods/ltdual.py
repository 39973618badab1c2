"""LTDual: the long-tail dual-stream hashing model of paper 004, image hashing.

Paper: Y. Li, Z. Wang, "Deep Hash Retrieval Model Based on Improved Swin Transformer" (基于改进Swin
Transformer的深度哈希检索模型), Donghua University, 2025 (/work/shared/papers/004_0c8e3834d50d3093.txt).
Its losses are those of self-distilled hashing, DHD (Y. K. Jang et al., "Deep Hash Distillation for
Image Retrieval", ECCV 2022), which paper 004 adopts without giving constants; where paper 004 is
silent, the defaults below come from DHD's released training script (``main_DHD.py`` argument
defaults) and are marked "DHD".

Model (Sec. 2.1): an EfficientNet-B3 (local) and a Swin Transformer (global) stream; their pooled
features are scaled by learnable scalars alpha and beta and concatenated (Eq. 5); a batch-norm hash
layer gives zero-mean pre-activations and ``h = tanh(.)`` (Sec. 2; see
:class:`methods.nets.dual_stream.ZeroMeanHashLayer`). Ablation (Table 3): ``backbone`` replaces the dual
stream by ``alexnet``, ``resnet50`` or ``vgg16`` (or any torchvision model at full size); ``small_cnn``
(the shared small CNN CSQ uses on pixels) is a diagnostic that isolates the losses from the trunk. On
``features`` input (frozen, cached backbone features) the trunk is the identity and only the hashing
head trains.

Objective per mini-batch (Eq. 12): ``L = L_HP(h_T) + lambda1 * L_sdH(h_T, h_S) + lambda2 * L_bce-Q(h_T)``
with ``h_T`` the code of a weakly augmented view (teacher) and ``h_S`` of a strongly augmented view
(student) through the same weights (Siamese, Sec. 2): L_HP is the cross-entropy of
``softmax(cos(h_T, proxies) / tau)`` against the labels with one trainable proxy per class (Eqs. 8-9);
L_sdH = 1 - cos(h_T, h_S) with the teacher detached (Eq. 7; detaching is DHD's); L_bce-Q is the BCE of
the Gaussian likelihoods ``g(h) = exp(-(h -+ m)^2 / (2 sigma^2))`` against the sign targets (Eqs. 10-11).
See :mod:`methods.losses.longtail`.

Augmentation (Sec. 2): two groups with the same transforms and hyperparameters, the difficulty set by
scaling each transform's occurrence probability: weak = ``weak_scale``, strong = ``strong_scale``
(DHD: 0.5 for non-AlexNet encoders and 1.0). It runs on the tensor batch inside the method (the
shared loop hands a plain batch): random resized crop (scale [0.5, 1], p 1.0 x s), horizontal flip
(p 0.5 x s, off with ``hflip: false``), brightness/contrast jitter (+-0.4, p 0.8 x s), grayscale
(p 0.2 x s); on ``features`` input: Gaussian noise (0.1 x feature std, p 0.8 x s) and feature dropout
(rate 0.1, p 0.8 x s) instead. Base probabilities are DHD's/SimCLR's usual ones; ours otherwise.

Defaults and sources:
* ``lambda1 = 0.1``, ``lambda2 = 0.1``, ``tau = 0.2``, ``sigma = 0.5``, ``m = 1``: DHD (paper 004 gives none).
* Adam, lr 1e-3, cosine annealing over 50 epochs, batch 32: paper 004 Sec. 3.2 (the optimizer and lr are
  ``train.optimizer`` settings; the cosine schedule is applied here per epoch over ``cosine_epochs``,
  by default ``train`` = the trial's own number of epochs, which the loop passes in
  ``TrainData.extras["epochs"]``; so the factor ``0.5 (1 + cos(pi e / T))`` of epoch ``e`` never reaches 0
  before the run ends, whatever the suite's epochs).
* proxies: Xavier-uniform init with tanh gain (DHD).
* Paper setup (``paper_setup``, suites with ``network: paper``): the dual stream with ImageNet weights
  (Sec. 3.2: "pretrained Swin Transformer, backbone weights trained on ImageNet"; ``efficientnet_weights:
  efficientnet_b3_imagenet1k_v1``, ``swin_weights: swin_t_imagenet1k_v1``), ``input_size: 224``, and the
  recipe of Sec. 3.2 as loop settings: batch 32, 50 epochs, Adam lr 1e-3 (the cosine stays this method's,
  over the trial's epochs). The 300-px EfficientNet-B3 input is not reached: both streams see 224 px.

Deviations / reconstructions (stated, not hidden):
* Swin-T instead of the (unnamed, D = 128 suggests Swin-B) Swin variant; the paper's 300 px / 224 px
  inputs are reached with ``input_size`` (resize inside the method); CPU runs use native sizes.
* The final ranking of Sec. 2 ("the classifier's confidence is combined with the Hamming distance")
  is not specified further and is not implemented: retrieval uses the Hamming distance of sign(h) only,
  as every other method here.
* ``backbone_lr_mult`` (1.0 = paper 004's single lr; DHD uses 0.05 for a pretrained backbone).
* The batch-norm hash layer has no shift parameter (so the codes stay zero-mean) but a per-bit scale.
"""

from __future__ import annotations

import logging
import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from methods.base import DataInfo, HashMethod, MethodParams, TrainData
from methods.losses.longtail import bce_quantization_loss, hash_proxy_loss, self_distillation_loss
from methods.nets.dual_stream import DualStream, ZeroMeanHashLayer, build_trunk
from methods.nets.encoders import SmallCNN, mlp
from methods.registry import register_method, register_variant
from pipeline.core.errors import MethodError

log = logging.getLogger(__name__)


class LTDualParams(MethodParams):
    """LTDual hyperparameters (sources in the module docstring)."""

    backbone: str = Field("auto", description="'dual' (EfficientNet-B3 + Swin), a torchvision model name for the ablation "
                          "(alexnet, resnet50, vgg16, ...), 'small_cnn' (CSQ's pixel trunk, a diagnostic), 'features' (identity trunk on cached "
                          "features); 'auto' = dual on pixels, features on features")
    size: Literal["full", "tiny"] = Field("full", description="'full' torchvision architectures, 'tiny' scaled-down dual stream for CPU tests")
    efficientnet_weights: str | None = Field(None, description="local state_dict of torchvision efficientnet_b3 (else the torch hub cache, else random init)")
    swin_weights: str | None = Field(None, description="local state_dict of torchvision swin_t (else the torch hub cache, else random init)")
    weights: str | None = Field(None, description="local state_dict of the single ablation backbone (else hub cache, else random init)")
    input_size: int | None = Field(None, ge=8, description="resize images to this size before the trunk (paper: 300 / 224); None = native")
    hidden: tuple[int, ...] = Field((), description="MLP widths between the trunk features and the hash layer (DHD: none)")
    freeze_backbone: bool = Field(False, description="keep the trunk fixed (eval mode, no gradients): only alpha, beta, hash layer, proxies train")
    backbone_lr_mult: float = Field(1.0, gt=0, description="lr of the trunk relative to the head (paper 004: one lr = 1.0; DHD: 0.05)")
    lambda1: float = Field(0.1, ge=0, description="weight of the self-distillation loss L_sdH (DHD)")
    lambda2: float = Field(0.1, ge=0, description="weight of the BCE quantization loss L_bce-Q (DHD)")
    tau: float = Field(0.2, gt=0, description="temperature of the hash-proxy softmax (DHD)")
    sigma: float = Field(0.5, gt=0, description="std of the Gaussian bit-likelihood estimator (DHD)")
    m: float = Field(1.0, gt=0, description="mean of the Gaussian estimator: g+ at +m, g- at -m (DHD)")
    weak_scale: float = Field(0.5, ge=0, le=1, description="occurrence-probability scale of the teacher's (weak) augmentation (DHD)")
    strong_scale: float = Field(1.0, ge=0, le=1, description="occurrence-probability scale of the student's (strong) augmentation (DHD)")
    hflip: bool = Field(True, description="random horizontal flips in the augmentation (off for digits)")
    crop_scale: float = Field(0.5, gt=0, le=1, description="smallest area fraction of the random resized crop")
    cosine_epochs: int | Literal["train"] | None = Field(
        "train", description="cosine-annealing period in epochs: 'train' = the trial's number of epochs (paper 004: cosine annealing "
        "over its 50-epoch run), an integer (clamped at the end), or None = constant lr"
    )
    seed: int | None = Field(None, description="seed of the augmentation RNG; None = drawn from the (trial-seeded) global torch RNG")


@register_method
class LTDual(HashMethod):
    """Dual-stream (EfficientNet-B3 + Swin) long-tail hashing with self-distillation, hash proxies and BCE-Q."""

    name = "ltdual"
    modalities = ("image",)
    input_kinds = frozenset({"features", "pixels"})
    Params = LTDualParams
    supports_distributed = True  # per-item mean losses: sharded global batches + gradient all-reduce
    #: paper 004 Sec. 3.2's pretrained dual stream and recipe (module docstring)
    paper_setup = {
        "params": {
            "backbone": "dual",
            "efficientnet_weights": "efficientnet_b3_imagenet1k_v1",
            "swin_weights": "swin_t_imagenet1k_v1",
            "input_size": 224,
        },
        "train": {"epochs": 50, "batch_size": 32, "optimizer": {"name": "adam", "lr": 1e-3}},
    }
    paper = "Y. Li, Z. Wang. Deep Hash Retrieval Model Based on Improved Swin Transformer. 2025 (losses: Jang et al., DHD, ECCV 2022)."

    def __init__(self, params: LTDualParams, info: DataInfo, bits: int) -> None:
        super().__init__(params, info, bits)
        p = params
        spec = info.modalities["image"]
        self.kind = spec.kind
        backbone = p.backbone
        if backbone == "auto":
            backbone = "dual" if spec.kind == "pixels" else "features"
        if backbone == "features" and spec.kind != "features":
            raise MethodError(f"ltdual: backbone 'features' needs features input, dataset {info.dataset!r} has {spec.kind!r}")
        if backbone != "features" and spec.kind != "pixels":
            raise MethodError(f"ltdual: backbone {backbone!r} needs pixels, dataset {info.dataset!r} has {spec.kind!r} (use backbone 'features')")
        self.backbone_name = backbone
        status: dict[str, str] = {}
        if backbone == "features":
            self.trunk: torch.nn.Module = torch.nn.Flatten()
            trunk_dim = spec.dim
            status["trunk"] = "none (cached features)"
        elif backbone == "dual":
            c = spec.shape[0]
            local, s_local = build_trunk("efficientnet_b3", p.size, c, p.efficientnet_weights)
            glob, s_glob = build_trunk("swin_t", p.size, c, p.swin_weights)
            self.trunk = DualStream(local, local.out_dim, glob, glob.out_dim)
            trunk_dim = self.trunk.out_dim
            status["efficientnet_b3"], status["swin_t"] = s_local, s_glob
        elif backbone == "small_cnn":  # diagnostic: the shared small CNN that CSQ uses on pixels (same trunk, other losses)
            cnn = SmallCNN(*spec.shape)
            self.trunk, trunk_dim = cnn, cnn.out_dim
            status["small_cnn"] = "none (random init, no pretrained weights exist)"
        else:
            if p.size == "tiny":
                raise MethodError(f"ltdual: size 'tiny' exists only for the dual stream, not backbone {backbone!r}")
            tv, s = build_trunk(backbone, "full", spec.shape[0], p.weights)
            self.trunk, trunk_dim = tv, tv.out_dim
            status[backbone] = s
        self.weights_status = status
        if p.freeze_backbone:
            for q in self.trunk.parameters():
                q.requires_grad_(False)
            if isinstance(self.trunk, DualStream):  # the fusion weights still learn
                self.trunk.alpha.requires_grad_(True)
                self.trunk.beta.requires_grad_(True)
        self.neck = mlp(trunk_dim, p.hidden[:-1], p.hidden[-1]) if p.hidden else torch.nn.Identity()
        self.hash_layer = ZeroMeanHashLayer(p.hidden[-1] if p.hidden else trunk_dim, self.bits)
        proxies = torch.empty(int(info.n_classes), self.bits)
        torch.nn.init.xavier_uniform_(proxies, gain=torch.nn.init.calculate_gain("tanh"))
        self.proxies = torch.nn.Parameter(proxies)
        seed = p.seed if p.seed is not None else int(torch.randint(0, 2**62, (1,)).item())
        self._aug_gen = torch.Generator().manual_seed(seed)
        self._optimizers: list[torch.optim.Optimizer] = []
        self._cosine_period: int | None = None
        for k, v in status.items():
            log.info("ltdual: %s weights: %s", k, v)

    # -- provenance -----------------------------------------------------------------------------------
    @property
    def pretrained(self) -> bool:
        """True when every pretrainable stream loaded ImageNet weights (False for any random init)."""
        vals = [v for v in self.weights_status.values() if not v.startswith("none")]
        return bool(vals) and all(v.startswith("pretrained") for v in vals)

    def provenance_tags(self) -> dict[str, str]:
        """``weights.<stream>`` tags saying where each stream's weights came from (or that it is randomly initialised)."""
        return {**super().provenance_tags(), **{f"weights.{k}": v for k, v in self.weights_status.items()}}

    # -- hooks ----------------------------------------------------------------------------------------
    def configure_optimizers(self, make_optimizer) -> dict[str, torch.optim.Optimizer]:
        trunk_ids = {id(q) for q in self.trunk.parameters()}
        fusion = [self.trunk.alpha, self.trunk.beta] if isinstance(self.trunk, DualStream) else []
        fusion_ids = {id(q) for q in fusion}
        head = [q for q in self.parameters() if id(q) not in trunk_ids or id(q) in fusion_ids]
        body = [q for q in self.trunk.parameters() if id(q) not in fusion_ids and q.requires_grad]
        opt = make_optimizer(head)
        if body:
            opt.add_param_group({"params": body, "lr": opt.param_groups[0]["lr"] * self.params.backbone_lr_mult})
        for g in opt.param_groups:
            g["base_lr"] = g["lr"]
        self._optimizers = [opt]
        return {"joint": opt}

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.params.freeze_backbone:
            self.trunk.eval()  # frozen BN statistics too
        return self

    def on_train_start(self, data: TrainData) -> None:
        if data.labels.shape[1] != self.proxies.shape[0]:
            raise MethodError(f"ltdual: dataset {self.info.dataset!r} has {data.labels.shape[1]} label columns but {self.proxies.shape[0]} proxies")
        if not self.pretrained and self.backbone_name != "features":
            log.warning("ltdual: training WITHOUT ImageNet weights: %s", self.weights_status)
        self._cosine_period = self.cosine_period(data)

    def cosine_period(self, data: TrainData | None) -> int | None:
        """The cosine period in epochs: ``cosine_epochs``, or the trial's epochs (``TrainData.extras``) for ``train``."""
        t = self.params.cosine_epochs
        if t == "train":
            epochs = (data.extras.get("epochs") if data is not None else None) or getattr(self, "_cosine_period", None)
            if not epochs:
                raise MethodError("ltdual: cosine_epochs 'train' needs the trial's epochs (TrainData.extras['epochs'], set by the loop)")
            return int(epochs)
        return t

    def on_epoch_end(self, epoch: int, data: TrainData) -> dict[str, float]:
        out = {"pretrained": float(self.pretrained)}
        if isinstance(self.trunk, DualStream):
            out.update(alpha=float(self.trunk.alpha.detach()), beta=float(self.trunk.beta.detach()))
        t = self._cosine_period if self.params.cosine_epochs == "train" else self.params.cosine_epochs
        if t:
            factor = 0.5 * (1.0 + math.cos(math.pi * min(epoch + 1, t) / t))
            for opt in self._optimizers:
                for g in opt.param_groups:
                    g["lr"] = g["base_lr"] * factor
            out["lr_factor"] = factor
        return out

    # -- augmentation ---------------------------------------------------------------------------------
    def _rand(self, n: int, device) -> torch.Tensor:
        return torch.rand(n, generator=self._aug_gen).to(device)

    def augment(self, x: torch.Tensor, scale: float) -> torch.Tensor:
        """One augmented view of the batch; every transform occurs with its base probability times ``scale``."""
        if scale <= 0:
            return x
        if x.dim() == 2:  # cached features
            n, d = x.shape
            std = x.std(dim=0, keepdim=True).clamp_min(1e-6) if n > 1 else x.abs().mean().clamp_min(1e-6)
            noise = torch.randn(x.shape, generator=self._aug_gen).to(x.device) * 0.1 * std
            x = x + noise * (self._rand(n, x.device) < 0.8 * scale).float()[:, None]
            keep = (torch.rand(x.shape, generator=self._aug_gen).to(x.device) >= 0.1).float() / 0.9
            use = (self._rand(n, x.device) < 0.8 * scale).float()[:, None]
            return x * (use * keep + (1 - use))
        n, c, h, w = x.shape
        dev = x.device
        # random resized crop (affine resampling to the same size)
        do = (self._rand(n, dev) < 1.0 * scale).float()
        area = self.params.crop_scale + (1 - self.params.crop_scale) * self._rand(n, dev)
        logr = (self._rand(n, dev) * 2 - 1) * math.log(4 / 3)
        sx = torch.sqrt(area * torch.exp(logr)).clamp(max=1.0)
        sy = torch.sqrt(area / torch.exp(logr)).clamp(max=1.0)
        sx, sy = do * sx + (1 - do), do * sy + (1 - do)
        tx = (self._rand(n, dev) * 2 - 1) * (1 - sx)
        ty = (self._rand(n, dev) * 2 - 1) * (1 - sy)
        if self.params.hflip:
            flip = (self._rand(n, dev) < 0.5 * scale).float()
            sx = sx * (1 - 2 * flip)
        theta = torch.zeros(n, 2, 3, device=dev, dtype=x.dtype)
        theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx, tx, sy, ty
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        # brightness / contrast jitter
        do = (self._rand(n, dev) < 0.8 * scale).float().view(n, 1, 1, 1)
        b = 1 + (self._rand(n, dev) * 2 - 1).view(n, 1, 1, 1) * 0.4
        k = 1 + (self._rand(n, dev) * 2 - 1).view(n, 1, 1, 1) * 0.4
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        jittered = ((x * b - mean * b) * k + mean * b).clamp(0, 1)
        x = do * jittered + (1 - do) * x
        if c == 3:
            do = (self._rand(n, dev) < 0.2 * scale).float().view(n, 1, 1, 1)
            grey = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).expand(-1, 3, -1, -1)
            x = do * grey + (1 - do) * x
        return x

    # -- forward --------------------------------------------------------------------------------------
    def code(self, x: torch.Tensor) -> torch.Tensor:
        """Continuous code h = tanh(zero-mean BN hash layer(trunk features)) of an image batch."""
        if self.kind == "pixels" and self.params.input_size and x.shape[-1] != self.params.input_size:
            x = F.interpolate(x, size=(self.params.input_size, self.params.input_size), mode="bilinear", align_corners=False)
        return self.hash_layer(self.neck(self.trunk(x)))

    def training_step(self, batch: dict[str, torch.Tensor], phase: str) -> dict[str, torch.Tensor]:
        """L_HP(h_T) + lambda1 L_sdH(h_T, h_S) + lambda2 L_bce-Q(h_T) (paper 004 Eq. 12); terms are the weighted parts."""
        p = self.params
        x = batch["image"]
        h_t = self.code(self.augment(x, p.weak_scale))
        h_s = self.code(self.augment(x, p.strong_scale))
        hp = hash_proxy_loss(h_t, self.proxies, batch["labels"], p.tau)
        sd = p.lambda1 * self_distillation_loss(h_s, h_t)
        q = p.lambda2 * bce_quantization_loss(h_t, m=p.m, sigma=p.sigma)
        return {"loss": hp + sd + q, "hash_proxy": hp, "self_distill": sd, "bce_quant": q}

    def encode(self, batch: dict[str, torch.Tensor], modality: str) -> torch.Tensor:
        if modality != "image":
            raise MethodError(f"ltdual: encodes images only, not {modality!r}")
        return self.code(batch["image"])


# variants (listed by `hashbench list`; a suite names them like methods)
register_variant('ltdual-tiny', 'ltdual', "the dual stream scaled down for CPU runs (digits: no flips); not paper 004's network", size='tiny', hflip=False)
register_variant('ltdual-alexnet', 'ltdual', 'backbone ablation (paper 004, Table 3): AlexNet', backbone='alexnet')
register_variant('ltdual-resnet50', 'ltdual', 'backbone ablation (paper 004, Table 3): ResNet-50', backbone='resnet50')
register_variant('ltdual-vgg16', 'ltdual', 'backbone ablation (paper 004, Table 3): VGG-16', backbone='vgg16')
