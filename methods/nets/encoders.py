"""Shared encoders: MLPs for feature/bag-of-words inputs, a small CNN and torchvision backbones for pixels.

Every encoder is ``trunk -> head``: the trunk turns one input into a flat vector (identity for
``features``/``bow``, a conv stack for ``pixels``) and the head is an MLP ``in -> hidden... -> out``
(ReLU between layers, optional dropout, last layer linear). Methods put their own squashing
(``tanh`` etc.) on top.

Pixel backbones: ``small_cnn`` (ours, random init), ``cnnf`` (CNN-F, :mod:`methods.nets.cnnf`),
``efficientnet_lite0`` (:mod:`methods.nets.efficientnet_lite`) and every torchvision classification
model. They are built with ``weights=None`` (nothing is ever downloaded here) and loaded from a local
weights file given with ``weights=PATH`` (``torch.load(..., weights_only=True)``, before the classifier
is removed). A suite asks for pretrained weights by naming a registry entry in the method's
``weights`` / ``image_weights`` parameter (e.g. ``resnet50_imagenet1k_v1``, or the backbone name for its
default ImageNet entry); the training loop replaces the name by the fetched, verified file
(pipeline/data/weights.py) and tags the run; a pixel backbone without weights is tagged ``random-init``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from methods.nets.cnnf import CNNF
from methods.nets.efficientnet_lite import LiteTrunk
from pipeline.core.types import ModalitySpec
from pipeline.core.errors import MethodError

#: backbone names that are not torchvision models
OWN_BACKBONES = ("auto", "mlp", "small_cnn")
#: pixel backbones of our own that accept ImageNet weights (beside every torchvision model)
PRETRAINABLE_OWN = ("cnnf", "efficientnet_lite0")
#: ImageNet statistics used in front of torchvision backbones (they expect them with pretrained weights)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int, dropout: float = 0.0) -> nn.Sequential:
    """``in -> hidden[0] -> ... -> out`` with ReLU (and dropout) after every hidden layer; last layer linear."""
    layers: list[nn.Module] = []
    prev = int(in_dim)
    for h in hidden:
        layers.append(nn.Linear(prev, int(h)))
        layers.append(nn.ReLU(inplace=True))
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        prev = int(h)
    layers.append(nn.Linear(prev, int(out_dim)))
    return nn.Sequential(*layers)


class SmallCNN(nn.Module):
    """conv3x3-BN-ReLU blocks with 2x max-pooling between them, global average pool -> flat vector.

    Inputs larger than 32 pixels first go through stride-2 conv-BN-ReLU stems until the shorter side is
    at most 32, so the same net handles 8x8 digits and 224x224 photographs at a bounded cost.
    """

    def __init__(self, in_channels: int, height: int, width: int, channels: Sequence[int] = (32, 64, 128)) -> None:
        super().__init__()
        if not channels:
            raise MethodError("small_cnn needs at least one conv block (channels is empty)")
        layers: list[nn.Module] = []
        prev = int(in_channels)
        size = min(int(height), int(width))
        while size > 32:
            layers += [nn.Conv2d(prev, channels[0], 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(channels[0]), nn.ReLU(inplace=True)]
            prev = channels[0]
            size = (size + 1) // 2
        for i, c in enumerate(channels):
            layers += [nn.Conv2d(prev, int(c), 3, padding=1, bias=False), nn.BatchNorm2d(int(c)), nn.ReLU(inplace=True)]
            prev = int(c)
            if i < len(channels) - 1 and size >= 4:
                layers.append(nn.MaxPool2d(2))
                size //= 2
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.body = nn.Sequential(*layers)
        self.out_dim = prev

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class TorchvisionTrunk(nn.Module):
    """A torchvision classification model with its classifier replaced by ``Identity``.

    Grey images are repeated to 3 channels; inputs in [0, 1] are normalised with ImageNet statistics.
    """

    def __init__(self, model: nn.Module, out_dim: int, in_channels: int) -> None:
        super().__init__()
        self.model = model
        self.out_dim = int(out_dim)
        self.in_channels = int(in_channels)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.pretrained = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = (x - self.mean) / self.std
        out = self.model(x)
        if isinstance(out, tuple):  # e.g. GoogLeNet/Inception aux outputs in train mode
            out = out[0]
        return torch.flatten(out, 1)


def strip_classifier(model: nn.Module, name: str) -> int:
    """Replace the last Linear of the classifier by Identity in place; return its input width."""
    for attr in ("fc", "classifier", "head", "heads"):
        mod = getattr(model, attr, None)
        if mod is None:
            continue
        if isinstance(mod, nn.Linear):
            setattr(model, attr, nn.Identity())
            return mod.in_features
        if isinstance(mod, nn.Sequential):
            for i in range(len(mod) - 1, -1, -1):
                if isinstance(mod[i], nn.Linear):
                    width = mod[i].in_features
                    mod[i] = nn.Identity()
                    # drop anything after the last Linear (e.g. nothing, or a final activation)
                    for j in range(len(mod) - 1, i, -1):
                        mod[j] = nn.Identity()
                    return width
    raise MethodError(f"backbone {name!r}: cannot find its classifier layer (fc / classifier / head) to replace")


def torchvision_trunk(name: str, in_channels: int, weights: str | None = None) -> TorchvisionTrunk:
    """A torchvision model ``name`` built with ``weights=None`` (optionally loading a local state_dict)."""
    try:
        import torchvision
    except ImportError as exc:  # pragma: no cover - torchvision is a dependency
        raise MethodError(f"backbone {name!r} needs torchvision, which is not installed") from exc
    if in_channels not in (1, 3):
        raise MethodError(f"backbone {name!r} takes 1- or 3-channel images, got {in_channels} channels")
    known = set(torchvision.models.list_models(module=torchvision.models))
    if name not in known:
        raise MethodError(
            f"unknown backbone {name!r}; use one of {', '.join(OWN_BACKBONES)} or a torchvision classification model "
            f"(e.g. resnet18, resnet50, alexnet, vgg16)"
        )
    model = torchvision.models.get_model(name, weights=None)
    if weights:
        from methods.nets.weights import load_state_dict_into, read_state_dict

        load_state_dict_into(model, read_state_dict(weights, f"backbone {name!r}"), weights, f"backbone {name!r}")
    width = strip_classifier(model, name)
    trunk = TorchvisionTrunk(model, width, in_channels)
    trunk.pretrained = bool(weights)  # a layer-init scheme leaves loaded weights alone
    return trunk


class Resized(nn.Module):
    """Bilinear resize of (B, C, H, W) batches to ``size`` x ``size`` in front of ``inner`` (the input size a
    pretrained backbone expects, e.g. 224 for 32-px CIFAR-10 as the papers' code does); a no-op at that size."""

    def __init__(self, inner: nn.Module, size: int) -> None:
        super().__init__()
        self.inner = inner
        self.size = int(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.size, self.size):
            x = torch.nn.functional.interpolate(x.float(), size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self.inner(x)


def backbone_modules(module: nn.Module) -> list[nn.Module]:
    """The outermost pretrainable pixel backbones inside ``module`` (CNN-F, EfficientNet-Lite0, torchvision trunks):
    what ``train.optimizer.backbone_lr_mult`` applies to (the loop gives their parameters their own group)."""
    kinds = (TorchvisionTrunk, CNNF, LiteTrunk)
    found: list[nn.Module] = []

    def walk(m: nn.Module) -> None:
        if isinstance(m, kinds):
            found.append(m)
            return
        for child in m.children():
            walk(child)

    walk(module)
    return found


def backbone_parameter_ids(module: nn.Module) -> set[int]:
    """``id`` of every parameter of :func:`backbone_modules` of ``module``."""
    return {id(p) for b in backbone_modules(module) for p in b.parameters()}


def pixel_trunk(name: str, in_channels: int, weights: str | None = None, input_size: int | None = None) -> tuple[nn.Module, int]:
    """A pretrainable pixel backbone without classifier, (trunk, output width): ``cnnf``, ``efficientnet_lite0`` or a
    torchvision model, loading the local ``weights`` file when given. Trunks take [0, 1] RGB (grey is repeated) and
    normalise it as the backbone expects (CNN-F: 0-255 minus MatConvNet's mean colour; the others: ImageNet
    mean/std); ``input_size`` resizes every batch to that side first (CNN-F resizes to 224 by itself)."""
    if name == "cnnf":
        from methods.nets.cnnf import CNNF, load_cnnf_weights

        net = CNNF(in_channels, input_size or 224)
        if weights:
            load_cnnf_weights(net, weights)
        return net, CNNF.out_dim
    if name == "efficientnet_lite0":
        from methods.nets.efficientnet_lite import EfficientNetLite0, LiteTrunk
        from methods.nets.weights import load_state_dict_into, read_state_dict

        if in_channels not in (1, 3):
            raise MethodError(f"backbone {name!r} takes 1- or 3-channel images, got {in_channels} channels")
        model = EfficientNetLite0()
        if weights:
            load_state_dict_into(model, read_state_dict(weights, f"backbone {name!r}"), weights, f"backbone {name!r}", expected="EfficientNet-Lite0")
        model._fc = nn.Identity()
        lite: nn.Module = LiteTrunk(model)
        return (Resized(lite, input_size) if input_size else lite), EfficientNetLite0.out_dim
    tv = torchvision_trunk(name, in_channels, weights)
    return (Resized(tv, input_size) if input_size else tv), tv.out_dim


class Encoder(nn.Module):
    """``trunk`` (flat vector of width ``trunk_dim``) followed by the MLP ``head`` to ``out_dim``."""

    def __init__(self, trunk: nn.Module, trunk_dim: int, head: nn.Module, out_dim: int) -> None:
        super().__init__()
        self.trunk = trunk
        self.head = head
        self.trunk_dim = int(trunk_dim)
        self.out_dim = int(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


def build_encoder(
    spec: ModalitySpec,
    out_dim: int,
    backbone: str = "auto",
    hidden: Sequence[int] = (1024,),
    dropout: float = 0.0,
    weights: str | None = None,
    cnn_channels: Sequence[int] = (32, 64, 128),
    input_size: int | None = None,
) -> Encoder:
    """Encoder for one modality: ``features``/``bow`` -> MLP, ``pixels`` -> small CNN or a torchvision model.

    ``backbone``: ``"auto"`` (MLP for features/bow, ``small_cnn`` for pixels), ``"mlp"``, ``"small_cnn"``,
    ``"cnnf"``, ``"efficientnet_lite0"`` or the name of a torchvision classification model (``resnet18``,
    ``alexnet``, ...; pixels only, random init unless ``weights`` names a local state_dict file). ``hidden`` are the widths of the MLP
    head between the trunk and the ``out_dim`` outputs (empty = one linear layer). ``input_size``: the side pixel
    batches are resized to before a pretrainable backbone (None: as prepared).
    """
    if spec.kind not in ("features", "pixels", "bow"):
        raise MethodError(f"modality {spec.name!r}: unknown kind {spec.kind!r}")
    name = backbone
    if name == "auto":
        name = "small_cnn" if spec.kind == "pixels" else "mlp"
    if weights and name in OWN_BACKBONES:
        raise MethodError(f"modality {spec.name!r}: a weights file is only supported for torchvision backbones, not {name!r}")
    if name == "mlp":
        trunk: nn.Module = nn.Flatten()
        trunk_dim = spec.dim
    elif spec.kind != "pixels":
        raise MethodError(
            f"modality {spec.name!r} is {spec.kind!r} (e.g. frozen backbone features); backbone {backbone!r} needs pixels "
            f"(use 'mlp' or 'auto', or a suite on the pixel dataset)"
        )
    elif len(spec.shape) != 3:
        raise MethodError(f"modality {spec.name!r}: pixels must have shape (C, H, W), got {spec.shape}")
    elif name == "small_cnn":
        c, h, w = spec.shape
        cnn = SmallCNN(c, h, w, channels=cnn_channels)
        trunk, trunk_dim = cnn, cnn.out_dim
    else:
        trunk, trunk_dim = pixel_trunk(name, spec.shape[0], weights, input_size)
    head = mlp(trunk_dim, hidden, out_dim, dropout=dropout)
    return Encoder(trunk, trunk_dim, head, out_dim)
