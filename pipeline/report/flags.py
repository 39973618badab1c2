"""Setup flags: where a run's setup differs from its paper's, marked on every row of every report table.

Each method's *paper setup* is data (:data:`PAPER_SETUPS`, keyed by the registered implementation, so a
variant such as ``crh-u`` or ``dcmh-adam`` is compared with its method's paper): the image backbones the
paper uses, whether it starts them from pretrained (ImageNet) weights, the (dataset, protocol) pairs it
reports, and its training recipe. A run is compared with it through what the run recorded: its
``hashbench.init`` / ``weights.*`` tags (:func:`pipeline.train.loop.initialisation_tags`: ``pretrained
NAME sha256=...``, ``random-init (<backbone>)``, ``frozen-features ...``), its backbone parameter and its
``train.*`` parameters. Flags are short codes with a legend (:data:`LEGEND`):

* ``R`` random initialisation where the paper starts from pretrained weights;
* ``F`` frozen backbone features where the paper fine-tunes the network;
* ``B`` another image network than the paper's (e.g. a small CNN or an MLP on features);
* ``P`` a dataset or protocol the paper does not report (a CPU stand-in, or another split);
* ``T`` another training recipe than the paper's (optimizer, learning rate, schedule, epochs, batch size).

The recipe a run is compared with is the method's recipe in code (its class's ``train_defaults``, the
authors' settings with their sources in the method's docstring) overlaid by :attr:`PaperSetup.recipe`,
the values a paper states that the code's recipe leaves to the global ``train`` block (e.g. DCMH's 500
epochs). A deep method with neither trains with HashBench's global ``train`` block, not its paper's
recipe, and is flagged ``T``.

Sources of the setups: DCMH (Jiang & Li, CVPR 2017, and the authors' code: CNN-F pretrained on ImageNet,
500 epochs); PRDH, CMHH, MFPMC: CNN-F pretrained on ImageNet (paper 001, Sec. 2.1 and its baselines'
setting, Sec. 3.2); ADIH (paper 003): a CNN image network, pretrained weights not stated in our copy (read
as ImageNet-pretrained, as its DCMH baseline); CSQ (Yuan et al., CVPR 2020): ResNet-50 / AlexNet on
ImageNet weights, NUS-WIDE and MS COCO; OrthoHash (Hoe et al., NeurIPS 2021): AlexNet / VGG-16 on ImageNet
weights, CIFAR-10, NUS-WIDE, MS COCO; CRH (the CRH article, paper 002): ResNet-34 pretrained, NABirds and
MS COCO (Stanford Cars not prepared here); ltdual (paper 004, Sec. 3.2, line 187 of the copy):
EfficientNet-B3 + Swin pretrained on ImageNet, long-tailed CIFAR-10 / ImageNette, batch 32, 50 epochs,
Adam 0.001 with cosine annealing. The classic baselines (CMFH, SCM, SePH, STMH, LSH, ITQ, SDH) take
hand-crafted features in their papers: no image network, so only ``P`` and ``T`` can apply (never here:
they have no recipe).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import pandas as pd

LEGEND: dict[str, str] = {
    "R": "random initialisation where the paper starts from pretrained (ImageNet) weights",
    "F": "frozen backbone features where the paper fine-tunes the network",
    "B": "another image network than the paper's",
    "P": "a dataset or protocol the paper does not report",
    "T": "another training recipe than the paper's (optimizer, learning rate, schedule, epochs or batch size), or the paper's recipe not in the code",
}

RECIPE_KEYS = ("optimizer.name", "optimizer.lr", "lr_schedule.name", "epochs", "batch_size", "sampler")
#: run parameters the report reads for the comparison (MLflow params of :func:`pipeline.train.tracking.trial_params`)
BACKBONE_PARAMS = ("method_params.backbone", "method_params.image_backbone")
SETUP_PARAMS = BACKBONE_PARAMS + ("method_params.size",) + tuple(f"train.{k}" for k in RECIPE_KEYS)


@dataclass(frozen=True)
class PaperSetup:
    backbones: frozenset[str] = frozenset()  # empty: the paper has no image network (hand-crafted features)
    pretrained: bool = True
    protocols: frozenset[tuple[str, str]] = frozenset()  # (our dataset, our protocol) the paper reports; empty: not checked
    recipe: Mapping[str, Any] = field(default_factory=dict)  # train.* values the paper states beyond train_defaults
    auto_pixels: str = "small_cnn"  # what the method's backbone 'auto' builds on pixels (on features: an MLP)
    params: Mapping[str, Any] = field(default_factory=dict)  # other method parameters that shape the paper's network


def _setup(backbones: tuple[str, ...], protocols: tuple[tuple[str, str], ...], *, pretrained: bool = True, auto_pixels: str = "small_cnn",
           params: Mapping[str, Any] | None = None, **recipe: Any) -> PaperSetup:
    return PaperSetup(frozenset(backbones), pretrained, frozenset(protocols), recipe, auto_pixels, params or {})


_CROSSMODAL = (("mirflickr25k", "dcmh"), ("nuswide", "dcmh"))
_CENTRES = (("nuswide", "dpsh"), ("coco", "hashnet"))

PAPER_SETUPS: dict[str, PaperSetup] = {
    "dcmh": _setup(("cnnf",), _CROSSMODAL, epochs=500),
    "prdh": _setup(("cnnf",), _CROSSMODAL),
    "cmhh": _setup(("cnnf",), _CROSSMODAL),
    "mfpmc": _setup(("cnnf",), _CROSSMODAL, auto_pixels="cnnf"),
    "adih": _setup(("cnnf",), (("mirflickr25k", "adih"), ("nuswide", "adih"))),
    "csq": _setup(("resnet50", "alexnet"), _CENTRES),
    "orthohash": _setup(("alexnet", "vgg16"), _CENTRES + (("cifar10", "dpsh"),)),
    "crh": _setup(("resnet34",), (("nabirds", "crh"), ("coco", "hashnet"))),
    "ltdual": _setup(("dual",), tuple((d, p) for d in ("cifar10", "imagenette") for p in ("lt100", "lt50", "lt10")),
                     auto_pixels="dual", params={"size": "full"},
                     **{"optimizer.name": "adam", "optimizer.lr": 0.001, "epochs": 50, "batch_size": 32}),
    # classic baselines: hand-crafted features in their papers, each with its own splits (not checked)
    **{m: _setup((), (), pretrained=False) for m in ("cmfh", "scm-orth", "scm-seq", "seph-km", "seph-rnd", "stmh", "lsh", "itq", "sdh")},
}


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = value


def paper_recipe(implementation: str) -> dict[str, Any]:
    """The paper's recipe as ``train.*``-relative keys: the method's ``train_defaults`` < the setup's ``recipe``."""
    from methods.registry import get_method_class

    out: dict[str, Any] = {}
    try:
        _flatten("", dict(get_method_class(implementation).train_defaults), out)
    except Exception:  # noqa: BLE001 - an unknown implementation (an old run): no recipe known
        pass
    setup = PAPER_SETUPS.get(implementation)
    if setup is not None:
        out.update(setup.recipe)
    return {k: v for k, v in out.items() if k in RECIPE_KEYS}


def _same(a: Any, b: Any) -> bool:
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-6)
    except (TypeError, ValueError):
        return str(a).lower() == str(b).lower()


def _text(row: Mapping[str, Any], key: str) -> str | None:
    v = row.get(key)
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)


def setup_flags(row: Mapping[str, Any]) -> list[str]:
    """Flag codes of one run (a row of the report's runs DataFrame: tags ``implementation``, ``init``,
    ``weights``, ``dataset``, ``protocol`` and the parameters ``p:<name>``), in :data:`LEGEND` order."""
    impl = _text(row, "implementation") or _text(row, "method") or ""
    setup = PAPER_SETUPS.get(impl)
    if setup is None:
        return []
    flags: set[str] = set()
    init = _text(row, "init") or ""
    weights = _text(row, "weights") or ""
    pixels = bool(init) and not init.startswith(("frozen-features", "n/a"))  # no init tag: features, no pixel network
    backbone = next((b for k in BACKBONE_PARAMS if (b := _text(row, f"p:{k}"))), None)
    if backbone == "auto":
        backbone = setup.auto_pixels if pixels else "mlp"
    if setup.backbones:
        if init.startswith("frozen-features"):
            flags.add("F")
        elif setup.pretrained and (not pixels or "random-init" in init or "random-init" in weights):
            flags.add("R")  # an MLP on hand-crafted features starts from nothing pretrained either
        if backbone is not None and backbone not in setup.backbones:
            flags.add("B")
        if any(not _same(_text(row, f"p:method_params.{k}"), v) for k, v in setup.params.items() if _text(row, f"p:method_params.{k}") is not None):
            flags.add("B")
    dataset = (_text(row, "dataset") or "").partition("+")[0]
    if setup.protocols and (dataset, _text(row, "protocol") or "") not in setup.protocols:
        flags.add("P")
    recipe = paper_recipe(impl)
    if setup.backbones and not recipe:
        flags.add("T")  # a deep method without its paper's recipe in code trains with HashBench's global settings
    for key, value in recipe.items():
        ours = _text(row, f"p:train.{key}")
        if ours is not None and not _same(ours, value):
            flags.add("T")
    return [c for c in LEGEND if c in flags]


def method_flags(df: pd.DataFrame) -> dict[str, list[str]]:
    """Flag codes per method of a group of runs: the union over its runs."""
    out: dict[str, set[str]] = {}
    for _, row in df.iterrows():
        out.setdefault(row["method"], set()).update(setup_flags(row))
    return {m: [c for c in LEGEND if c in s] for m, s in out.items()}


def label_methods(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with each method name followed by its flag codes in brackets (``csq [R B]``), for display."""
    if df.empty or "method" not in df:
        return df
    flags = method_flags(df)
    out = df.copy()
    out["method"] = [f"{m} [{' '.join(flags[m])}]" if flags.get(m) else m for m in df["method"]]
    return out


def legend_items(codes: list[str] | set[str] | None = None) -> list[tuple[str, str]]:
    """(code, meaning) for ``codes`` (all when None), in legend order."""
    return [(c, t) for c, t in LEGEND.items() if codes is None or c in codes]
