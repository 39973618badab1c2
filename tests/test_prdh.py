"""PRDH (Yang et al., AAAI 2017): its loss terms against hand computations, and real training runs.

Training runs use the real loop, ``pipeline.train.loop.run_trial``, on the embedded Wikipedia data
(prepared once per session by the ``prepared_root`` fixture), with a TrialSpec from a params dict.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import methods.prdh  # noqa: F401  (registers "prdh")
from methods.base import DataInfo, ModalitySpec, TrainData
from methods.losses.crossmodal import batch_covariance, decorrelation_loss
from methods.registry import create_method
from pipeline.config import expand_suite, load_params
from pipeline.train.loop import run_trial
from tests.conftest import REPO, write_params

import yaml


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- shared helper (also used by tests/test_cmhh.py) --------------------------------------------
def wikipedia_trial(tmp_path, prepared_root, method: str, method_params: dict, bits: int, seed: int, epochs: int):
    """Run one real trial of ``method`` on prepared Wikipedia; returns the flat metrics and the codes."""
    p = copy.deepcopy(yaml.safe_load((REPO / "params.yaml").read_text()))
    p["methods"][method] = dict(method_params)
    p["eval"]["index"]["kinds"] = ["flat"]
    p["suites"] = {
        "t": {"profile": "demo", "dataset": "wikipedia", "methods": [method], "bits": [bits], "seeds": [seed],
              "train": {"epochs": epochs, "batch_size": 128}}
    }
    spec = expand_suite(load_params(write_params(tmp_path, p)), "t")[0]
    outcome = run_trial(spec, prepared_root / "data" / "prepared" / "wikipedia", device="cpu")
    return outcome.evaluation.flat_metrics(), outcome


# -- loss terms ---------------------------------------------------------------------------------
def test_decorrelation_hand_computed():
    h = torch.tensor([[1.0, 2.0], [3.0, 0.0], [-1.0, 1.0]])
    # means: (1, 1); centred rows: (0, 1), (2, -1), (-2, 0)
    # C = 1/3 [[0+4+4, 0-2+0], [., 1+1+0]] = [[8/3, -2/3], [-2/3, 2/3]]
    c = batch_covariance(h)
    assert torch.allclose(c, torch.tensor([[8 / 3, -2 / 3], [-2 / 3, 2 / 3]]))
    # 1/2 * (two off-diagonal entries squared) = 1/2 * 2 * 4/9 = 4/9
    assert float(decorrelation_loss(h)) == pytest.approx(4 / 9)


def test_decorrelation_matches_numpy_and_ignores_variances():
    rng = np.random.RandomState(0)
    x = rng.randn(7, 5)
    c = np.cov(x, rowvar=False, bias=True)
    want = 0.5 * (np.sum(c**2) - np.sum(np.diag(c) ** 2))
    assert float(decorrelation_loss(torch.tensor(x))) == pytest.approx(want, rel=1e-10)
    # independent columns with different scales: zero; the same column twice: its variance squared
    iso = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 5.0], [0.0, -5.0]])
    assert float(decorrelation_loss(iso)) == pytest.approx(0.0)
    col = torch.tensor([[1.0], [-1.0], [3.0], [-3.0]])
    var = float((col**2).mean())
    assert float(decorrelation_loss(torch.cat([col, col], 1))) == pytest.approx(var**2)


def _nll(a, b, s):
    total = 0.0
    for i in range(len(a)):
        for j in range(len(b)):
            t = 0.5 * float(np.dot(a[i], b[j]))
            total += -(s[i, j] * t - np.log1p(np.exp(t)))
    return total


def test_training_step_intra_and_inter_terms_hand_computed():
    """The step's 'inter' and 'intra' terms equal the pairwise NLL of the batch against the other and the own modality."""
    torch.manual_seed(0)
    n, bits = 6, 4
    info = DataInfo(
        "toy", {"image": ModalitySpec("image", "features", (3,)), "text": ModalitySpec("text", "features", (2,))}, 2, False, n
    )
    m = create_method("prdh", {"image_hidden": (8,), "text_hidden": (8,), "normalize": False, "lam": 0.0, "gamma": 0.0}, info, bits)
    labels = torch.tensor([[1, 0], [0, 1], [1, 0], [1, 0], [0, 1], [0, 1]], dtype=torch.float32)
    img, txt = torch.randn(n, 3), torch.randn(n, 2)
    m.on_train_start(TrainData(labels=labels, info=info, batches=lambda: iter([{"index": torch.arange(n), "labels": labels, "image": img, "text": txt}])))
    idx = torch.tensor([1, 3])
    batch = {"index": idx, "labels": labels[idx], "image": img[idx], "text": txt[idx]}
    F0, G0 = m.F_buf.clone().numpy(), m.G_buf.clone().numpy()
    out = m.image_net(img[idx]).detach().numpy()
    terms = m.training_step(batch, "image")
    s = (labels[idx].numpy() @ labels.numpy().T > 0).astype(float)
    F_now = F0.copy()
    F_now[idx.numpy()] = out
    assert float(terms["inter"].detach()) == pytest.approx(_nll(out, G0, s), rel=1e-5)
    assert float(terms["intra"].detach()) == pytest.approx(_nll(out, F_now, s), rel=1e-5)
    assert float(terms["loss"].detach()) == pytest.approx(float(terms["inter"].detach()) + float(terms["intra"].detach()), rel=1e-6)
    assert np.allclose(m.F_buf[idx].numpy(), out)  # stored rows refreshed


# -- training on Wikipedia ----------------------------------------------------------------------
MARGIN = 0.05  # CMHH (tests/test_cmhh.py): trained mAP@all must beat random codes by this much, both directions
PRDH_MARGIN = 0.03  # PRDH after 20 epochs learns slower than CMHH (i2t ~0.15 after 10 epochs, ~0.24 after 20; random 0.11)


def test_prdh_beats_random_on_wikipedia_and_is_deterministic(tmp_path, prepared_root):
    params = {"image_hidden": [512], "text_hidden": [512]}
    m, _ = wikipedia_trial(tmp_path, prepared_root, "prdh", params, bits=16, seed=0, epochs=20)
    for d in ("i2t", "t2i"):
        assert m[f"{d}/map@all"] > m[f"{d}/random/map@all"] + PRDH_MARGIN, (d, m[f"{d}/map@all"], m[f"{d}/random/map@all"])
    # same seed -> identical packed codes (short runs)
    _, o1 = wikipedia_trial(tmp_path, prepared_root, "prdh", params, bits=16, seed=1, epochs=2)
    _, o2 = wikipedia_trial(tmp_path, prepared_root, "prdh", params, bits=16, seed=1, epochs=2)
    for part, by_mod in o1.evaluation.packed.items():
        for mod, arr in by_mod.items():
            assert np.array_equal(arr, o2.evaluation.packed[part][mod]), (part, mod)
