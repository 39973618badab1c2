"""In-trial checkpoints (pipeline/train/checkpoint.py): a trial SIGKILLed mid-training and rerun resumes
from its last checkpoint, and its epoch count, loss curve and final metrics equal an uninterrupted run."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
from pathlib import Path

import pytest

from tests.conftest import trial_spec


class _KillAt:
    """An observer that SIGKILLs its own process when epoch ``at`` ends (before any later checkpoint)."""

    def __init__(self, at: int):
        self.at = at

    def on_epoch(self, epoch, metrics):
        if epoch == self.at:
            os.kill(os.getpid(), signal.SIGKILL)


def _killed_run(spec_json: dict, prepared: str, directory: str, every: int, at: int) -> None:
    import torch

    from pipeline.config import TrialSpec
    from pipeline.train.checkpoint import Checkpointer
    from pipeline.train.loop import run_trial

    torch.set_num_threads(1)
    run_trial(TrialSpec.model_validate(spec_json), Path(prepared), _KillAt(at), device="cpu", checkpoint=Checkpointer(Path(directory), every=every))


def _fast(spec, epochs):
    return spec.model_copy(
        update={
            "train": spec.train.model_copy(update={"batch_size": 128, "epochs": epochs}),
            "eval": spec.eval.model_copy(update={"index": spec.eval.index.model_copy(update={"kinds": []}), "random_baseline": False}),
        }
    )


CASES = [
    # (method, dataset, params): a network with its own generators and center reassignment; whole-set buffers and two phases
    ("crh", "digits", {"hidden": [64], "reassign_every": 1}),
    ("dcmh", "wikipedia", {"image_hidden": [64], "text_hidden": [64]}),
]


@pytest.mark.parametrize("method,dataset,params", CASES, ids=[c[0] for c in CASES])
def test_sigkilled_trial_resumes_from_checkpoint_and_equals_uninterrupted(tmp_path, repo_params, prepared_root, one_torch_thread, method, dataset, params):
    from pipeline.train.checkpoint import STATE_FILE, Checkpointer
    from pipeline.train.loop import run_trial

    epochs, every, kill_at = 5, 2, 2  # checkpoints after epochs 2 and 4; killed at the end of epoch index 2 (3rd epoch)
    spec = _fast(trial_spec(tmp_path, repo_params, method, 16, epochs=epochs, method_params=params, dataset=dataset), epochs)
    d = prepared_root / "data" / "prepared" / dataset
    ref = run_trial(spec, d, device="cpu")

    ck = tmp_path / "ckpt"
    p = mp.get_context("spawn").Process(target=_killed_run, args=(spec.model_dump(mode="json"), str(d), str(ck), every, kill_at))
    p.start()
    p.join(300)
    assert p.exitcode == -signal.SIGKILL
    assert (ck / STATE_FILE).is_file()

    seen = []

    class Record:
        def on_epoch(self, epoch, metrics):
            seen.append(epoch)

    c = Checkpointer(ck, every=every)
    assert c.load()["next_epoch"] == 2
    resumed = run_trial(spec, d, Record(), device="cpu", checkpoint=c)
    assert seen == list(range(epochs))  # epochs 0-1 replayed from the checkpoint, 2-4 trained
    assert len(resumed.history) == epochs
    for a, b in zip(ref.history, resumed.history):
        assert {k: v for k, v in a.items() if k.startswith("loss/")} == {k: v for k, v in b.items() if k.startswith("loss/")}
    assert resumed.evaluation.flat_metrics() == ref.evaluation.flat_metrics()
