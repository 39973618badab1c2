"""ADIH's objective and its closed-form / discrete solvers, as pure functions, for any number of modalities.

Source: K. Zhou, L. Xu, B. Zheng, Y. Xie, "adaptive deep incremental hashing" (ADIH), the cross-modal
incremental hashing paper in /work/shared/papers/003_e765a13684e50bd6.txt (Sec. 2.2-2.7, eqs. (3)-(21),
(26)-(27); most equations are missing from that copy and are reconstructed here from its text; see
methods/adih.py for the reconstruction and every deviation).

Conventions as in :mod:`methods.losses.terms`: codes are **rows** (``H`` is ``(n_items, k)``; the paper
writes ``H`` as ``k x n`` and calls a bit a "row" of ``H``, i.e. a *column* here). ``S`` is in
{-1, +1} (paper: ``S_ij in {-1,+1}``), ``k`` the code length.

Objective (reconstruction of eq. (3), generalised to ``a`` modalities as eq. (26) says):

    J = sum_{a<b} ||k S - H_a W_ab H_b^T||_F^2 + alpha sum_a ||H_a - F_a||_F^2 + beta sum_a ||F_a^T 1||^2

Every solver below minimises the part of J that depends on one block of variables exactly:

* :func:`closed_form_w` -- eq. (7), the bilinear least-squares ``W = k (A^T A)^-1 A^T S B (B^T B)^-1``
  (``mode="full"``), or the least-squares *scalar* ``W = w I`` (``mode="scalar"``, our default, see
  methods/adih.py for why);
* :func:`bitwise_update` -- eqs. (9)-(13): the code matrix of one modality, one bit (the paper's row of
  ``H``) at a time with all other bits fixed, under the discrete constraint (no relaxation); each bit's
  update is the exact minimiser, so the objective never increases;
* :func:`relaxed_update` -- the same sub-problem without the discrete constraint (variant ADIH+R).

The sub-problem for one modality's codes ``H`` (n x k), given anchors ``A_b`` (m_b x k, the other
modalities' codes), similarities ``S_b`` (n x m_b) and couplings ``W_b`` (k x k, similarity
``H W_b A_b^T``), is

    min_H  sum_b ||k S_b - H W_b A_b^T||^2 + alpha ||H - F||^2
      = tr(H Q H^T) - 2 tr(H^T P) + const,   Q = sum_b W_b A_b^T A_b W_b^T,  P = k sum_b S_b A_b W_b^T + alpha F

(``||H||^2 = n k`` is constant on binary codes). With bit ``r`` free and the others fixed the terms in
``h = H[:, r]`` are ``2 h^T (H_{-r} Q_{-r,r} - P_r)`` plus constants, so ``h = sign(P_r - H_{-r} Q_{-r,r})``.
"""

from __future__ import annotations

from typing import Literal, Mapping, Sequence

import torch

from pipeline.core.errors import MethodError


def sign_pm1(x: torch.Tensor) -> torch.Tensor:
    """Sign with ties to +1 (the project's convention), as float."""
    return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))


def similarity_pm1(labels_a: torch.Tensor, labels_b: torch.Tensor) -> torch.Tensor:
    """ADIH Sec. 2.1: ``S_ij = +1`` if items i and j share at least one label, else ``-1``; (n_a, n_b) float."""
    dtype = labels_a.dtype if labels_a.is_floating_point() else torch.float32
    return 2.0 * (labels_a.float() @ labels_b.float().t() > 0).to(dtype) - 1.0


def similarity_times(labels_a: torch.Tensor, labels_b: torch.Tensor, a: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """``S(labels_a, labels_b) @ a`` computed in row chunks, so the (n_a, n_b) matrix S never exists whole."""
    out = torch.empty(labels_a.shape[0], a.shape[1], dtype=a.dtype, device=a.device)
    for s in range(0, labels_a.shape[0], chunk):
        out[s : s + chunk] = similarity_pm1(labels_a[s : s + chunk], labels_b).to(a.dtype) @ a
    return out


def pair_similarity_loss(h_a: torch.Tensor, h_b: torch.Tensor, s: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """ADIH eq. (3) first term (reconstructed): ``||k S - H_a W H_b^T||_F^2``, ``k`` = code length."""
    k = h_a.shape[1]
    return ((k * s - h_a @ w @ h_b.t()) ** 2).sum()


def projection_loss(h: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """ADIH eq. (3) second term: ``||H - F||_F^2`` (codes against the network outputs)."""
    return ((h - f) ** 2).sum()


def balance_loss(f: torch.Tensor) -> torch.Tensor:
    """ADIH eq. (3) third term, DCMH's bit balance: ``||F^T 1||^2``."""
    return (f.sum(dim=0) ** 2).sum()


def adih_objective(
    codes: Sequence[torch.Tensor],
    outputs: Sequence[torch.Tensor],
    s: torch.Tensor,
    ws: Mapping[tuple[int, int], torch.Tensor],
    alpha: float,
    beta: float,
) -> dict[str, torch.Tensor]:
    """ADIH eq. (3)/(26) (reconstructed) for ``a >= 2`` modalities as named terms plus ``"loss"``.

    ``codes[i]``, ``outputs[i]``: (n, k) codes and network outputs of modality i (same items, same
    order); ``s`` (n, n) in {-1, +1}; ``ws[(i, j)]`` (i < j) the coupling of the pair (similarity
    ``H_i W H_j^T``).
    """
    a = len(codes)
    if a < 2 or len(outputs) != a:
        raise MethodError(f"adih objective needs >= 2 modalities with one output each, got {a} codes / {len(outputs)} outputs")
    sim = sum(pair_similarity_loss(codes[i], codes[j], s, ws[(i, j)]) for i in range(a) for j in range(i + 1, a))
    proj = alpha * sum(projection_loss(h, f) for h, f in zip(codes, outputs))
    bal = beta * sum(balance_loss(f) for f in outputs)
    return {"loss": sim + proj + bal, "similarity": sim, "projection": proj, "balance": bal}


def closed_form_w(
    h_a: torch.Tensor,
    h_b: torch.Tensor,
    s_hb: torch.Tensor,
    mode: Literal["full", "scalar"] = "full",
    ridge: float = 0.0,
) -> torch.Tensor:
    """ADIH eqs. (6)-(7): the ``W`` minimising ``||k S - H_a W H_b^T||^2``; ``s_hb`` is ``S @ H_b`` (n_a, k).

    ``full``: ``W = k (H_a^T H_a + r I)^-1 H_a^T S H_b (H_b^T H_b + r I)^-1`` (normal equations of the
    bilinear regression, ``r`` = ``ridge``; pseudo-inverses when ``ridge`` is 0). ``scalar``: ``W = w I``
    with ``w = k <S, H_a H_b^T> / ||H_a H_b^T||_F^2 = k tr(H_a^T S H_b) / tr(H_a^T H_a H_b^T H_b)`` (the
    least-squares fit of one scale, clamped at 0: with ``W_1 = W_2`` the coupling ``W_1^T W_2`` is PSD).
    """
    k = h_a.shape[1]
    cross = h_a.t() @ s_hb  # H_a^T S H_b, (k, k)
    ga, gb = h_a.t() @ h_a, h_b.t() @ h_b
    if mode == "scalar":
        denom = (ga * gb).sum()  # tr(Ga Gb) = ||H_a H_b^T||_F^2 (Ga, Gb symmetric)
        # W = W_1^T W_2 with W_1 = W_2 (one shared latent map) is positive semi-definite: w >= 0
        w = (k * torch.diagonal(cross).sum() / denom.clamp_min(1e-12)).clamp_min(0.0)
        return w * torch.eye(k, dtype=h_a.dtype, device=h_a.device)
    if mode != "full":
        raise MethodError(f"adih: w_mode must be 'full' or 'scalar', got {mode!r}")
    eye = torch.eye(k, dtype=h_a.dtype, device=h_a.device)
    if ridge > 0:
        left = torch.linalg.solve(ga + ridge * eye, cross)
        return k * torch.linalg.solve(gb + ridge * eye, left.t()).t()
    return k * torch.linalg.pinv(ga) @ cross @ torch.linalg.pinv(gb)


def code_terms(
    f: torch.Tensor,
    anchors: Sequence[torch.Tensor],
    s_anchors: Sequence[torch.Tensor],
    ws: Sequence[torch.Tensor],
    alpha: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(P, Q)`` of one modality's code sub-problem (module docstring): ``P = k sum_b S_b A_b W_b^T + alpha F``,
    ``Q = sum_b W_b A_b^T A_b W_b^T``; ``s_anchors[b]`` is ``S_b @ A_b`` (n, k)."""
    k = f.shape[1]
    p = alpha * f.clone()
    q = torch.zeros(k, k, dtype=f.dtype, device=f.device)
    for a, sa, w in zip(anchors, s_anchors, ws):
        p = p + k * sa @ w.t()
        q = q + w @ (a.t() @ a) @ w.t()
    return p, q


def bitwise_update(h: torch.Tensor, p: torch.Tensor, q: torch.Tensor, sweeps: int = 1) -> torch.Tensor:
    """ADIH eqs. (9)-(13) (and (18)-(21) for the increment): discrete bit-by-bit minimisation of
    ``tr(H Q H^T) - 2 tr(H^T P)`` over ``H in {-1,+1}^(n x k)``, starting from ``h``; returns a new tensor.

    Bit ``r`` becomes ``sign(P_r - H_{-r} Q_{-r,r})`` with every other bit fixed (the exact minimiser,
    so the objective never increases); ``sweeps`` passes over the ``k`` bits.
    """
    h = h.clone()
    k = h.shape[1]
    for _ in range(int(sweeps)):
        for r in range(k):
            # H_{-r} Q_{-r, r} = H Q_{:, r} - h_r Q_rr
            coupling = h @ q[:, r] - h[:, r] * q[r, r]
            h[:, r] = sign_pm1(p[:, r] - coupling)
    return h


def code_objective(h: torch.Tensor, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The part of J that depends on one modality's codes, up to a constant: ``tr(H Q H^T) - 2 tr(H^T P)``."""
    return (h @ q * h).sum() - 2.0 * (h * p).sum()


def relaxed_update(p: torch.Tensor, q: torch.Tensor, alpha: float) -> torch.Tensor:
    """ADIH+R: the same sub-problem with ``H`` real-valued: ``H = P (Q + alpha I)^-1`` (``||H||^2`` is no longer constant)."""
    k = q.shape[0]
    eye = torch.eye(k, dtype=q.dtype, device=q.device)
    return torch.linalg.solve(q + max(alpha, 1e-6) * eye, p.t()).t()
