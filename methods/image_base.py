"""The base of the image hashing methods (CSQ, OrthoHash, CRH): what they share besides their losses.

:class:`EncoderParams` is the shared encoder/backbone parameter block (backbone, MLP head widths,
dropout, a local weights file) plus the seed of the method's fixed targets (hash centres, class
codes, a codebook); :class:`ImageHashMethod` draws that seed (from the trial-seeded torch RNG unless
given), builds the image encoder with :func:`methods.nets.build_encoder`, checks the modality in
:meth:`encode` and the label columns against the targets. A subclass writes its targets, its
``training_step`` and, if its code is not ``tanh(net(x))``, :meth:`code`.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field, model_serializer

from methods.base import DataInfo, HashMethod, MethodParams
from methods.nets import build_encoder
from pipeline.core.errors import MethodError


class EncoderParams(MethodParams):
    """The encoder block shared by the image methods, and the seed of their fixed targets."""

    backbone: str = Field("auto", description="'auto' (MLP on features, small CNN on pixels), 'mlp', 'small_cnn', 'cnnf', 'efficientnet_lite0' or a torchvision model name (alexnet, vgg16, resnet34, resnet50, ...)")
    hidden: tuple[int, ...] = Field((1024,), description="hidden widths of the MLP head before the K-unit hash layer")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout after every hidden layer of the head")
    weights: str | None = Field(None, description="pretrained weights of the pixel backbone: a weights entry (e.g. resnet50, alexnet; `hashbench fetch-weights`) or a local state_dict file; none = random init (tagged)")
    seed: int | None = Field(None, description="seed of the method's fixed targets (hash centres, class codes, codebook); None = drawn from the trial-seeded torch RNG")
    input_size: int | None = Field(None, ge=8, description="resize pixel batches to this side before a pretrainable backbone (the papers: 224); None = as prepared")

    @model_serializer(mode="wrap")
    def _without_unset_input_size(self, handler):
        """Leave ``input_size`` out of dumps while None, so trial keys without it do not change."""
        data = handler(self)
        if isinstance(data, dict) and self.input_size is None:
            data.pop("input_size", None)
        return data


class ImageHashMethod(HashMethod):
    """An image method: one encoder over the ``image`` modality and seeded fixed targets."""

    modalities: ClassVar[tuple[str, ...]] = ("image",)
    input_kinds: ClassVar[frozenset[str]] = frozenset({"features", "pixels"})
    Params: ClassVar[type[MethodParams]] = EncoderParams

    def __init__(self, params: EncoderParams, info: DataInfo, bits: int) -> None:
        super().__init__(params, info, bits)
        self.target_seed = params.seed if params.seed is not None else int(torch.randint(0, 2**62, (1,)).item())
        self.net = build_encoder(
            info.modalities["image"], self.bits, params.backbone, params.hidden, params.dropout, weights=params.weights, input_size=params.input_size
        )

    def generator(self) -> torch.Generator:
        """A fresh torch generator seeded with the targets' seed."""
        return torch.Generator().manual_seed(self.target_seed)

    def code(self, x: torch.Tensor) -> torch.Tensor:
        """Real-valued codes of an image batch (the evaluator takes the sign): the method's squashing
        (tanh, at the loop's temperature when that plug-in is on) of the network's output."""
        return self.squash(self.net(x))

    def encode(self, batch: dict[str, torch.Tensor], modality: str) -> torch.Tensor:
        if modality != "image":
            raise MethodError(f"{self.name}: encodes images only, not {modality!r}")
        return self.code(batch["image"])

    def check_label_columns(self, labels: torch.Tensor, n_targets: int, what: str) -> None:
        """The training labels have one column per target (class) the method built."""
        if labels.shape[1] != n_targets:
            raise MethodError(f"{self.name}: dataset {self.info.dataset!r} has {labels.shape[1]} label columns but {n_targets} {what} were built")
