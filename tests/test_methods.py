"""Methods train on small real-structured problems and beat random codes (same seed -> identical codes,
for every method and variant: tests/test_contract.py).

Data: scikit-learn's bundled handwritten digits (1797 real 8x8 images, 10 classes; no download).
The loop below mimics pipeline/train/loop.py's contract: create -> configure_optimizers ->
on_train_start -> per epoch, per phase, shuffled batches of training_step + optimizer step ->
on_epoch_end; then encode in eval mode under no_grad.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from methods import available_methods, create_method
from methods.base import DataInfo, ModalitySpec, TrainData
from pipeline.core.errors import MethodError

sklearn_datasets = pytest.importorskip("sklearn.datasets")

N_QUERY, N_TRAIN = 200, 1000


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- data ---------------------------------------------------------------------------------------
def _digits():
    d = sklearn_datasets.load_digits()
    images = torch.tensor(d.images / 16.0, dtype=torch.float32).unsqueeze(1)  # (N, 1, 8, 8) in [0, 1]
    labels = torch.nn.functional.one_hot(torch.tensor(d.target), 10).float()
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(123))
    return images[perm], labels[perm]


def _standardise(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return (x - ref.mean(0)) / (ref.std(0) + 1e-6)


def digits_image_only():
    """query = first 200, database = the rest, train = the first 1000 of the database."""
    images, labels = _digits()
    return {"image": images}, labels


def digits_two_halves():
    """Two 'modalities' of every digit: the left 4 columns (image) and the right 4 columns (text), as features."""
    images, labels = _digits()
    left = images[:, 0, :, :4].reshape(len(images), -1)
    right = images[:, 0, :, 4:].reshape(len(images), -1)
    train = slice(N_QUERY, N_QUERY + N_TRAIN)
    return {"image": _standardise(left, left[train]), "text": _standardise(right, right[train])}, labels


# -- a miniature of the training loop -----------------------------------------------------------
def train_and_encode(name, params, info, data, labels, bits, epochs, seed=0, batch_size=64, lr=1e-3):
    torch.manual_seed(seed)
    method = create_method(name, params, info, bits)
    opts = method.configure_optimizers(lambda ps: torch.optim.Adam(ps, lr=lr))
    tr = torch.arange(N_QUERY, N_QUERY + N_TRAIN)
    train_x = {k: v[tr] for k, v in data.items()}
    train_y = labels[tr]

    def batch_of(idx):
        return {"index": idx, "labels": train_y[idx], **{k: v[idx] for k, v in train_x.items()}}

    def fixed_batches():
        for s in range(0, N_TRAIN, batch_size):
            yield batch_of(torch.arange(s, min(s + batch_size, N_TRAIN)))

    td = TrainData(labels=train_y, info=info, batches=fixed_batches)
    method.on_train_start(td)
    gen = torch.Generator().manual_seed(seed)
    history = []
    for epoch in range(epochs):
        for phase in method.phases(epoch):
            perm = torch.randperm(N_TRAIN, generator=gen)
            for s in range(0, N_TRAIN, batch_size):
                method.train()
                losses = method.training_step(batch_of(perm[s : s + batch_size]), phase)
                assert "loss" in losses and all(torch.isfinite(v) for v in losses.values())
                opts[phase].zero_grad()
                losses["loss"].backward()
                opts[phase].step()
            history.append((phase, float(losses["loss"].detach())))
        method.on_epoch_end(epoch, td)
    method.eval()
    q = torch.arange(0, N_QUERY)
    db = torch.arange(N_QUERY, len(labels))
    codes = {}
    with torch.no_grad():
        for m in method.modalities:
            codes[m] = {"query": method.encode({m: data[m][q]}, m), "db": method.encode({m: data[m][db]}, m)}
    return method, codes, labels[q].numpy(), labels[db].numpy(), history


# -- reference mAP (slow, obviously correct) ----------------------------------------------------
def mean_average_precision(q_codes, db_codes, q_labels, db_labels) -> float:
    """mAP over the whole database, ranking by Hamming distance of sign codes, ties in index order."""
    qb = np.where(np.asarray(q_codes) >= 0, 1, -1)
    db = np.where(np.asarray(db_codes) >= 0, 1, -1)
    ham = (qb.shape[1] - qb @ db.T) / 2
    aps = []
    for i in range(len(qb)):
        order = np.argsort(ham[i], kind="stable")
        rel = (db_labels[order] @ q_labels[i] > 0).astype(float)
        if rel.sum() == 0:
            continue
        hits = np.cumsum(rel)
        aps.append(float(np.sum(rel * hits / np.arange(1, len(rel) + 1)) / rel.sum()))
    return float(np.mean(aps))


def random_map(q_labels, db_labels, bits, seed=0) -> float:
    rng = np.random.RandomState(seed)
    return mean_average_precision(
        rng.randn(len(q_labels), bits), rng.randn(len(db_labels), bits), q_labels, db_labels
    )


def test_reference_map_on_perfect_and_worst_codes():
    q_labels = np.eye(2)[[0, 1]]
    db_labels = np.eye(2)[[0, 1, 0]]
    codes = {0: [1, 1], 1: [-1, -1]}
    q = np.array([codes[0], codes[1]])
    db = np.array([codes[0], codes[1], codes[0]])
    assert mean_average_precision(q, db, q_labels, db_labels) == pytest.approx(1.0)
    # query 0 ranks [1] first (worst): relevant at ranks 2, 3 -> AP = (1/2 + 2/3) / 2
    assert mean_average_precision(q[:1], -db, q_labels[:1], db_labels) == pytest.approx((1 / 2 + 2 / 3) / 2)


# -- registry -----------------------------------------------------------------------------------
def test_both_methods_registered_and_params_validated():
    assert {"dcmh", "csq"} <= set(available_methods())
    info = DataInfo("digits", {"image": ModalitySpec("image", "pixels", (1, 8, 8))}, 10, False, N_TRAIN)
    with pytest.raises(ValidationError):
        create_method("csq", {"lamda_q": 1.0}, info, 16)  # typo is an error, not ignored
    with pytest.raises(MethodError):
        create_method("dcmh", None, info, 16)  # no text modality
    with pytest.raises(MethodError):
        create_method("csq", {"backbone": "resnet18"}, DataInfo("f", {"image": ModalitySpec("image", "features", (64,))}, 10, False, 10), 16)


# -- CSQ ----------------------------------------------------------------------------------------
CSQ_PARAMS = {"hidden": [128]}


def test_csq_learns_digits_pixels():
    data, labels = digits_image_only()
    info = DataInfo("digits", {"image": ModalitySpec("image", "pixels", (1, 8, 8))}, 10, False, N_TRAIN)
    bits = 16
    method, codes, ql, dl, history = train_and_encode("csq", CSQ_PARAMS, info, data, labels, bits, epochs=6)
    assert method.center_kind == "hadamard"
    got = mean_average_precision(codes["image"]["query"].numpy(), codes["image"]["db"].numpy(), ql, dl)
    base = random_map(ql, dl, bits)
    assert history[-1][1] < history[0][1]
    # observed 0.99 vs 0.10 for random codes
    assert got > base + 0.4, (got, base)


# -- DCMH ---------------------------------------------------------------------------------------
DCMH_PARAMS = {"image_hidden": [128], "text_hidden": [128]}


def _halves_info():
    return DataInfo(
        "digits-halves",
        {"image": ModalitySpec("image", "features", (32,)), "text": ModalitySpec("text", "features", (32,))},
        10,
        False,
        N_TRAIN,
    )


def test_dcmh_learns_cross_modal_digit_halves():
    data, labels = digits_two_halves()
    bits = 16
    method, codes, ql, dl, history = train_and_encode(
        "dcmh", DCMH_PARAMS, _halves_info(), data, labels, bits, epochs=12, batch_size=32
    )
    base = random_map(ql, dl, bits)
    i2t = mean_average_precision(codes["image"]["query"].numpy(), codes["text"]["db"].numpy(), ql, dl)
    t2i = mean_average_precision(codes["text"]["query"].numpy(), codes["image"]["db"].numpy(), ql, dl)
    # observed 0.46 (image->text) and 0.48 (text->image) vs 0.10 for random codes
    assert i2t > base + 0.25, (i2t, base)
    assert t2i > base + 0.25, (t2i, base)
    # B stays the sign of the stored F + G after the last closed-form update
    assert torch.equal(method.B_buf, torch.where(method.F_buf + method.G_buf >= 0, 1.0, -1.0))


def test_dcmh_stale_balance_estimate_does_not_train_under_adam():
    """Why balance_f1 'auto' takes 'drift' under Adam: the stored-rows ('stale') F^T 1 of the authors' code lags the
    network by a pass; with Adam the balance gradient overshoots and the codes stay at random-level mAP."""
    data, labels = digits_two_halves()
    params = {**DCMH_PARAMS, "balance_f1": "stale"}
    _, codes, ql, dl, _ = train_and_encode("dcmh", params, _halves_info(), data, labels, 16, epochs=12, batch_size=32)
    stale = mean_average_precision(codes["image"]["query"].numpy(), codes["text"]["db"].numpy(), ql, dl)
    assert stale < random_map(ql, dl, 16) + 0.1  # observed 0.12 vs 0.10 (and 0.46 with 'drift')


def test_dcmh_pixels_and_bow_inputs_build_and_step():
    info = DataInfo(
        "toy",
        {"image": ModalitySpec("image", "pixels", (3, 16, 16)), "text": ModalitySpec("text", "bow", (50,))},
        4,
        True,
        12,
    )
    torch.manual_seed(0)
    m = create_method("dcmh", {"image_hidden": [16], "text_hidden": [16], "init": "random"}, info, 8)
    labels = (torch.rand(12, 4) > 0.5).float()
    m.on_train_start(TrainData(labels=labels, info=info))
    batch = {"index": torch.arange(4), "labels": labels[:4], "image": torch.rand(4, 3, 16, 16), "text": torch.rand(4, 50)}
    for phase in m.phases(0):
        out = m.training_step(batch, phase)
        out["loss"].backward()
        assert set(out) == {"loss", "likelihood", "quantization", "balance"}
    m.eval()
    with torch.no_grad():
        assert m.encode(batch, "image").shape == (4, 8)
        assert m.encode(batch, "text").shape == (4, 8)


# -- encoders -----------------------------------------------------------------------------------
def test_build_encoder_kinds_and_sizes():
    from methods.nets import build_encoder

    torch.manual_seed(0)
    cases = [
        (ModalitySpec("text", "bow", (30,)), "auto", (4, 30)),
        (ModalitySpec("image", "features", (12,)), "mlp", (4, 12)),
        (ModalitySpec("image", "pixels", (1, 8, 8)), "auto", (4, 1, 8, 8)),
        (ModalitySpec("image", "pixels", (3, 224, 224)), "small_cnn", (2, 3, 224, 224)),
    ]
    for spec, backbone, shape in cases:
        enc = build_encoder(spec, 16, backbone, hidden=[8])
        assert enc(torch.rand(*shape)).shape == (shape[0], 16)
    assert len([m for m in build_encoder(cases[0][0], 16, hidden=[]).head if isinstance(m, torch.nn.Linear)]) == 1
    with pytest.raises(MethodError):
        build_encoder(ModalitySpec("image", "features", (12,)), 16, "resnet18")
    with pytest.raises(MethodError):
        build_encoder(ModalitySpec("image", "pixels", (3, 32, 32)), 16, "no_such_net")
    with pytest.raises(MethodError):
        build_encoder(ModalitySpec("image", "pixels", (3, 32, 32)), 16, "small_cnn", weights="/nonexistent.pt")


def test_torchvision_backbone_random_init_and_local_weights(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    from methods.nets import build_encoder

    spec = ModalitySpec("image", "pixels", (1, 32, 32))
    torch.manual_seed(0)
    enc = build_encoder(spec, 8, "resnet18", hidden=[])
    assert enc.trunk_dim == 512 and enc(torch.rand(2, 1, 32, 32)).shape == (2, 8)
    ref = torchvision.models.resnet18(weights=None)
    with torch.no_grad():
        ref.conv1.weight.fill_(0.01)
    path = tmp_path / "resnet18.pt"
    torch.save(ref.state_dict(), path)
    loaded = build_encoder(spec, 8, "resnet18", hidden=[], weights=str(path))
    assert torch.equal(loaded.trunk.model.conv1.weight, ref.conv1.weight)
    with pytest.raises(MethodError):
        build_encoder(spec, 8, "resnet18", weights=str(tmp_path / "missing.pt"))


def test_dcmh_balance_estimator_follows_the_optimiser():
    """balance_f1 'auto': the authors' stored rows ('stale') under plain SGD, 'drift' under Adam (methods/dcmh.py)."""
    info = _halves_info()
    for make, expected in ((lambda ps: torch.optim.SGD(ps, lr=0.1), "stale"), (lambda ps: torch.optim.Adam(ps, lr=1e-3), "drift")):
        m = create_method("dcmh", DCMH_PARAMS, info, 16)
        m.configure_optimizers(make)
        assert m.balance_mode == expected
        assert m.provenance_tags()["balance_f1"] == f"{expected} (auto)"
        assert m.provenance_tags()["layer_init"].startswith("normal(0, 0.01) weights and biases")  # the authors' init
    m = create_method("dcmh", {**DCMH_PARAMS, "balance_f1": "batch"}, info, 16)
    m.configure_optimizers(lambda ps: torch.optim.SGD(ps, lr=0.1))
    assert m.provenance_tags()["balance_f1"] == "batch"


def test_dcmh_with_its_recipe_beats_random_on_wikipedia(tmp_path, prepared_root):
    """DCMH's defaults (authors' SGD schedule, random batches, N(0, 0.01) init) through the real loop on Wikipedia."""
    from tests.test_prdh import wikipedia_trial

    m, out = wikipedia_trial(tmp_path, prepared_root, "dcmh", {}, bits=16, seed=0, epochs=30)
    assert out.tags["balance_f1"] == "stale (auto)"
    # observed 0.148 / 0.122 against 0.111 for random codes: the authors' schedule is made for 500 epochs,
    # after 30 the N(0, 0.01) nets are under-trained (README, "DCMH's recipe"), but above chance
    for d, margin in (("i2t", 0.02), ("t2i", 0.005)):
        assert m[f"{d}/map@all"] > m[f"{d}/random/map@all"] + margin, (d, m[f"{d}/map@all"], m[f"{d}/random/map@all"])
    assert max(h["loss/image/balance"] for h in out.history[5:]) < 1.0  # the balance term stays bounded
