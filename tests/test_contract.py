"""The method contract (methods/base.py), checked for every entry of the registry: every registered method
(``methods.registry.available_methods``) with its code defaults, and every variant of params.yaml
(``methods.<name>: {method: <registered>, ...}``, resolved as a trial would resolve it).

Each entry is built on a tiny in-memory dataset of its modalities (``DataInfo`` / ``ModalitySpec``), then
goes through the hooks in the training loop's order (pipeline/train/loop.py): ``configure_optimizers``,
``on_train_start``, ONE training step per phase of epoch 0 (``training_step`` + optimizer step),
``on_epoch_end``, ``encode`` in eval mode. Asserted:

* every phase's step returns named, finite, scalar losses including ``"loss"``; a method that trains by
  gradient has at least one phase (a closed-form method, ``trains_by_gradient = False``, has none);
* ``on_epoch_end`` returns finite values;
* ``encode`` gives finite real-valued codes of shape (B, bits) for every modality the method consumes;
* the same seed gives bit-identical codes (and losses); a method that trains by gradient gives other
  codes under another seed (its networks are initialised from the trial seed).

Inputs: ``features`` for every modality when the method accepts them (the cheapest nets), else pixels
(3 x 16 x 16), else bag-of-words. A variant that selects a full torchvision backbone (ltdual's Table-3
ablation: alexnet, resnet50, vgg16: 23-134 M parameters, far too slow for a contract check) is built with
``small_cnn`` instead; those backbones are tested on their own in tests/test_ltdual.py and
tests/test_methods.py. Hidden widths (``*hidden`` fields) are capped at 64 units: the same layers, tiny.
No pretrained weights are read (``TORCH_HOME`` points at an empty folder).
A method added to the registry (or a variant to params.yaml) is picked up here without any edit.
"""

from __future__ import annotations

import math

import pytest
import torch

from methods.base import DataInfo, ModalitySpec, TrainData
from methods.registry import available_methods, create_method, get_method_class
from pipeline.config import load_params, method_params
from pipeline.core.errors import MethodError
from pipeline.train.loop import seed_everything
from tests.conftest import REPO

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BITS = 16
N_TRAIN, BATCH, N_ENCODE, N_CLASSES = 64, 16, 5, 4
FEATURE_DIMS = {"image": 32, "text": 24}  # any other modality: 20
PIXELS = (3, 16, 16)
BOW = 30
#: backbone values that build small nets; any other value of a ``*backbone`` field (a torchvision model, the dual
#: stream, CNN-F) is a full-size network, replaced by ``small_cnn`` here
LIGHT_BACKBONES = {"auto", "mlp", "small_cnn", "features"}
#: widths of every ``*hidden`` field are capped at this (DCMH's 8192-wide text MLP, MFPMC's 4096 x 4096 text net)
MAX_WIDTH = 64


def _entries() -> list:
    """(entry name, registered method, hyperparameters as a dict): the methods, then the variants registered
    in code and those of params.yaml."""
    from methods.registry import available_variants

    out = [pytest.param(name, name, get_method_class(name).Params().model_dump(mode="json"), id=name) for name in available_methods()]
    params = load_params(REPO / "params.yaml")
    for name in sorted({*available_variants(), *params.methods}):
        impl = params.implementation(name)
        if impl != name:
            out.append(pytest.param(name, impl, method_params(params, name, {}), id=name))
    return out


def _light(hyper: dict) -> dict:
    """The hyperparameters with tiny nets: full-size backbones replaced by ``small_cnn`` and hidden widths
    capped at :data:`MAX_WIDTH` (same layers, fewer units; see the module doc)."""
    out = {}
    for k, v in hyper.items():
        if k.endswith("backbone") and isinstance(v, str) and v not in LIGHT_BACKBONES:
            v = "small_cnn"
        elif k.endswith("hidden") and isinstance(v, (list, tuple)) and all(isinstance(w, int) for w in v):
            v = [min(w, MAX_WIDTH) for w in v]
        out[k] = v
    return out


def _spec(modality: str, kind: str) -> ModalitySpec:
    shape = {"features": (FEATURE_DIMS.get(modality, 20),), "pixels": PIXELS, "bow": (BOW,)}[kind]
    return ModalitySpec(modality, kind, shape)


def _info(cls, kind: str) -> DataInfo:
    return DataInfo("contract", {m: _spec(m, kind) for m in cls.modalities}, N_CLASSES, False, N_TRAIN)


def _inputs(info: DataInfo, n: int, offset: int) -> dict[str, torch.Tensor]:
    """Fixed inputs (independent of the trial seed): item i is a function of offset + i only."""
    g = torch.Generator().manual_seed(1000 + offset)
    out = {}
    for m, spec in info.modalities.items():
        if spec.kind == "pixels":
            out[m] = torch.rand((n, *spec.shape), generator=g)
        elif spec.kind == "bow":
            out[m] = (torch.rand((n, *spec.shape), generator=g) < 0.2).float()
        else:
            out[m] = torch.randn((n, *spec.shape), generator=g)
    return out


def _build(name: str, hyper: dict, info: DataInfo):
    return create_method(name, hyper, info, BITS)


def _data_info(name: str, hyper: dict):
    """The DataInfo of the first input kind (features, pixels, bow) the entry builds on."""
    cls = get_method_class(name)
    kinds = [k for k in ("features", "pixels", "bow") if k in cls.input_kinds]
    assert kinds, f"{name}: input_kinds {sorted(cls.input_kinds)} has none of features, pixels, bow"
    for kind in kinds:
        info = _info(cls, kind)
        try:
            _build(name, hyper, info)
        except MethodError as exc:
            if kind == kinds[-1]:
                raise
            assert any(k in str(exc) for k in kinds[kinds.index(kind) + 1 :]), f"{name} refused {kind} input: {exc}"
            continue
        return info
    raise AssertionError("unreachable")


def _one_step(name: str, hyper: dict, info: DataInfo, seed: int):
    """Build with ``seed`` and run the hooks once; returns (losses per phase, epoch-end values, codes per modality)."""
    seed_everything(seed)
    method = _build(name, hyper, info)
    opts = method.configure_optimizers(lambda ps: torch.optim.Adam(ps, lr=1e-3))
    labels = torch.eye(N_CLASSES)[torch.arange(N_TRAIN) % N_CLASSES]
    train_x = _inputs(info, N_TRAIN, 0)

    def batch_of(idx: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"index": idx, "labels": labels[idx], **{m: x[idx] for m, x in train_x.items()}}

    def batches():
        for s in range(0, N_TRAIN, BATCH):
            yield batch_of(torch.arange(s, min(N_TRAIN, s + BATCH)))

    data = TrainData(labels=labels, info=info, batches=batches, extras={"epochs": 1})  # as the loop sets it (one epoch here)
    method.on_train_start(data)
    losses: dict[str, dict[str, torch.Tensor]] = {}
    phases = method.phases(0)
    if method.trains_by_gradient:  # closed-form methods (no phases) have no such attribute yet on every branch
        assert phases, f"{name}: a method that trains by gradient needs at least one phase in epoch 0"
    for phase in phases:
        assert phase in opts, f"{name}: phase {phase!r} has no optimizer (has {sorted(opts)})"
        method.train()
        out = method.training_step(batch_of(torch.arange(BATCH)), phase)
        opts[phase].zero_grad()
        out["loss"].backward()
        opts[phase].step()
        losses[phase] = {k: v.detach().clone() for k, v in out.items()}
    with torch.no_grad():
        extra = method.on_epoch_end(0, data) or {}
    method.eval()
    query = _inputs(info, N_ENCODE, N_TRAIN)
    with torch.no_grad():
        codes = {m: method.encode({m: query[m]}, m) for m in method.modalities}
    return method, losses, extra, codes


@pytest.mark.parametrize(("entry", "name", "hyper"), _entries())
def test_method_contract(entry, name, hyper, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no pretrained weights from a local hub cache
    hyper = _light(hyper)
    info = _data_info(name, hyper)
    method, losses, extra, codes = _one_step(name, hyper, info, seed=0)
    for phase, terms in losses.items():
        assert "loss" in terms, (entry, phase, sorted(terms))
        for k, v in terms.items():
            assert isinstance(k, str) and k, (entry, phase, k)
            assert isinstance(v, torch.Tensor) and v.numel() == 1 and torch.isfinite(v).all(), (entry, phase, k, v)
    assert all(isinstance(k, str) and math.isfinite(float(v)) for k, v in extra.items()), (entry, extra)
    assert set(codes) == set(method.modalities)
    for m, c in codes.items():
        assert c.shape == (N_ENCODE, BITS), (entry, m, tuple(c.shape))
        assert c.dtype.is_floating_point and torch.isfinite(c).all(), (entry, m)

    _, losses_again, _, codes_again = _one_step(name, hyper, info, seed=0)
    for m in codes:
        assert torch.equal(codes[m], codes_again[m]), (entry, m)  # same seed -> identical codes
    assert {p: sorted(t) for p, t in losses.items()} == {p: sorted(t) for p, t in losses_again.items()}
    for phase, terms in losses.items():
        for k, v in terms.items():
            assert torch.equal(v, losses_again[phase][k]), (entry, phase, k)
    if method.trains_by_gradient:
        _, _, _, codes_other = _one_step(name, hyper, info, seed=1)
        for m in codes:
            assert not torch.equal(codes[m], codes_other[m]), (entry, m)  # the seed reaches the model
