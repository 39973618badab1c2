"""Loss terms of the long-tail dual-stream hashing model (paper 004: Li & Wang, "Deep Hash Retrieval
Model Based on Improved Swin Transformer", 2025, Sec. 2.2, Eqs. (6)-(12)).

The three terms are the ones of self-distilled hashing (DHD: Jang et al., "Deep Hash Distillation for
Image Retrieval", ECCV 2022), which paper 004 adopts: a self-distillation term between a weakly
(teacher) and a strongly (student) augmented view, a hash-proxy cross-entropy with temperature, and a
BCE quantization term with a Gaussian bit-likelihood estimator. Pure functions: tensors in, scalar out;
every term is averaged over the mini-batch (Eq. (12) has the 1/N_B).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def self_distillation_loss(h_student: torch.Tensor, h_teacher: torch.Tensor, detach_teacher: bool = True) -> torch.Tensor:
    """L_sdH = mean_n (1 - cos(h_T, h_S)), paper 004 Eq. (7); the teacher (weak view) gets no gradient when ``detach_teacher`` (DHD)."""
    t = h_teacher.detach() if detach_teacher else h_teacher
    return (1.0 - F.cosine_similarity(h_student, t, dim=-1)).mean()


def proxy_similarities(h: torch.Tensor, proxies: torch.Tensor) -> torch.Tensor:
    """p_T = [S(p_theta_1, h), ..., S(p_theta_C, h)] (cosine similarity to every class proxy), paper 004 Eq. (8); (B, C)."""
    return F.normalize(h, dim=-1) @ F.normalize(proxies, dim=-1).t()


def hash_proxy_loss(h: torch.Tensor, proxies: torch.Tensor, labels: torch.Tensor, tau: float) -> torch.Tensor:
    """L_HP = H(y, softmax(p_T / tau)), paper 004 Eq. (9); multi-hot ``labels`` are normalised to sum 1 per row (DHD)."""
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    y = labels.float()
    y = y / y.sum(dim=1, keepdim=True).clamp_min(1e-12)
    logp = F.log_softmax(proxy_similarities(h, proxies) / tau, dim=-1)
    return -(y * logp).sum(dim=1).mean()


def gaussian_estimator(h: torch.Tensor, m: float, sigma: float) -> torch.Tensor:
    """g(h) = exp(-(h - m)^2 / (2 sigma^2)), paper 004 Eq. (10)."""
    return torch.exp(-((h - m) ** 2) / (2.0 * sigma * sigma))


def bce_quantization_loss(h: torch.Tensor, m: float = 1.0, sigma: float = 0.5, eps: float = 1e-7) -> torch.Tensor:
    """L_bce-Q = (1/K) sum_k [H_b(b+_k, g+_k) + H_b(b-_k, g-_k)], paper 004 Eq. (11), mean over the batch.

    g+ = g(h; +m, sigma), g- = g(h; -m, sigma), b+ = (sign(h) + 1) / 2, b- = 1 - b+ (targets carry no
    gradient); H_b(u, v) = -u log v - (1 - u) log(1 - v) (the paper's copy drops the second minus sign).
    Likelihoods are clamped to [eps, 1 - eps] as ``torch.nn.BCELoss`` clamps its logs."""
    b_pos = (torch.sign(h.detach()) + 1.0) / 2.0
    b_neg = 1.0 - b_pos
    g_pos = gaussian_estimator(h, m, sigma).clamp(eps, 1.0 - eps)
    g_neg = gaussian_estimator(h, -m, sigma).clamp(eps, 1.0 - eps)

    def bce(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return -(u * torch.log(v) + (1.0 - u) * torch.log(1.0 - v))

    return (bce(b_pos, g_pos) + bce(b_neg, g_neg)).mean()
