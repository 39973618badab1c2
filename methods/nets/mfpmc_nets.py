"""Networks of MFPMC (Deng et al., Laser & Optoelectronics Progress 59(24), 2022; paper 001): the image
and text multi-scale fusion modules IMFM / TMFM (Tables 1 and 2), CNN-F (Chatfield et al., BMVC 2014),
the modality discriminator D of eq. (1) and a gradient-reversal layer.

Multi-scale fusion (our reconstruction; the paper gives the branches, not the fusion):

* each branch is an average pooling with kernel = stride = s (Tables 1/2) followed by a 1x1 convolution,
  and its output is resized back to the input size (bilinear / linear interpolation, as in PSPNet and
  SSAH, which the paper cites as the models the modules follow) so the branches can be fused;
* ``fusion="concat"``: the input and the resized branches are concatenated (SSAH's text module); for
  pixels a further 1x1 convolution maps the concatenation back to the image's channels, so CNN-F (and
  its pretrained first layer) still sees a C-channel image;
* ``fusion="sum"``: input + sum of the resized branches; the branch convolutions start at zero so the
  fused input starts equal to the input (what a pretrained CNN-F expects); their gradients are not zero
  (d out / d w = the pooled input), so they learn;
* pool sizes larger than the input are clipped to the input's size (a 10-d LDA text vector gets windows
  10, 10, 10, 10, 5: the first four are its global mean), pooling windows that run past the end are
  averaged over the values they cover (``ceil_mode``);
* on feature vectors (the embedded Wikipedia: 128-d SIFT BoW, 10-d LDA) the modules pool the vector as a
  1-channel 1-D signal, exactly as TMFM pools a bag-of-words (Table 2's 1 x s windows); IMFM on pixels is
  the 2-D form of Table 1 (s x s windows on the original image, before CNN-F).

CNN-F layers (Chatfield et al. 2014, Table 1): conv1 64x11x11 stride 4 + LRN + 3x3/2 max-pool; conv2
256x5x5 pad 2 + LRN + pool; conv3-conv5 256x3x3 pad 1, pool after conv5; fc6 4096, fc7 4096 (ReLU; the
classifier fc8 is dropped). LRN: size 5, alpha 1e-4, beta 0.75, k 2 (Krizhevsky et al.'s values, which
CNN-F follows; the pretrained MatConvNet model's exact constants may differ slightly). Max-pools use
``ceil_mode`` so a 224 x 224 input gives MatConvNet's 6 x 6 x 256 before fc6. Inputs of another size are
resized to ``input_size`` (bilinear); inputs in [0, 1] are scaled to [0, 255] and the ImageNet mean
colour (123.68, 116.78, 103.94) is subtracted, as for the MatConvNet model. Weights: random init, or a
local ``state_dict`` file with this module's keys (``features.conv1.weight``, ..., ``fc7.weight``);
nothing is ever downloaded.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn.functional as F_
from torch import nn

from methods.nets.cnnf import CNNF, CNNF_MEAN_RGB, load_cnnf_weights  # noqa: F401 - CNNF lives in methods/nets/cnnf.py (shared)
from pipeline.core.types import ModalitySpec
from methods.nets.encoders import SmallCNN, mlp, torchvision_trunk
from pipeline.core.errors import MethodError

#: pool sizes of the paper's modules (Table 1: IMFM, Table 2: TMFM)
IMFM_POOLS = (5, 10, 15)
TMFM_POOLS = (50, 30, 15, 10, 5)


class MultiScaleFusion1d(nn.Module):
    """TMFM (Table 2) / IMFM on feature vectors: 1 x s average pools + 1x1 convs, resized back and fused.

    Input (B, L); output (B, (1 + n_branches) * L) for ``concat``, (B, L) for ``sum``.
    """

    def __init__(self, length: int, pool_sizes: Sequence[int], fusion: str = "concat") -> None:
        super().__init__()
        if fusion not in ("concat", "sum"):
            raise MethodError(f"multi-scale fusion: fusion must be 'concat' or 'sum', got {fusion!r}")
        if not pool_sizes or any(int(s) < 1 for s in pool_sizes):
            raise MethodError(f"multi-scale fusion: pool sizes must be positive integers, got {list(pool_sizes)}")
        self.length = int(length)
        self.fusion = fusion
        self.pool_sizes = tuple(min(int(s), self.length) for s in pool_sizes)
        self.convs = nn.ModuleList(nn.Conv1d(1, 1, kernel_size=1) for _ in self.pool_sizes)
        if fusion == "sum":
            for conv in self.convs:
                nn.init.zeros_(conv.weight)
                nn.init.zeros_(conv.bias)
        self.out_dim = self.length * (1 + len(self.pool_sizes)) if fusion == "concat" else self.length

    def branches(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The resized branch outputs, each (B, 1, L)."""
        z = x.reshape(x.shape[0], 1, -1)
        out = []
        for s, conv in zip(self.pool_sizes, self.convs):
            pooled = F_.avg_pool1d(z, kernel_size=s, stride=s, ceil_mode=True)
            out.append(F_.interpolate(conv(pooled), size=self.length, mode="linear", align_corners=False))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.reshape(x.shape[0], 1, -1)
        if z.shape[-1] != self.length:
            raise MethodError(f"multi-scale fusion: expected inputs of length {self.length}, got {tuple(x.shape)}")
        parts = self.branches(x)
        if self.fusion == "sum":
            return (z + torch.stack(parts, 0).sum(0)).flatten(1)
        return torch.cat([z, *parts], dim=1).flatten(1)


class MultiScaleFusion2d(nn.Module):
    """IMFM (Table 1): s x s average pools of the image + 1x1 convs, resized back and fused; (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, channels: int, height: int, width: int, pool_sizes: Sequence[int] = IMFM_POOLS, fusion: str = "sum") -> None:
        super().__init__()
        if fusion not in ("concat", "sum"):
            raise MethodError(f"IMFM: fusion must be 'concat' or 'sum', got {fusion!r}")
        if not pool_sizes or any(int(s) < 1 for s in pool_sizes):
            raise MethodError(f"IMFM: pool sizes must be positive integers, got {list(pool_sizes)}")
        c = int(channels)
        self.size = (int(height), int(width))
        self.fusion = fusion
        self.pool_sizes = tuple(min(int(s), min(self.size)) for s in pool_sizes)
        self.convs = nn.ModuleList(nn.Conv2d(c, c, kernel_size=1) for _ in self.pool_sizes)
        if fusion == "sum":
            for conv in self.convs:
                nn.init.zeros_(conv.weight)
                nn.init.zeros_(conv.bias)
            self.merge = None
        else:
            self.merge = nn.Conv2d(c * (1 + len(self.pool_sizes)), c, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = []
        for s, conv in zip(self.pool_sizes, self.convs):
            pooled = F_.avg_pool2d(x, kernel_size=s, stride=s, ceil_mode=True)
            parts.append(F_.interpolate(conv(pooled), size=x.shape[-2:], mode="bilinear", align_corners=False))
        if self.merge is None:
            return x + torch.stack(parts, 0).sum(0)
        return self.merge(torch.cat([x, *parts], dim=1))


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.scale * grad, None


def grad_reverse(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Gradient reversal (Ganin & Lempitsky, ICML 2015): identity forward, ``-scale * grad`` backward."""
    return _GradReverse.apply(x, float(scale))


class ModalityDiscriminator(nn.Module):
    """D of eq. (1): an MLP on a low-dimensional feature, one logit (``sigmoid`` = probability of 'image')."""

    def __init__(self, in_dim: int, hidden: Sequence[int] = (512,)) -> None:
        super().__init__()
        self.net = mlp(in_dim, hidden, 1)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.net(f).squeeze(-1)


_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "none": nn.Identity}


class FeatureNet(nn.Module):
    """``[multi-scale fusion] -> trunk -> head`` giving the low-dimensional feature ``f`` (B, feature_dim)."""

    def __init__(self, fusion: nn.Module | None, trunk: nn.Module, head: nn.Module, activation: str) -> None:
        super().__init__()
        self.fusion = fusion
        self.trunk = trunk
        self.head = head
        self.act = _ACTIVATIONS[activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fusion is not None:
            x = self.fusion(x)
        return self.act(self.head(self.trunk(x)))


def _activation(name: str) -> str:
    if name not in _ACTIVATIONS:
        raise MethodError(f"mfpmc: feature_activation must be one of {sorted(_ACTIVATIONS)}, got {name!r}")
    return name


def build_image_net(
    spec: ModalitySpec,
    feature_dim: int,
    backbone: str = "auto",
    hidden: Sequence[int] | None = None,
    imfm: bool = True,
    pools: Sequence[int] = IMFM_POOLS,
    fusion: str = "sum",
    weights: str | None = None,
    cnnf_input_size: int = 224,
    dropout: float = 0.0,
    activation: str = "relu",
) -> FeatureNet:
    """Image feature network ``F^x``: [IMFM] -> backbone -> head to ``feature_dim``.

    ``backbone``: ``auto`` (``cnnf`` on pixels, ``mlp`` on features), ``cnnf``, ``small_cnn``, ``mlp``
    (features only) or a torchvision model name (pixels; random init unless ``weights``). ``hidden``:
    widths of the MLP head between backbone and feature (None: (4096,) on features, () after a conv
    backbone, whose last layers are already fully connected).
    """
    kind = spec.kind
    name = backbone
    if name == "auto":
        name = "cnnf" if kind == "pixels" else "mlp"
    if kind == "pixels":
        if len(spec.shape) != 3:
            raise MethodError(f"mfpmc: image pixels must have shape (C, H, W), got {spec.shape}")
        c, h, w = (int(v) for v in spec.shape)
        fuse = MultiScaleFusion2d(c, h, w, pools, fusion) if imfm else None
        if weights and name in ("small_cnn", "mlp"):
            raise MethodError(f"mfpmc: image_weights is supported for cnnf and torchvision backbones, not {name!r}")
        if name == "cnnf":
            trunk: nn.Module = CNNF(c, cnnf_input_size, dropout)
            if weights:
                load_cnnf_weights(trunk, weights)
            trunk_dim = CNNF.out_dim
        elif name == "small_cnn":
            trunk = SmallCNN(c, h, w)
            trunk_dim = trunk.out_dim
        elif name == "mlp":
            trunk, trunk_dim = nn.Flatten(), c * h * w
        else:
            trunk = torchvision_trunk(name, c, weights)
            trunk_dim = trunk.out_dim
        default_hidden: tuple[int, ...] = (4096,) if name == "mlp" else ()
    elif kind == "features":
        if name != "mlp":
            raise MethodError(f"mfpmc: image modality is 'features'; backbone {backbone!r} needs pixels (use 'mlp' or 'auto')")
        if weights:
            raise MethodError("mfpmc: image_weights needs a pixel backbone (cnnf or torchvision); the image modality is features")
        fuse = MultiScaleFusion1d(spec.dim, pools, fusion) if imfm else None
        trunk, trunk_dim = nn.Flatten(), (fuse.out_dim if fuse is not None else spec.dim)
        default_hidden = (4096,)
    else:
        raise MethodError(f"mfpmc: image modality of kind {kind!r} is not supported (pixels or features)")
    head = mlp(trunk_dim, default_hidden if hidden is None else tuple(hidden), feature_dim, dropout=dropout)
    return FeatureNet(fuse, trunk, head, _activation(activation))


def build_text_net(
    spec: ModalitySpec,
    feature_dim: int,
    hidden: Sequence[int] = (4096, 4096),
    tmfm: bool = True,
    pools: Sequence[int] = TMFM_POOLS,
    fusion: str = "concat",
    dropout: float = 0.0,
    activation: str = "relu",
) -> FeatureNet:
    """Text feature network ``F^y``: [TMFM] -> feed-forward net (``hidden`` widths, then ``feature_dim``; 3 layers by default)."""
    if spec.kind not in ("bow", "features"):
        raise MethodError(f"mfpmc: text modality of kind {spec.kind!r} is not supported (bow or features)")
    fuse = MultiScaleFusion1d(spec.dim, pools, fusion) if tmfm else None
    in_dim = fuse.out_dim if fuse is not None else spec.dim
    return FeatureNet(fuse, nn.Flatten(), mlp(in_dim, tuple(hidden), feature_dim, dropout=dropout), _activation(activation))
