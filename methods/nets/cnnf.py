"""CNN-F (Chatfield, Simonyan, Vedaldi, Zisserman, "Return of the Devil in the Details", BMVC 2014), the
image network of DCMH, PRDH, CMHH, MFPMC and ADIH, shared by every method (``backbone: cnnf``).

Layers (Chatfield et al. 2014, Table 1): conv1 64x11x11 stride 4 + LRN + 3x3/2 max-pool; conv2 256x5x5
pad 2 + LRN + pool; conv3-conv5 256x3x3 pad 1, pool after conv5; fc6 4096, fc7 4096 (ReLU; the
classifier fc8 is dropped). LRN defaults: size 5, alpha 1e-4, beta 0.75, k 2 (Krizhevsky et al.'s
values); a converted MatConvNet checkpoint carries the file's own constants and mean colour, which
:func:`load_cnnf_weights` applies. Max-pools use ``ceil_mode`` so a 224 x 224 input gives MatConvNet's
6 x 6 x 256 before fc6 (MatConvNet pads the pools on the bottom/right). Inputs of another size are
resized to ``input_size`` (bilinear); inputs in [0, 1] are scaled to [0, 255] and the mean colour
(MatConvNet's ImageNet mean, 123.68, 116.78, 103.94 by default) is subtracted.

Pretrained weights: ``imagenet-vgg-f.mat`` from MatConvNet, converted by
:func:`pipeline.data.weights.convert_matconvnet_cnnf` (``hashbench fetch-weights cnnf``) into a
checkpoint ``{"state_dict": <this module's keys>, "meta": {...}}``. Nothing is downloaded here.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F_
from torch import nn

from pipeline.core.errors import MethodError

#: the weights registry entry of MatConvNet's ImageNet CNN-F (pipeline/data/weights.py, ``hashbench fetch-weights cnnf``)
CNNF_IMAGENET = "cnnf_imagenet_vgg_f"
#: the image network of DCMH, PRDH and CMHH in their papers' setup: the ImageNet CNN-F up to fc7 and the hash
#: layer in place of fc8 (no hidden layer between; DCMH's authors' ``net_structure_img``)
CNNF_PAPER_IMAGE = {"image_backbone": "cnnf", "image_weights": CNNF_IMAGENET, "image_hidden": []}

#: the MatConvNet CNN-F's mean colour (0-255 scale)
CNNF_MEAN_RGB = (123.68, 116.78, 103.94)
#: LocalResponseNorm defaults (size, alpha, beta, k) in PyTorch's convention (alpha divided by size)
CNNF_LRN = (5, 1e-4, 0.75, 2.0)


class CNNF(nn.Module):
    """CNN-F (Chatfield et al., BMVC 2014) up to fc7: (B, C, H, W) in [0, 1] -> (B, 4096). See the module docstring."""

    out_dim = 4096

    def __init__(self, in_channels: int = 3, input_size: int = 224, dropout: float = 0.0) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise MethodError(f"cnnf takes 1- or 3-channel images, got {in_channels} channels")
        self.in_channels = int(in_channels)
        self.input_size = int(input_size)
        size, alpha, beta, k = CNNF_LRN
        lrn = dict(size=size, alpha=alpha, beta=beta, k=k)
        self.features = nn.Sequential(
            OrderedDict(
                [
                    ("conv1", nn.Conv2d(3, 64, 11, stride=4)),
                    ("relu1", nn.ReLU(inplace=True)),
                    ("norm1", nn.LocalResponseNorm(**lrn)),
                    ("pool1", nn.MaxPool2d(3, stride=2, ceil_mode=True)),
                    ("conv2", nn.Conv2d(64, 256, 5, padding=2)),
                    ("relu2", nn.ReLU(inplace=True)),
                    ("norm2", nn.LocalResponseNorm(**lrn)),
                    ("pool2", nn.MaxPool2d(3, stride=2, ceil_mode=True)),
                    ("conv3", nn.Conv2d(256, 256, 3, padding=1)),
                    ("relu3", nn.ReLU(inplace=True)),
                    ("conv4", nn.Conv2d(256, 256, 3, padding=1)),
                    ("relu4", nn.ReLU(inplace=True)),
                    ("conv5", nn.Conv2d(256, 256, 3, padding=1)),
                    ("relu5", nn.ReLU(inplace=True)),
                    ("pool5", nn.MaxPool2d(3, stride=2, ceil_mode=True)),
                ]
            )
        )
        self.pool = nn.AdaptiveAvgPool2d(6)  # identity for 224 x 224 inputs
        self.fc6 = nn.Linear(256 * 6 * 6, 4096)
        self.fc7 = nn.Linear(4096, 4096)
        self.dropout = float(dropout)
        self.register_buffer("mean", torch.tensor(CNNF_MEAN_RGB).view(1, 3, 1, 1), persistent=False)

    def set_lrn(self, name: str, size: int, alpha: float, beta: float, k: float) -> None:
        """Replace LRN layer ``name`` (norm1 / norm2) by one with these constants (PyTorch convention)."""
        setattr(self.features, name, nn.LocalResponseNorm(int(size), alpha=float(alpha), beta=float(beta), k=float(k)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            x = F_.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        x = x * 255.0 - self.mean
        x = torch.flatten(self.pool(self.features(x)), 1)
        x = F_.dropout(F_.relu(self.fc6(x)), self.dropout, self.training)
        return F_.dropout(F_.relu(self.fc7(x)), self.dropout, self.training)


def load_cnnf_weights(model: CNNF, path: str) -> dict:
    """Load a local CNN-F ``state_dict`` into ``model`` (this module's keys; a checkpoint's ``state_dict``
    entry also works); a converted MatConvNet checkpoint's ``meta`` (LRN constants, mean colour) is applied.
    Returns that ``meta`` (empty for a plain state_dict)."""
    from methods.nets.weights import load_state_dict_into, read_checkpoint

    state, meta = read_checkpoint(path, "cnnf")
    state = {k: v for k, v in state.items() if not k.startswith("fc8.")}
    load_state_dict_into(model, state, path, "cnnf", expected="CNN-F (keys features.conv1.weight ... fc7.bias)")
    for i, lrn in enumerate(meta.get("lrn") or [], 1):
        name = str(lrn.get("name") or f"norm{i}")
        if name in ("norm1", "norm2"):
            model.set_lrn(name, lrn["size"], lrn["alpha"], lrn["beta"], lrn["k"])
    if meta.get("mean_rgb"):
        model.mean.copy_(torch.tensor([float(v) for v in meta["mean_rgb"]]).view(1, 3, 1, 1))
    return meta
