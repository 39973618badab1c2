"""Setup flags (pipeline/report/flags.py) on runs carrying random-init vs pretrained tags, their rendering in
every report table, and the protocols' paper mAP cut-offs (resolved into eval.topk, reported beside mAP@all)."""

from __future__ import annotations

import pandas as pd
import pytest

from pipeline.config import load_params
from pipeline.config.trials import TrialRequest, resolve_trial
from pipeline.report.build import build_report
from pipeline.report.collect import ProfileRuns
from pipeline.report.flags import LEGEND, label_methods, method_flags, paper_recipe, setup_flags
from tests.conftest import REPO

SHA = "ab" * 32


def _row(method="csq", impl=None, dataset="nuswide", protocol="dpsh", init=None, weights=None, **params) -> dict:
    row = {"method": method, "implementation": impl or method, "dataset": dataset, "protocol": protocol, "init": init, "weights": weights}
    row.update({f"p:{k}": v for k, v in params.items()})
    return row


PRETRAINED = dict(init="pretrained (resnet50)", weights=f"weights=pretrained resnet50 sha256={SHA}")
RANDOM = dict(init="random-init (resnet50)", weights="weights=random-init (resnet50)")


def test_pretrained_paper_backbone_on_the_papers_protocol_is_flagged_only_for_the_recipe():
    # CSQ has no recipe in code yet: HashBench's global train block is not the paper's -> T only
    assert paper_recipe("csq") == {}
    assert setup_flags(_row(**PRETRAINED, **{"method_params.backbone": "resnet50"})) == ["T"]


def test_random_init_other_backbone_stand_in_dataset():
    r = _row(dataset="digits", protocol="standard", init="random-init (auto)", weights="weights=random-init (auto)",
             **{"method_params.backbone": "auto"})
    assert setup_flags(r) == ["R", "B", "P", "T"]  # auto on pixels = a small CNN, randomly initialised
    assert setup_flags(_row(**RANDOM, **{"method_params.backbone": "resnet50"})) == ["R", "T"]


def test_features_runs_frozen_and_handcrafted():
    frozen = _row(dataset="cifar10+efficientnet_lite0", protocol="dpsh", method="orthohash",
                  init="frozen-features efficientnet_lite0 (efficientnet_lite0_imagenet)", **{"method_params.backbone": "auto"})
    assert setup_flags(frozen) == ["F", "B", "T"]  # cifar10 dpsh is one of OrthoHash's protocols: no P
    # an MLP on Wikipedia's SIFT bag of words: no init tag, nothing pretrained
    bow = _row(method="mfpmc", dataset="wikipedia", protocol="standard", **{"method_params.image_backbone": "auto"})
    assert setup_flags(bow) == ["R", "B", "P", "T"]


def test_recipe_from_the_methods_code_and_the_papers_epochs():
    recipe = paper_recipe("dcmh")  # DCMH's train_defaults + the paper's 500 epochs
    assert recipe["optimizer.name"] == "sgd" and recipe["epochs"] == 500 and recipe["batch_size"] == 128
    train = {f"train.{k}": str(v) for k, v in recipe.items()}
    paper = _row(method="dcmh", dataset="mirflickr25k", protocol="dcmh", init="pretrained (cnnf)", **{"method_params.image_backbone": "cnnf"}, **train)
    assert setup_flags(paper) == []
    short = {**paper, "p:train.epochs": "30"}
    assert setup_flags(short) == ["T"]
    adam = {**paper, "method": "dcmh-adam", "p:train.optimizer.name": "adam"}
    assert setup_flags(adam) == ["T"]  # a variant is compared with its implementation's paper
    # ltdual-tiny: the paper's dual stream, but scaled down -> another image network
    tiny = _row(method="ltdual-tiny", impl="ltdual", dataset="cifar10", protocol="lt100", init="pretrained (efficientnet, swin)",
                **{"method_params.backbone": "auto", "method_params.size": "tiny", "train.epochs": "50", "train.batch_size": "32",
                   "train.optimizer.name": "adam", "train.optimizer.lr": "0.001"})
    assert setup_flags(tiny) == ["B"]
    assert setup_flags({**tiny, "p:method_params.size": "full"}) == []


def test_classic_and_unknown_methods_carry_no_flag():
    assert setup_flags(_row(method="cmfh", dataset="wikipedia", protocol="standard")) == []
    assert setup_flags(_row(method="not-a-method")) == []


def test_method_flags_are_the_union_over_runs_and_labels_follow():
    df = pd.DataFrame([_row(**PRETRAINED, **{"method_params.backbone": "resnet50"}), _row(**RANDOM, **{"method_params.backbone": "resnet50"})])
    assert method_flags(df) == {"csq": ["R", "T"]}
    assert label_methods(df)["method"].tolist() == ["csq [R T]", "csq [R T]"]


def _runs() -> pd.DataFrame:
    rows = []
    for suite, tags in (("s-pre", PRETRAINED), ("s-rand", RANDOM)):
        for seed in (0, 1):
            r = _row(**tags, **{"method_params.backbone": "resnet50"})
            r.update(suite=suite, bits=16, seed=seed, run_id=f"{suite}{seed}", trial_key=f"k{suite}{seed}",
                     **{"m:i2i/map@all": 0.5 + seed / 100, "m:i2i/map@5000": 0.6 + seed / 100})
            rows.append(r)
    return pd.DataFrame(rows)


def test_report_flags_every_table_and_shows_the_papers_cutoff(tmp_path):
    html = build_report(ProfileRuns("full", _runs(), {}, []), tmp_path, title="T", notes={}).read_text()
    # the random-init suite's rows carry R in the headline, cut-off and detail tables; the pretrained ones do not
    assert html.count("<td>csq [R T]</td>") == 3  # mAP@all, mAP@5000, detail
    assert html.count("<td>csq [T]</td>") == 3
    assert "map@5000 (the papers' cut-off)" in html and "kamwoh/orthohash" in html
    for code, text in LEGEND.items():
        assert f"<b>{code}</b> = {text}".replace("'", "&#39;") in html
    metrics = (tmp_path / "metrics.json").read_text()
    assert '"csq"' in metrics and "[R" not in metrics  # metrics.json keeps the plain method names


@pytest.mark.parametrize("dataset, protocol, topk", [
    ("nuswide", "dpsh", [100, 500, 5000]),   # CSQ / OrthoHash: mAP@5000
    ("coco", "hashnet", [100, 500, 5000]),
    ("imagenette", "lt100", [100, 500, 1000]),  # the ImageNet convention
    ("cifar10", "lt100", [100, 500]),          # mAP@all (always computed)
    ("mirflickr25k", "adih", [100, 500]),
    ("nuswide", "dcmh", [100, 500]),
])
def test_paper_cutoff_is_added_to_eval_topk(dataset, protocol, topk):
    params = load_params(REPO / "params.yaml")
    method = "dcmh" if protocol in ("dcmh", "adih") else "csq"
    spec = resolve_trial(params, TrialRequest(label="t", dataset=dataset, method=method, bits=16, seed=0, protocol=protocol))
    assert spec.eval.topk == topk
    base = resolve_trial(params, TrialRequest(label="t", dataset="nuswide", method="csq", bits=16, seed=0, protocol="dpsh", eval_override={"topk": [5000]}))
    assert base.eval.topk == [5000]  # already there: not duplicated
