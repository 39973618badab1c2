"""Data-parallel training helpers of the shared loop (:func:`pipeline.train.loop.fit`).

The loop runs unchanged on every rank of a ``torch.distributed`` process group (gloo on CPU, nccl on
GPU: Ray Train's ``TorchTrainer`` sets it up, a test can set it up with ``torch.multiprocessing``).
What makes N workers train like one worker of the same *global* batch size:

* **Sharding**: every rank draws the same epoch permutation (same seed) and cuts the same global
  batches of ``train.batch_size`` items; rank ``r`` takes positions ``r, r+N, ...`` of each global batch
  (:func:`shard`). The global batch size is what params say, whatever the worker count.
* **Gradients**: a method's ``"loss"`` is a mean over its batch's items by default, so the global
  batch's gradient is ``sum_r (n_r / n) grad_r``: each rank scales its gradients by
  :meth:`~methods.base.HashMethod.distributed_loss_scale` and one all-reduce (one flat buffer) sums
  them (:func:`all_reduce_gradients`). A parameter without a gradient on every rank keeps ``None``
  (so Adam skips it, as on one worker); a non-finite loss on any rank stops every rank.
* **Whole-training-set state**: the rows of the buffers a method names in
  :meth:`~methods.base.HashMethod.distributed_item_buffers` (DCMH's F/G, ADIH's F, ...) are written by
  the rank that trained those items; after each phase's pass every rank's rows are gathered into
  every rank (:func:`gather_item_rows`), so the closed-form / discrete update in ``on_epoch_end`` sees
  the whole training set. That update then runs on every rank from identical inputs and rank 0's
  result is broadcast (:func:`broadcast_buffers`), so the ranks can never drift apart.
* **Buffers read within a pass**: a method whose later steps read rows that earlier steps wrote (DCMH's
  stored F in its balance estimate, MFPMC's stored H in its likelihood) names them in
  :meth:`~methods.base.HashMethod.distributed_step_buffers`: after every step the global batch's rows of
  every rank reach every rank (:func:`sync_step_rows`), so each rank holds the 1-worker buffer at every
  step. Such a method computes its whole-batch terms (a full-set column sum, a global-batch covariance)
  from sums over the ranks inside ``training_step`` (:func:`reduce_sum`, through the
  :class:`~methods.base.ShardInfo` the loop sets on it), so its gradients are the 1-worker gradients.
* **Logged losses**: each rank accumulates ``loss * n_r / n`` per global batch; one all-reduce per
  epoch gives the global batch's loss, the number the 1-worker run logs.

What is *not* identical to one worker, by construction: BatchNorm statistics (per-rank shard) and
random draws inside ``training_step`` (dropout, augmentation); loss terms that are not a mean of
per-item terms (a balance term over the batch sum, pairwise terms inside the batch) are approximated
by the weighted mean of the shards' terms.
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.core.errors import TrainingError


def world() -> tuple[int, int]:
    """(rank, world size) of the current process group; (0, 1) without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def shard(positions: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """This rank's part of one global batch (strided, so the shard sizes differ by at most one)."""
    return positions[rank::world_size] if world_size > 1 else positions


def comm_device(module) -> torch.device:
    """Where collectives run (``module``: a module or a list of tensors): their device for nccl, CPU for gloo."""
    backend = torch.distributed.get_backend()
    if backend == "nccl":
        for t in (module.parameters() if isinstance(module, torch.nn.Module) else module):
            return t.device
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_gradients(params: list[torch.nn.Parameter], scale: float, finite: bool) -> None:
    """Sum ``scale * grad`` over the ranks in one flat all-reduce; a parameter with a gradient on no
    rank keeps ``None``. Raises :class:`TrainingError` on every rank if any rank's loss was not finite."""
    dev = comm_device(params)
    pieces, has = [], []
    for p in params:
        if p.grad is None or not finite:
            pieces.append(torch.zeros(p.numel(), dtype=torch.float32, device=dev))
            has.append(0.0)
        else:
            pieces.append((p.grad.detach().reshape(-1).float() * scale).to(dev))
            has.append(1.0)
    flags = torch.tensor(has + [0.0 if finite else 1.0], dtype=torch.float32, device=dev)
    flat = torch.cat(pieces + [flags]) if pieces else flags
    torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
    if float(flat[-1]) > 0:
        raise TrainingError(f"non-finite loss on {int(flat[-1])} of {torch.distributed.get_world_size()} data-parallel workers")
    offset = 0
    for i, p in enumerate(params):
        n = p.numel()
        if float(flat[len(flat) - len(flags) + i]) > 0:
            g = flat[offset : offset + n].view_as(p).to(device=p.device, dtype=p.dtype)
            if p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.copy_(g)
        else:
            p.grad = None
        offset += n


def gather_item_rows(method: torch.nn.Module, names: tuple[str, ...] | list[str], owned: np.ndarray) -> None:
    """Every rank gets every rank's rows of the per-item buffers ``names``: ``owned`` are the row
    positions this rank trained in the pass just ended (the ranks' sets are disjoint and cover the
    pass); rows nobody trained keep rank 0's values."""
    if not names:
        return
    rank, _ = world()
    for name in names:
        buf = getattr(method, name)
        dev = comm_device(method)
        mask = torch.zeros(buf.shape[0], dtype=torch.bool)
        mask[torch.from_numpy(np.asarray(owned, dtype=np.int64))] = True
        cover = mask.to(torch.float32).to(dev)
        torch.distributed.all_reduce(cover, op=torch.distributed.ReduceOp.SUM)
        mask = mask.to(buf.device)
        shape = (-1,) + (1,) * (buf.dim() - 1)
        contrib = torch.where(mask.view(shape), buf, torch.zeros((), dtype=buf.dtype, device=buf.device)).to(dev)
        if rank == 0:  # rows trained by nobody: rank 0's values
            contrib = contrib + torch.where((cover == 0).to(buf.device).view(shape), buf, torch.zeros((), dtype=buf.dtype, device=buf.device)).to(dev)
        torch.distributed.all_reduce(contrib, op=torch.distributed.ReduceOp.SUM)
        buf.copy_(contrib.to(buf.device))


def reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over the ranks (a new tensor on ``t``'s device); what a method's
    :attr:`~methods.base.ShardInfo.reduce_sum` calls inside ``training_step``."""
    dev = torch.device("cpu") if torch.distributed.get_backend() != "nccl" else t.device
    out = t.detach().to(dev).clone()
    torch.distributed.all_reduce(out, op=torch.distributed.ReduceOp.SUM)
    return out.to(t.device)


def sync_step_rows(method: torch.nn.Module, names: tuple[str, ...] | list[str], glob: np.ndarray) -> None:
    """After one step of a global batch ``glob`` (training positions, sharded by :func:`shard`): every rank's
    rows of the buffers ``names`` at its shard's positions, on every rank (one all-reduce per buffer)."""
    rank, world_size = world()
    idx = torch.as_tensor(np.asarray(glob, dtype=np.int64))
    pos = torch.arange(rank, len(idx), world_size)
    dev = comm_device(method)
    for name in names:
        buf = getattr(method, name)
        full = torch.zeros((len(idx),) + tuple(buf.shape[1:]), dtype=buf.dtype, device=dev)
        full[pos.to(dev)] = buf[idx[pos].to(buf.device)].to(dev)
        torch.distributed.all_reduce(full, op=torch.distributed.ReduceOp.SUM)
        buf[idx.to(buf.device)] = full.to(buf.device)


def broadcast_buffers(method: torch.nn.Module, src: int = 0) -> None:
    """Rank ``src``'s buffers (closed-form results, codes, BatchNorm statistics) on every rank."""
    dev = comm_device(method)
    for _, buf in method.named_buffers():
        t = buf.to(dev)
        if t.dtype == torch.bool:
            t = t.to(torch.uint8)
        torch.distributed.broadcast(t, src=src)
        buf.copy_(t.to(device=buf.device, dtype=buf.dtype))


def broadcast_parameters(method: torch.nn.Module, src: int = 0) -> None:
    """Rank ``src``'s parameters on every rank (before the first epoch: one starting point)."""
    dev = comm_device(method)
    with torch.no_grad():
        for p in method.parameters():
            t = p.detach().to(dev).clone()
            torch.distributed.broadcast(t, src=src)
            p.copy_(t.to(p.device))


def all_reduce_sums(sums: dict[str, float], device: torch.device | None = None) -> dict[str, float]:
    """``sums`` summed over the ranks (the same keys on every rank, in sorted order)."""
    keys = sorted(sums)
    if not keys:
        return {}
    t = torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=device or torch.device("cpu"))
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
    return {k: float(v) for k, v in zip(keys, t.tolist())}


def all_keys(keys: set[str], device: torch.device | None = None) -> list[str]:
    """The union of every rank's loss names (a rank whose shards were empty may have seen none)."""
    out: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, sorted(keys))
    return sorted(set().union(*[set(o) for o in out]))
