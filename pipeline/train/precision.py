"""Mixed precision of the shared loop (``train.precision``): autocast of the forward passes, and a gradient
scaler for fp16 (bf16 keeps fp32's exponent range and needs none).

``fp32``: no autocast. ``bf16``: autocast on CUDA or CPU. ``fp16``: CUDA only (with
``torch.amp.GradScaler``); on CPU it is refused, naming the setting. Parameters and optimizer state stay
fp32; closed-form updates in ``on_epoch_end`` run outside autocast.
"""

from __future__ import annotations

import contextlib

import torch

from pipeline.core.errors import TrainingError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    """``autocast()`` for a forward pass, and ``scaler`` (None unless fp16) for the backward and step."""

    def __init__(self, name: str, device: torch.device):
        self.name = name
        self.device = torch.device(device)
        if name not in ("fp32", *DTYPES):
            raise TrainingError(f"train.precision is {name!r}; allowed: fp32, bf16, fp16")
        if name == "fp16" and self.device.type != "cuda":
            raise TrainingError(f"train.precision: fp16 needs a CUDA device (training on {self.device}); use bf16 or fp32")
        if name == "bf16" and self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise TrainingError("train.precision: bf16 is not supported by this GPU; use fp16 or fp32")
        self.scaler = torch.amp.GradScaler("cuda") if name == "fp16" else None

    def autocast(self):
        if self.name == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=DTYPES[self.name])

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale(self, opt: torch.optim.Optimizer) -> None:
        """Before gradient clipping (and after any all-reduce, so every rank sees the same infs)."""
        if self.scaler is not None:
            self.scaler.unscale_(opt)

    def step(self, opt: torch.optim.Optimizer) -> None:
        if self.scaler is not None:
            self.scaler.step(opt)
            self.scaler.update()
        else:
            opt.step()
