"""Published results as data: every file loads, and spot-checked cells equal the paper text.

The expected values are transcribed by hand from the papers (file and lines of ../shared/papers named
beside each), independently of the YAML files, so a typo or a shifted column in a YAML fails here."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.core.errors import ConfigError
from pipeline.report.published import PUBLISHED_DIR, dataset_matches, load_paper, load_published, paper_method_of


def _cell(tables, paper, table, method, **where):
    t = next(t for t in tables if t.paper == paper and t.spec.id == table)
    hits = [c for c in t.cells if c.method == method and all(getattr(c, k) == v for k, v in where.items())]
    assert len(hits) == 1, (paper, table, method, where, hits)
    return hits[0]


def test_every_file_loads_and_names_its_paper():
    tables = load_published()
    papers = {t.paper for t in tables}
    assert {"mfpmc", "crh", "adih", "ltdual", "dcmh"} <= papers
    for t in tables:
        assert t.cells or t.spec.values_missing
        for c in t.cells:
            assert 0 < c.value <= 1 and c.source and c.metric == "map"


SPOT = [
    # MFPMC (001), Table 3, lines 236-241: MIRFlickr-25K
    ("mfpmc", "table3", "MFPMC", dict(direction="i2t", bits=16, dataset="MIRFlickr-25K"), 0.7501),
    ("mfpmc", "table3", "CMHH", dict(direction="t2i", bits=64, dataset="MIRFlickr-25K"), 0.7301),
    ("mfpmc", "table3", "DCMH", dict(direction="t2i", bits=32, dataset="MIRFlickr-25K"), 0.7576),
    # MFPMC Table 4, line 256: NUS-WIDE, PRDH
    ("mfpmc", "table4", "PRDH", dict(direction="i2t", bits=32, dataset="NUS-WIDE"), 0.6058),
    # MFPMC Table 5, lines 300-311: ablation at 64 bit
    ("mfpmc", "table5", "Base+LFPMC", dict(direction="t2i", bits=64, dataset="NUS-WIDE"), 0.6294),
    ("mfpmc", "table5", "Base", dict(direction="i2t", bits=64, dataset="MIRFlickr-25K"), 0.7250),
    # paper 004, Table 1 (line 209): Ours, MS-COCO 64 bit, percent
    ("ltdual", "table1", "Ours", dict(bits=64, dataset="MS-COCO"), 0.8563),
    # paper 004, Table 2 (line 220): BCL, CIFAR-10, imbalance 50
    ("ltdual", "table2", "BCL", dict(dataset="CIFAR-10", protocol="imbalance 50"), 0.8948),
    # paper 004, Table 3 (line 236): ResNet-50, ImageNette, imbalance 10
    ("ltdual", "table3", "Resnet50", dict(dataset="ImageNette", protocol="imbalance 10"), 0.8815),
    # QDCMH (CIN 2021, article 9968716), Table 2 page: SePH I->T 16 bits, SCM T->I 64 bits, MIRFlickr-25K
    ("qdcmh", "table2", "SePH", dict(direction="i2t", bits=16, dataset="MIRFlickr-25K"), 0.6740),
    ("qdcmh", "table2", "SCM", dict(direction="t2i", bits=64, dataset="MIRFlickr-25K"), 0.6541),
    # MFPMC Table 3, line 237: SePH I->T 64 bits (a shallow baseline, now mapped to seph-km)
    ("mfpmc", "table3", "SePH", dict(direction="i2t", bits=64, dataset="MIRFlickr-25K"), 0.6596),
    # DCMH CVPR 2017, Table 3: T->I, NUS-WIDE 64 bits
    ("dcmh", "table3", "DCMH", dict(direction="t2i", bits=64, dataset="NUS-WIDE"), 0.6571),
]


@pytest.mark.parametrize("paper,table,method,where,expected", SPOT)
def test_spot_checked_cells_match_the_paper(paper, table, method, where, expected):
    assert _cell(load_published(), paper, table, method, **where).value == pytest.approx(expected, abs=1e-9)


def test_cells_inherit_table_column_and_row_fields():
    tables = load_published()
    c = _cell(tables, "ltdual", "table3", "Alexnet", dataset="CIFAR-10", protocol="imbalance 100")
    assert (c.bits, c.direction, c.backbone, c.printed, c.cutoff) == (64, "i2i", "AlexNet", 73.04, None)
    assert c.metric_name() == "map@all" and not c.cutoff_stated
    assert "004_0c8e3834d50d3093.txt" in c.source and "Table 3" in c.source


def test_mapping_is_explicit():
    t5 = next(t for t in load_published() if t.key == "mfpmc/table5").spec
    assert paper_method_of(t5, "mfpmc-imfm-tmfm") == "Base+IMFM+TMFM"
    assert paper_method_of(t5, "dcmh") is None
    own = dataset_matches(t5, "nuswide", "dcmh")
    assert [(m.paper_dataset, m.flag) for m in own] == [("NUS-WIDE", None)]
    stand = dataset_matches(t5, "wikipedia", "standard")
    assert {m.paper_dataset for m in stand} == {"MIRFlickr-25K", "NUS-WIDE"} and all(m.flag.startswith("other dataset") for m in stand)
    assert dataset_matches(t5, "nuswide", "adih") == []  # another protocol is no match
    lt = next(t for t in load_published() if t.key == "ltdual/table2").spec
    assert [(m.paper_dataset, m.paper_protocol) for m in dataset_matches(lt, "cifar10", "lt50")] == [("CIFAR-10", "imbalance 50")]


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / f"{name}.yaml"
    p.write_text(text)
    return p


def test_errors_name_the_file_and_entry(tmp_path):
    bad = _write(
        tmp_path,
        "x",
        "paper: x\ncitation: c\ndocument: d\ntables:\n  - id: t1\n    title: T\n    source: {table: 'Table 1'}\n"
        "    columns: [{bits: 16}, {bits: 32}]\n    rows:\n      - {method: A, values: [0.5]}\n",
    )
    with pytest.raises(ConfigError, match=r"x\.yaml: tables\[0\].*rows\[0\] \(A\): 1 values for 2 columns"):
        load_paper(bad)
    typo = _write(tmp_path, "y", "paper: y\ncitation: c\ndocument: d\ntables:\n  - {id: t, title: T, source: {table: T}, rows: [], values_missing: m, cutof: 5}\n")
    with pytest.raises(ConfigError, match=r"y\.yaml: tables\[0\]\.cutof: unknown key"):
        load_paper(typo)
    name = _write(tmp_path, "z", "paper: other\ncitation: c\ndocument: d\ntables:\n  - {id: t, title: T, source: {table: T}, rows: [], values_missing: m}\n")
    with pytest.raises(ConfigError, match="must equal the file name"):
        load_paper(name)


def test_the_shipped_directory_is_the_default():
    assert PUBLISHED_DIR.is_dir() and (PUBLISHED_DIR / "mfpmc.yaml").is_file()


def test_classic_rows_map_to_the_handcrafted_feature_datasets():
    """MFPMC's shallow baselines compare with our classic methods on <dataset>+<hand-crafted feature>, flagged."""
    tables = {t.key: t for t in load_published()}
    t3, t4 = tables["mfpmc/table3"].spec, tables["mfpmc/table4"].spec
    assert paper_method_of(t3, "seph-km") == "SePH" and paper_method_of(t4, "scm-seq") == "SCM" and paper_method_of(t4, "cmfh") == "CMFH"
    (m,) = dataset_matches(t3, "mirflickr25k+sift512", "dcmh")
    assert m.paper_dataset == "MIRFlickr-25K" and "512-d" in m.flag
    (m,) = dataset_matches(t4, "nuswide+sift-bow500", "dcmh")
    assert m.paper_dataset == "NUS-WIDE" and "500-d" in m.flag
    assert tables["classic/wiki"].spec.values_missing and not tables["classic/wiki"].cells
