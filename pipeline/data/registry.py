"""Dataset registry: ``@register_dataset`` on the class, plus one line in ``_MODULES``.

A dataset class declares its modalities, protocols and parameter model, and implements ``fetch``
(raw files into ``data/raw/<name>``, verified) and ``prepare`` (raw files into the prepared format of
:mod:`pipeline.data.formats`). Nothing downstream of ``prepare`` reads raw files.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from pipeline.core.errors import DataError

_MODULES: tuple[str, ...] = (
    "pipeline.data.wikipedia",
    "pipeline.data.digits",
    "pipeline.data.synthetic",
    "pipeline.data.mirflickr25k",
    "pipeline.data.nuswide",
    "pipeline.data.coco",
    "pipeline.data.nabirds",
    "pipeline.data.longtail",
)

_REGISTRY: dict[str, type["DatasetSpec"]] = {}
_loaded = False


class DatasetParams(BaseModel):
    """Base of every dataset's parameters. The split seed belongs to the protocol, not to trials."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    split_seed: int = Field(0, ge=0)


@dataclass(frozen=True)
class MapCutoff:
    """A protocol's paper convention for mAP: the cut-off K of mAP@K (None: the whole ranking, mAP@all)
    and where the convention comes from. It is evaluated beside mAP@all for every trial of the protocol."""

    k: int | None
    source: str

    @property
    def metric(self) -> str:
        return f"map@{self.k or 'all'}"


#: the convention of a protocol no paper fixes: the whole ranking
MAP_ALL = MapCutoff(None, "the whole ranking (mAP@all): no paper convention for this protocol")

#: OrthoHash's official code (github.com/kamwoh/orthohash, configs.py, ``R()``): imagenet100 1000, cifar10
#: 59000 ("mAP@all"), nuswide 5000, coco 5000; CSQ (Yuan et al., CVPR 2020, Sec. 4.1) reports the same
#: mAP@1000 for ImageNet and mAP@5000 for NUS-WIDE and MS COCO.
MAP_5000_NUS_COCO = MapCutoff(5000, "mAP@5000: CSQ (CVPR 2020, Sec. 4.1) and OrthoHash's code (kamwoh/orthohash configs.py R(): nuswide/coco 5000)")
MAP_1000_IMAGENET = MapCutoff(1000, "mAP@1000, the ImageNet convention: CSQ (CVPR 2020, Sec. 4.1) and OrthoHash's code (configs.py R(): imagenet100 1000)")
MAP_ALL_CIFAR = MapCutoff(None, "mAP@all, the CIFAR-10 convention of OrthoHash's code (configs.py R(): cifar10 59000 = the whole database)")


class DatasetSpec:
    """Base class of a dataset: metadata plus the fetch and prepare steps.

    ``map_cutoffs``: protocol -> :class:`MapCutoff`, the mAP convention of the papers that use the
    protocol (absent: :data:`MAP_ALL`); the trial's ``eval.topk`` always includes it."""

    name: ClassVar[str] = ""
    modalities: ClassVar[tuple[str, ...]] = ("image",)
    protocols: ClassVar[tuple[str, ...]] = ("standard",)
    default_protocol: ClassVar[str] = "standard"
    multi_label: ClassVar[bool] = False
    Params: ClassVar[type[DatasetParams]] = DatasetParams
    citation: ClassVar[str] = ""
    #: hand-crafted image descriptors (name -> pipeline.data.handcrafted.HandcraftedFeature); ``prepare``
    #: writes ``<name>+<feature>`` for each one whose raw file was fetched
    handcrafted: ClassVar[dict] = {}
    map_cutoffs: ClassVar[dict[str, MapCutoff]] = {}

    def map_cutoff(self, protocol: str) -> MapCutoff:
        """The paper convention for mAP on ``protocol``."""
        return self.map_cutoffs.get(protocol, MAP_ALL)

    def fetch(self, params: DatasetParams, raw_dir: Path) -> None:
        raise NotImplementedError

    def prepare(self, params: DatasetParams, raw_dir: Path, out_dir: Path) -> None:
        raise NotImplementedError

    def prepare_handcrafted(self, params: DatasetParams, raw_dir: Path, out_dir: Path, name: str) -> Path:
        """Write the hand-crafted feature dataset ``<name>+<feature>`` beside the prepared ``out_dir``."""
        have = sorted(f"{n}+{f}" for n, c in _REGISTRY.items() for f in c.handcrafted)
        raise DataError(f"{self.name}: no hand-crafted image features; feature datasets: {', '.join(have) or 'none'}")


def register_dataset(cls: type[DatasetSpec]) -> type[DatasetSpec]:
    if not cls.name:
        raise DataError(f"{cls.__qualname__} has no 'name'")
    _REGISTRY[cls.name] = cls
    return cls


def _load() -> None:
    global _loaded
    if not _loaded:
        for module in _MODULES:
            importlib.import_module(module)
        _loaded = True


def available_datasets() -> list[str]:
    _load()
    return sorted(_REGISTRY)


def get_dataset(name: str) -> DatasetSpec:
    """An instance of the dataset registered as ``name``; a clear error listing known names otherwise.

    A feature dataset ``<dataset>+<backbone>`` (frozen-backbone features, pipeline/data/features.py) has the
    metadata (modalities, protocols) of ``<dataset>``."""
    _load()
    name = name.partition("+")[0]
    try:
        return _REGISTRY[name]()
    except KeyError:
        raise DataError(f"unknown dataset {name!r}; available: {', '.join(sorted(_REGISTRY))}") from None
