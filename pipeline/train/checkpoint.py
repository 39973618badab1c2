"""Checkpoints inside a trial: the whole training state every ``train.checkpoint_every`` epochs, so a
killed trial resumes where it was instead of at epoch 0.

What one checkpoint holds (``state.pt`` in a folder, written atomically): the method's ``state_dict``
(network, method buffers such as DCMH's F/G/B or CRH's assignment), every optimizer's state, the next
epoch, the history so far, and every RNG the trial draws from: Python's, NumPy's global, torch's
(and CUDA's), the loop's permutation generator, and any ``torch.Generator`` / ``numpy.random.Generator``
attribute of the method or its submodules (CRH's reassignment RNG, the long-tail model's augmentation
RNG), found generically, so a method needs no checkpoint code of its own. Restored, the rest of the
trial is the same computation as an uninterrupted run (tests/test_checkpoint.py checks equality).

Where checkpoints live:

* in-process trials (the default 1-worker path): ``.hashbench/checkpoints/<trial key>/``; the next
  run of the same key (a rerun of ``bench`` after a SIGKILL) picks it up; it is removed once the trial
  finished;
* Ray Train trials: the same folder on rank 0, and also reported through ``ray.train.report(checkpoint=...)``,
  so a worker group restarted by ``FailureConfig(max_failures)`` resumes from
  ``ray.train.get_checkpoint()`` (see :mod:`pipeline.protocols.launch`).
"""

from __future__ import annotations

import logging
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"


def _generators(module: torch.nn.Module) -> dict[str, Any]:
    """Every torch/NumPy generator held as an attribute of ``module`` or its submodules, by dotted name."""
    found: dict[str, Any] = {}
    for prefix, sub in module.named_modules():
        for name, value in vars(sub).items():
            if isinstance(value, (torch.Generator, np.random.Generator)):
                found[f"{prefix}.{name}" if prefix else name] = value
    return found


def _gen_state(g) -> Any:
    return g.get_state() if isinstance(g, torch.Generator) else g.bit_generator.state


def _set_gen_state(g, state) -> None:
    if isinstance(g, torch.Generator):
        g.set_state(state)
    else:
        g.bit_generator.state = state


def capture(method: torch.nn.Module, optimizers: dict[str, torch.optim.Optimizer], rng: np.random.Generator, next_epoch: int, history: list) -> dict[str, Any]:
    """The training state after ``next_epoch`` epochs (see the module docstring)."""
    return {
        "next_epoch": int(next_epoch),
        "history": list(history),
        "method": method.state_dict(),
        "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
        "rng": {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "loop": rng.bit_generator.state,
            "method": {k: _gen_state(g) for k, g in _generators(method).items()},
        },
    }


def restore(state: dict[str, Any], method: torch.nn.Module, optimizers: dict[str, torch.optim.Optimizer], rng: np.random.Generator) -> tuple[int, list]:
    """Put ``state`` back into the method, optimizers and RNGs; returns (next epoch, history)."""
    method.load_state_dict(state["method"])
    for k, o in optimizers.items():
        o.load_state_dict(state["optimizers"][k])
    r = state["rng"]
    random.setstate(r["python"])
    np.random.set_state(r["numpy"])
    torch.set_rng_state(r["torch"])
    if r.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(r["cuda"])
    rng.bit_generator.state = r["loop"]
    gens = _generators(method)
    for k, s in r["method"].items():
        if k in gens:
            _set_gen_state(gens[k], s)
    return int(state["next_epoch"]), list(state["history"])


@dataclass
class Checkpointer:
    """Saves and finds one trial's checkpoint in ``directory`` every ``every`` epochs (0: never).

    ``on_save(directory)`` runs after each save (the Ray Train path reports the folder as a Ray
    checkpoint there); ``restored()`` may return a folder to resume from before ``directory`` is
    looked at (Ray Train's checkpoint of the same run after a worker-group restart: its epochs are
    already logged, so ``replay`` is then False); ``write`` False keeps this rank from writing (ranks > 0
    of a Ray Train trial)."""

    directory: Path
    every: int = 0
    write: bool = True
    on_save: Callable[[Path], None] | None = None
    restored: Callable[[], Path | None] | None = None
    trial: str = ""
    resumed_from: int | None = None  # the epoch the last load() resumed at (None: started from scratch)
    replay: bool = True  # whether the loaded checkpoint's epochs should be replayed to the observer (a new run)

    def load(self) -> dict[str, Any] | None:
        first = self.restored() if self.restored else None
        for d, replay in ((first, False), (self.directory, True)):
            if d is not None and (Path(d) / STATE_FILE).is_file():
                self.replay = replay
                state = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=False)
                log.info("%s: resuming from the checkpoint in %s (epoch %d)", self.trial, d, state["next_epoch"])
                self.resumed_from = int(state["next_epoch"])
                return state
        return None

    def due(self, epochs_done: int, total: int) -> bool:
        return self.every > 0 and epochs_done % self.every == 0 and epochs_done < total

    def save(self, state: dict[str, Any]) -> None:
        if self.write:
            self.directory.mkdir(parents=True, exist_ok=True)
            tmp = self.directory / f"{STATE_FILE}.part"
            torch.save(state, tmp)
            os.replace(tmp, self.directory / STATE_FILE)
        if self.on_save is not None:
            self.on_save(self.directory)

    def clear(self) -> None:
        """Remove the folder (the trial finished: its checkpoint is no longer needed)."""
        if self.write and self.directory.exists():
            shutil.rmtree(self.directory, ignore_errors=True)
