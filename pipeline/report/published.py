"""Published results as data: one YAML file per paper under ``pipeline/report/published/``.

A file holds a paper's retrieval tables. A table states once what its numbers share (dataset, protocol,
metric, cut-off, tie rule, code length, direction, scale) and lists columns and rows; a *cell* is the
table's fields, overridden by its column's, overridden by its row's, plus one value. :func:`load_published`
validates every file with pydantic (an error names the file and the entry, e.g.
``mfpmc.yaml: tables[2].rows[4].values: 5 values for 6 columns``) and flattens the tables into
:class:`PublishedCell` objects, each carrying paper, table, dataset, protocol, method, bits, direction,
metric, cut-off, tie convention and source (table, section, lines of the paper copy).

Which of *our* runs a cell compares with is explicit data too: each table's ``ours`` block maps the
paper's dataset (and protocol) names to our (dataset, protocol), the paper's method names to our
registered methods or variants, and lists *stand-ins* (our CPU datasets that take a paper dataset's
place, flagged "other dataset" in the report). Nothing is matched by guessing from names.

A table whose numbers are not in our copy of the paper (the CRH article, ADIH's tables) is kept with
``values_missing`` saying so, so the report can list it instead of silently leaving it out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.config.model import validate_model
from pipeline.core.errors import ConfigError

PUBLISHED_DIR = Path(__file__).parent / "published"

Direction = Literal["i2t", "t2i", "i2i", "t2t"]
Ties = Literal["index", "expected", "unknown"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Source(_Strict):
    table: str
    section: str | None = None
    lines: str | None = Field(None, description="lines of the plain-text copy in ../shared/papers")
    page: str | None = None


class _CellFields(_Strict):
    """Fields a table, a column or a row may set; the most specific wins."""

    dataset: str | None = None
    protocol: str | None = None
    direction: Direction | None = None
    bits: int | None = Field(None, gt=0)
    backbone: str | None = None


class Column(_CellFields):
    pass


class Row(_CellFields):
    method: str
    values: list[float | None]


class OurDataset(_Strict):
    dataset: str
    protocol: str | None = None  # None: the dataset's default protocol


class StandIn(_Strict):
    """One of our datasets standing in for the paper's (a CPU-sized substitute), flagged in the report."""

    dataset: str
    protocol: str = "standard"
    note: str
    for_dataset: str | None = None  # only for this paper dataset (default: every dataset of the table)
    for_protocol: str | None = None  # only for this paper protocol


class Ours(_Strict):
    datasets: dict[str, OurDataset] = {}
    protocols: dict[str, str] = {}  # paper protocol label -> our protocol (overrides the dataset's)
    stand_ins: list[StandIn] = []
    methods: dict[str, str | list[str]] = {}  # paper method -> our method/variant name(s)
    method_flags: dict[str, str] = {}  # our method -> a setup flag it always carries against this table


class Table(_CellFields):
    id: str
    title: str
    source: Source
    metric: Literal["map", "precision", "recall", "ndcg"] = "map"
    cutoff: int | Literal["all"] | None = Field(None, description="mAP@K cut-off; 'all' = the whole ranking; null = not stated")
    cutoff_stated: bool = True
    bits_stated: bool = True
    ties: Ties = "unknown"
    ties_note: str | None = None
    scale: Literal[1, 100] = 1  # 100: the paper prints percentages
    seeds: int | None = None
    note: str | None = None
    values_missing: str | None = None
    columns: list[Column] = [Column()]
    rows: list[Row] = []
    ours: Ours = Ours()

    @model_validator(mode="after")
    def _shape(self):
        for i, row in enumerate(self.rows):
            if len(row.values) != len(self.columns):
                raise ValueError(f"rows[{i}] ({row.method}): {len(row.values)} values for {len(self.columns)} columns")
            for v in row.values:
                if v is not None and not 0 <= v <= self.scale:
                    raise ValueError(f"rows[{i}] ({row.method}): value {v} outside [0, {self.scale}] (scale {self.scale})")
        if not self.rows and not self.values_missing:
            raise ValueError("a table without rows must say why in values_missing")
        unknown = [m for m in self.ours.methods if m not in {r.method for r in self.rows}]
        if self.rows and unknown:
            raise ValueError(f"ours.methods names {unknown}, which are not rows of the table")
        return self


class PaperFile(_Strict):
    paper: str
    citation: str
    document: str
    tables: list[Table] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self):
        ids = [t.id for t in self.tables]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"duplicate table ids {dup}")
        return self


@dataclass(frozen=True)
class PublishedCell:
    """One published number, on the 0-1 scale, with everything needed to compare it."""

    paper: str
    table: str
    table_title: str
    dataset: str | None
    protocol: str | None
    method: str
    bits: int | None
    direction: str | None
    metric: str
    cutoff: int | str | None
    cutoff_stated: bool
    ties: str
    backbone: str | None
    value: float
    printed: float  # as printed in the paper (percent where the paper prints percent)
    source: str

    def metric_name(self) -> str:
        """Our metric name for the paper's convention (``map@all`` when the cut-off is 'all' or not stated)."""
        k = self.cutoff if isinstance(self.cutoff, int) else "all"
        return f"{self.metric}@{k}" if self.metric == "map" else f"{self.metric[0]}@{k}"


@dataclass(frozen=True)
class PublishedTable:
    paper: str
    citation: str
    spec: Table
    cells: list[PublishedCell]

    @property
    def key(self) -> str:
        return f"{self.paper}/{self.spec.id}"


def source_text(paper: PaperFile, t: Table) -> str:
    parts = [paper.document, t.source.table]
    if t.source.section:
        parts.append(f"Sec. {t.source.section}")
    if t.source.lines:
        parts.append(f"lines {t.source.lines}")
    if t.source.page:
        parts.append(f"p. {t.source.page}")
    return ", ".join(parts)


def flatten(paper: PaperFile) -> list[PublishedTable]:
    out = []
    for t in paper.tables:
        cells = []
        for row in t.rows:
            for col, v in zip(t.columns, row.values):
                if v is None:
                    continue
                f = {k: getattr(row, k) or getattr(col, k) or getattr(t, k) for k in _CellFields.model_fields}
                cells.append(
                    PublishedCell(
                        paper=paper.paper,
                        table=t.id,
                        table_title=t.title,
                        method=row.method,
                        metric=t.metric,
                        cutoff=t.cutoff,
                        cutoff_stated=t.cutoff_stated,
                        ties=t.ties,
                        value=v / t.scale,
                        printed=v,
                        source=source_text(paper, t),
                        **f,
                    )
                )
        out.append(PublishedTable(paper.paper, paper.citation, t, cells))
    return out


def load_paper(path: Path) -> PaperFile:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    paper = validate_model(PaperFile, data, "", str(path))
    if paper.paper != path.stem:
        raise ConfigError(f"{path}: paper: {paper.paper!r} must equal the file name {path.stem!r}")
    return paper


def load_published(directory: Path = PUBLISHED_DIR) -> list[PublishedTable]:
    """Every table of every ``*.yaml`` under ``directory``, validated, in file then table order."""
    files = sorted(directory.glob("*.yaml"))
    if not files:
        raise ConfigError(f"{directory}: no published-results files (*.yaml)")
    return [t for f in files for t in flatten(load_paper(f))]


# -- mapping our runs to published cells -----------------------------------------------------------------


@dataclass(frozen=True)
class Match:
    """How one of our (dataset, protocol) relates to a paper dataset of a table."""

    paper_dataset: str | None
    paper_protocol: str | None
    flag: str | None  # "other dataset: ..." for a stand-in, None for the paper's own dataset


def dataset_matches(table: Table, dataset: str, protocol: str) -> list[Match]:
    """The paper (dataset, protocol) pairs of ``table`` that our (dataset, protocol) corresponds to."""
    o = table.ours
    paper_cells = {(c.dataset or table.dataset, c.protocol or table.protocol) for c in table.columns}
    found = []
    for pd, pp in sorted(paper_cells, key=str):
        ours = o.datasets.get(pd) if pd else None
        if ours and ours.dataset == dataset:
            want = o.protocols.get(pp) if pp in o.protocols else ours.protocol
            if want is None or want == protocol:
                found.append(Match(pd, pp, None))
                continue
        for s in o.stand_ins:
            if s.dataset == dataset and s.protocol == protocol and s.for_dataset in (None, pd) and s.for_protocol in (None, pp):
                found.append(Match(pd, pp, f"other dataset: {s.note}"))
                break
    return found


def paper_method_of(table: Table, method: str) -> str | None:
    """The paper's row name that our ``method`` (registered name or variant) stands for, or None."""
    for paper_name, ours in table.ours.methods.items():
        if method == ours or (isinstance(ours, list) and method in ours):
            return paper_name
    return None


def our_methods(table: Table) -> dict[str, list[str]]:
    return {k: [v] if isinstance(v, str) else list(v) for k, v in table.ours.methods.items()}
