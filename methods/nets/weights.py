"""Reading a local weights file (a ``state_dict``), shared by every backbone that accepts one.

Nothing is ever downloaded: a file is given by the user, resolved by the pipeline from the weights
registry (pipeline/data/weights.py, ``hashbench fetch-weights``), or found in the torch hub cache by the caller.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pipeline.core.errors import MethodError


def read_state_dict(path: str | Path, what: str) -> dict:
    """The ``state_dict`` in ``path`` (a checkpoint's ``state_dict`` entry also works); errors name ``what`` and the file."""
    return read_checkpoint(path, what)[0]


def read_checkpoint(path: str | Path, what: str) -> tuple[dict, dict]:
    """(``state_dict``, ``meta``) of ``path``: a plain state_dict (meta empty) or ``{"state_dict": ..., "meta": {...}}``
    (e.g. a converted MatConvNet CNN-F). Loaded with ``torch.load(weights_only=True)``."""
    file = Path(path)
    if not file.is_file():
        raise MethodError(f"{what}: weights file {str(file)!r} does not exist")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file named
        raise MethodError(f"{what}: cannot load weights file {str(file)!r}: {exc}") from exc
    meta: dict = {}
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        meta = state.get("meta") if isinstance(state.get("meta"), dict) else {}
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise MethodError(f"{what}: weights file {str(file)!r} holds a {type(state).__name__}, expected a state_dict")
    return state, meta


def load_state_dict_into(model: nn.Module, state: dict, path: str | Path, what: str, expected: str = "the model") -> None:
    """``model.load_state_dict(state)`` with a mismatch reported as a :class:`MethodError` naming the file."""
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise MethodError(f"{what}: weights file {str(path)!r} does not match {expected}: {exc}") from exc
