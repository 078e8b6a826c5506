"""Pruning of one linear weight (METHOD §7): Magnitude, Wanda and SparseGPT, unstructured or N:M.

Weights are [out, in] (rows = outputs, columns = inputs). Exact rounding: a matrix of N weights pruned at ratio r
loses exactly round(N·r) of them (ties broken by index, never the reference codes' ``≤ threshold`` that can
prune extra). Where the comparison group is a row (Wanda), each row loses ⌊r·in⌋ or ⌈r·in⌉ weights and the rows
that lose one more are those whose next weight has the lowest score, so the matrix total stays exact.
N:M (``n`` zeros in every group of ``m`` consecutive inputs of a row, e.g. 2:4) has its own fixed sparsity n/m.
"""

from __future__ import annotations

import math

import torch

from ..utils.logging import get_logger

logger = get_logger(__name__)


def exact_count(numel: int, ratio: float) -> int:
    """Number of weights to remove: round(numel · ratio), halves rounded up (ratio in [0, 1])."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"sparsity ratio must be in [0, 1], got {ratio}")
    return int(math.floor(numel * ratio + 0.5))


def _stable_order(scores: torch.Tensor) -> torch.Tensor:
    """Indices sorting ``scores`` ascending, ties by index (a stable sort)."""
    return torch.sort(scores, stable=True).indices


def smallest_mask(flat: torch.Tensor, k: int) -> torch.Tensor:
    """[N] bool: True at the ``k`` smallest values of ``flat`` [N], ties broken by the lower index (the first k of a
    stable ascending sort), in O(N): the k-th smallest value t by selection, every value below t, and the first
    ties at t by index. No host synchronisation."""
    n = flat.numel()
    if k <= 0:
        return torch.zeros(n, dtype=torch.bool, device=flat.device)
    if k >= n:
        return torch.ones(n, dtype=torch.bool, device=flat.device)
    threshold = torch.kthvalue(flat, k).values
    below = flat < threshold
    ties = flat == threshold
    return below | (ties & (torch.cumsum(ties, 0) <= k - below.sum()))


def unstructured_mask(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """True where a weight is pruned: the round(N·r) lowest scores of the whole matrix."""
    return smallest_mask(scores.reshape(-1), exact_count(scores.numel(), ratio)).view_as(scores)


def per_row_mask(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """True where pruned: each row loses ⌊r·in⌋ or ⌈r·in⌉ of its lowest scores, round(N·r) in total; the rows that
    lose one more are those whose next score is lowest (ties by row index), and within a row ties go to the lower
    column index (as a stable sort would). O(N) per row by selection (``kthvalue``), no sort."""
    rows, cols = scores.shape
    total = exact_count(rows * cols, ratio)
    base = total // rows
    extra = total - base * rows
    counts = torch.full((rows,), base, dtype=torch.long, device=scores.device)
    # the k-th smallest score of each row for k = base (and base + 1, the value a stable sort puts at position base)
    thresholds = (torch.kthvalue(scores, base, dim=1).values if base > 0
                  else torch.zeros(rows, dtype=scores.dtype, device=scores.device))
    if extra:
        next_cost = torch.kthvalue(scores, base + 1, dim=1).values
        counts[_stable_order(next_cost)[:extra]] += 1
        thresholds = torch.where(counts == base + 1, next_cost, thresholds)
    below = scores < thresholds.unsqueeze(1)
    ties = scores == thresholds.unsqueeze(1)
    room = (counts - below.sum(1)).unsqueeze(1)
    mask = below | (ties & (torch.cumsum(ties, 1) <= room))
    return mask & (counts > 0).unsqueeze(1)


def n_m_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """True where pruned: the ``n`` lowest scores in every group of ``m`` consecutive inputs of each row."""
    rows, cols = scores.shape
    if cols % m:
        raise ValueError(f"an {n}:{m} pattern needs the input size ({cols}) to be a multiple of {m}.")
    groups = scores.reshape(rows, cols // m, m)
    order = torch.sort(groups, dim=2, stable=True).indices
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(2, order[:, :, :n], True)
    return mask.reshape(rows, cols)


def magnitude_mask(weight: torch.Tensor, ratio: float, structure: tuple[int, int] | None = None) -> torch.Tensor:
    """Magnitude pruning: the smallest |W_ij| of the matrix (or of each N:M group)."""
    scores = weight.detach().abs().float()
    return n_m_mask(scores, *structure) if structure else unstructured_mask(scores, ratio)


def wanda_mask(weight: torch.Tensor, column_norms: torch.Tensor, ratio: float,
               structure: tuple[int, int] | None = None) -> torch.Tensor:
    """Wanda: scores |W_ij| · ‖X_j‖₂, pruned per output row (or per N:M group)."""
    scores = weight.detach().abs().float() * column_norms.to(weight.device, torch.float32).unsqueeze(0)
    return n_m_mask(scores, *structure) if structure else per_row_mask(scores, ratio)


def _block_counts(total: int, sizes: list[int], ratio: float) -> list[int]:
    """Split ``total`` removals over column blocks of ``sizes`` weights by largest remainder (sum exact)."""
    shares = [s * ratio for s in sizes]
    counts = [math.floor(x) for x in shares]
    remainder = total - sum(counts)
    order = sorted(range(len(sizes)), key=lambda i: (-(shares[i] - counts[i]), i))
    for i in order[:remainder]:
        counts[i] += 1
    return counts


def inverse_hessian_factor(H: torch.Tensor, percdamp: float = 0.01, max_retries: int = 6) -> tuple[torch.Tensor, float]:
    """Upper Cholesky factor of (H + λI)⁻¹ with λ = percdamp · mean(diag H), float32/64.

    A failed factorisation is retried with 10× more damping (logged), up to ``max_retries`` times; then it raises.
    Never falls back to magnitude pruning. Returns (factor, damping fraction used).
    """
    damp = percdamp
    eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    mean_diag = torch.mean(torch.diag(H))
    for attempt in range(max_retries + 1):
        L, info = torch.linalg.cholesky_ex(H + damp * mean_diag * eye)
        if int(info) == 0:
            Hinv = torch.cholesky_inverse(L)
            U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
            if int(info) == 0:
                if attempt:
                    logger.warning("SparseGPT: Cholesky succeeded after raising damping to %.3g × mean(diag H).", damp)
                return U, damp
        logger.warning("SparseGPT: Cholesky of H failed with damping %.3g; retrying with %.3g.", damp, damp * 10)
        damp *= 10
    raise RuntimeError(
        f"SparseGPT: the Hessian H = X Xᵀ is not positive definite even with damping {damp / 10:.3g} × mean(diag H). "
        "Use more or longer calibration sequences, or a higher percdamp."
    )


@torch.no_grad()
def sparsegpt_prune(weight: torch.Tensor, H: torch.Tensor, ratio: float, structure: tuple[int, int] | None = None,
                    blocksize: int = 128, percdamp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """SparseGPT (Frantar & Alistarh, 2023): OBS pruning with error feedback, on a float32 copy of ``weight``.

    Args:
        weight: [out, in]. H: [in, in] = Σ over calibration tokens of x xᵀ.
        ratio: sparsity of this matrix (ignored for N:M, whose sparsity is n/m).
        structure: (n, m) for N:M.
        blocksize: columns per block (adaptive mask selection and lazy batch updates).
    Returns:
        (new weight in ``weight``'s dtype, pruned mask, info with the damping used and the reconstruction loss).
    """
    W = weight.detach().clone().float()
    rows, cols = W.shape
    H = H.detach().clone().to(W.device, torch.float64 if H.dtype == torch.float64 else torch.float32)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    Hinv, damp = inverse_hessian_factor(H, percdamp)
    Hinv = Hinv.to(W.dtype)
    mask = torch.zeros_like(W, dtype=torch.bool)
    losses = torch.zeros(rows, dtype=W.dtype, device=W.device)
    starts = list(range(0, cols, blocksize))
    sizes = [min(blocksize, cols - s) for s in starts]
    counts = None if structure else _block_counts(exact_count(rows * cols, ratio), [rows * s for s in sizes], ratio)
    for b, i1 in enumerate(starts):
        i2 = i1 + sizes[b]
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        if structure is None:
            scores = W1**2 / (torch.diag(Hinv1).reshape(1, -1) ** 2)
            mask1 = smallest_mask(scores.reshape(-1), counts[b]).view_as(W1)
        else:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        for i in range(i2 - i1):
            w = W1[:, i]
            d = Hinv1[i, i]
            if structure is not None and i % structure[1] == 0:
                n, m = structure
                scores = W1[:, i:i + m] ** 2 / (torch.diag(Hinv1)[i:i + m].reshape(1, -1) ** 2)
                mask1[:, i:i + m] = n_m_mask(scores, n, m)
            q = w.clone()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            losses += (w - q) ** 2 / d**2 / 2
            err = (w - q) / d
            W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        mask[:, i1:i2] = mask1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    W[mask] = 0
    return W.to(weight.dtype), mask, {"damping": damp, "loss": float(losses.sum())}
