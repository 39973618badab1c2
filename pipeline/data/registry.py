"""Dataset registry: ``@register_dataset`` on the class, plus one line in ``_MODULES``.

A dataset class declares its modalities, protocols and parameter model, and implements ``fetch``
(raw files into ``data/raw/<name>``, verified) and ``prepare`` (raw files into the prepared format of
:mod:`pipeline.data.formats`). Nothing downstream of ``prepare`` reads raw files.
"""

from __future__ import annotations

import importlib
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


class DatasetSpec:
    """Base class of a dataset: metadata plus the fetch and prepare steps."""

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
