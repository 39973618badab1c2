"""The local-global dual-stream trunk of paper 004 (Li & Wang, "Deep Hash Retrieval Model Based on
Improved Swin Transformer", 2025, Sec. 2.1, Eq. (5)), single-stream ablation trunks, and the
zero-mean (batch-norm) hash layer.

* Local stream: EfficientNet-B3 (torchvision ``efficientnet_b3``, 1,536-d pooled features).
* Global stream: Swin Transformer (torchvision ``swin_t``, 768-d pooled features; the paper's text
  describes a Swin with D = 128 in stage 1, i.e. Swin-B, but names no variant: we take Swin-T, the
  smallest torchvision ships, and say so).
* Fusion, Eq. (5): ``F = [alpha * F_EfficientNet, beta * F_Swin]`` with learnable scalars alpha, beta
  (initialised to 1: the paper gives no initial value).
* ``size="tiny"``: the same two architectures (torchvision ``EfficientNet`` with two MBConv stages,
  ``SwinTransformer`` with patch 2, window 2, two stages) scaled down so CPU tests on 8x8 digits run
  in seconds. No pretrained weights exist for them.

Pretrained ImageNet weights (never downloaded): an explicit local ``state_dict`` file, else the
torch hub cache (``torch.hub.get_dir()/checkpoints/<torchvision file name>``) when the file is
there, else random initialisation. :func:`load_pretrained` returns a status string saying which, and
the method exposes it (``weights_status``) so that runs and the report never hide a random init.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

from methods.nets.encoders import strip_classifier, TorchvisionTrunk
from pipeline.core.errors import MethodError

log = logging.getLogger(__name__)

#: torchvision weight enums of the backbones this module can build at full size
WEIGHT_ENUMS = {
    "efficientnet_b3": "EfficientNet_B3_Weights",
    "swin_t": "Swin_T_Weights",
    "alexnet": "AlexNet_Weights",
    "resnet50": "ResNet50_Weights",
    "vgg16": "VGG16_Weights",
    "vgg16_bn": "VGG16_BN_Weights",
    "resnet18": "ResNet18_Weights",
}


def hub_cache_file(name: str) -> Path | None:
    """Where torch hub would keep the IMAGENET1K_V1 file of torchvision model ``name`` (None if unknown)."""
    import torchvision

    enum_name = WEIGHT_ENUMS.get(name)
    if enum_name is None:
        return None
    enum = getattr(torchvision.models, enum_name)
    url = enum.IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def load_pretrained(model: nn.Module, name: str, path: str | None) -> str:
    """Load ImageNet weights into ``model`` from ``path`` or the hub cache; return a status string.

    ``path`` given but missing or mismatching is an error (it was asked for explicitly); no path and
    nothing in the hub cache leaves the random init, with a warning and the status ``random-init``."""
    if path:
        src = Path(path)
        if not src.is_file():
            raise MethodError(f"backbone {name!r}: weights file {str(src)!r} does not exist")
        origin = "file"
    else:
        cached = hub_cache_file(name)
        if cached is None or not cached.is_file():
            log.warning("%s: no pretrained weights (no weights file given, %s not in the torch hub cache): RANDOM INIT", name, cached)
            return f"random-init (no file; hub cache {cached} absent)"
        src, origin = cached, "hub-cache"
    from methods.nets.weights import load_state_dict_into, read_state_dict

    load_state_dict_into(model, read_state_dict(src, f"backbone {name!r}"), src, f"backbone {name!r}")
    log.info("%s: ImageNet weights loaded from %s (%s)", name, src, origin)
    return f"pretrained ({origin}: {src})"


def _tiny_efficientnet() -> nn.Module:
    from torchvision.models.efficientnet import EfficientNet, MBConvConfig

    setting = [MBConvConfig(1, 3, 1, 16, 16, 1), MBConvConfig(6, 3, 2, 16, 24, 1)]
    return EfficientNet(setting, dropout=0.0, stochastic_depth_prob=0.0, last_channel=64)


def _tiny_swin() -> nn.Module:
    from torchvision.models.swin_transformer import SwinTransformer

    return SwinTransformer(patch_size=[2, 2], embed_dim=24, depths=[2, 2], num_heads=[2, 4], window_size=[2, 2], stochastic_depth_prob=0.0)


def build_trunk(name: str, size: str, in_channels: int, weights: str | None) -> tuple[TorchvisionTrunk, str]:
    """One stream: torchvision model ``name`` (``size`` full or tiny) without its classifier, and its weights status."""
    import torchvision

    if in_channels not in (1, 3):
        raise MethodError(f"backbone {name!r} takes 1- or 3-channel images, got {in_channels} channels")
    if size == "tiny":
        if weights:
            raise MethodError(f"backbone {name!r}: size 'tiny' has no pretrained weights; drop the weights file {weights!r}")
        builders = {"efficientnet_b3": _tiny_efficientnet, "swin_t": _tiny_swin}
        if name not in builders:
            raise MethodError(f"size 'tiny' exists for efficientnet_b3 and swin_t (the dual stream), not {name!r}; use size 'full'")
        model, status = builders[name](), "random-init (tiny config)"
    elif size == "full":
        if name not in set(torchvision.models.list_models(module=torchvision.models)):
            raise MethodError(f"unknown torchvision backbone {name!r}")
        model = torchvision.models.get_model(name, weights=None)
        status = load_pretrained(model, name, weights)
    else:
        raise MethodError(f"backbone size must be 'full' or 'tiny', got {size!r}")
    width = strip_classifier(model, name)
    return TorchvisionTrunk(model, width, in_channels), status


class DualStream(nn.Module):
    """``[alpha * local(x), beta * global(x)]`` (paper 004 Eq. (5)); alpha and beta are learnable scalars."""

    def __init__(self, local: nn.Module, local_dim: int, global_: nn.Module, global_dim: int, init: float = 1.0) -> None:
        super().__init__()
        self.local = local
        self.global_ = global_
        self.alpha = nn.Parameter(torch.tensor(float(init)))
        self.beta = nn.Parameter(torch.tensor(float(init)))
        self.out_dim = int(local_dim) + int(global_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.alpha * self.local(x), self.beta * self.global_(x)], dim=1)


class ZeroMeanHashLayer(nn.Module):
    """``tanh(gamma * BN(W f))``: a bias-free linear map, batch norm without shift (zero-mean pre-activations,
    paper 004 Sec. 2) and a learnable per-bit scale ``gamma`` (init 1) so codes can still saturate."""

    def __init__(self, in_dim: int, bits: int) -> None:
        super().__init__()
        self.linear = nn.Linear(int(in_dim), int(bits), bias=False)
        self.bn = nn.BatchNorm1d(int(bits), affine=False)
        self.gamma = nn.Parameter(torch.ones(int(bits)))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        z = self.linear(f)
        if self.training and z.shape[0] < 2:
            # a one-item batch has no batch statistics: use the running ones (the batch stays untouched)
            z = nn.functional.batch_norm(z, self.bn.running_mean, self.bn.running_var, training=False, eps=self.bn.eps)
        else:
            z = self.bn(z)
        return torch.tanh(self.gamma * z)
