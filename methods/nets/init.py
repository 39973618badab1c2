"""Layer initialisation of the shared encoder block as a recipe setting (:class:`methods.base.LayerInit`).

:func:`apply_layer_init` runs once when a method is built (:func:`methods.registry.create_method`), after
its constructor, on every :class:`~methods.nets.encoders.Encoder` inside it: the MLP head always, the
trunk unless it loaded pretrained weights (a torchvision trunk with ``weights=PATH``). ``default`` draws
nothing, so a method's result under the PyTorch default is what it was before this setting existed.
"""

from __future__ import annotations

import torch
from torch import nn

from methods.base import LayerInit
from pipeline.core.errors import MethodError


def init_layer(layer: nn.Module, cfg: LayerInit) -> bool:
    """(Re)initialise one Linear/Conv layer by ``cfg``; False for other modules (or scheme ``default``)."""
    if cfg.scheme == "default" or not isinstance(layer, (nn.Linear, nn.Conv1d, nn.Conv2d)):
        return False
    with torch.no_grad():
        if cfg.scheme == "normal":
            nn.init.normal_(layer.weight, 0.0, cfg.std)
            if layer.bias is not None:
                nn.init.normal_(layer.bias, 0.0, cfg.std)
            return True
        if cfg.scheme == "xavier":
            nn.init.xavier_uniform_(layer.weight)
        else:  # kaiming
            nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu")
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)
    return True


def apply_layer_init(method: nn.Module, cfg: LayerInit, name: str = "method") -> str:
    """Initialise the encoders of ``method`` by ``cfg``; returns the description recorded on the run.

    A scheme other than ``default`` on a method without any shared encoder is an error (it would silently
    do nothing)."""
    from methods.nets.encoders import Encoder

    encoders = [m for m in method.modules() if isinstance(m, Encoder)]
    if cfg.scheme == "default":
        return cfg.describe()
    if not encoders:
        raise MethodError(f"{name}: layer_init scheme {cfg.scheme!r} needs the shared encoder block (methods/nets/encoders.py), which this method does not use")
    layers = skipped = 0
    for enc in encoders:
        parts = [enc.head]
        if getattr(enc.trunk, "pretrained", False):
            skipped += 1
        else:
            parts.append(enc.trunk)
        for part in parts:
            layers += sum(init_layer(m, cfg) for m in part.modules())
    note = f", {skipped} pretrained trunk(s) kept" if skipped else ""
    return f"{cfg.describe()} on {layers} layers of {len(encoders)} encoder(s){note}"
