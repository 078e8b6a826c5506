"""Number of LoRA experts per block (METHOD §4), and the baselines the paper compares against."""

from __future__ import annotations

import numpy as np

from ..utils.logging import get_logger
from .score_vectors import as_score_vector, mirror, shift_negative

logger = get_logger(__name__)

MOLA_PATTERNS = {"2468": (2, 4, 6, 8), "5555": (5, 5, 5, 5), "8642": (8, 6, 4, 2), "1234": (1, 2, 3, 4),
                 "46810": (4, 6, 8, 10)}
ALPHALORA_EXPONENT = 2.5


def largest_remainder_allocation(scores, total: int, alpha: float = 1.0) -> list[int]:
    """E_l ≥ 1 with Σ E_l = total (METHOD §4 steps 1–4).

    t_l = q_l^α; f_l = t_l / Σ t · (T − L); E_l = ⌊f_l⌋ + 1; the R = T − Σ E_l remaining experts go to the
    blocks with the largest f_l − ⌊f_l⌋ (ties: lower block index first). All-zero scores give a uniform split.
    """
    q = np.asarray(scores, dtype=np.float64)
    L = q.size
    if not isinstance(total, (int, np.integer)) or total < L:
        raise ValueError(f"total_experts must be an integer >= the number of blocks ({L}), got {total!r}.")
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}.")
    if np.any(q < 0):
        raise ValueError("expert allocation needs non-negative scores; shift or take absolute values first.")
    t = q**alpha
    if t.sum() == 0 or not np.isfinite(t.sum()):
        if not np.isfinite(t.sum()):
            raise ValueError(f"scores**alpha overflowed (alpha={alpha}); normalise the scores or lower alpha.")
        t = np.ones(L)
    f = t / t.sum() * (total - L)
    base = np.floor(f)
    experts = base.astype(np.int64) + 1
    remainder = int(total - experts.sum())
    frac = f - base
    order = sorted(range(L), key=lambda i: (-frac[i], i))
    for i in order[:remainder]:
        experts[i] += 1
    return experts.tolist()


def mola_pattern(pattern: str, num_blocks: int) -> list[int]:
    """MoLA's patterns: 4 contiguous groups of ⌊L/4⌋ blocks (the last absorbs the remainder); group j gets the
    j-th number of the pattern (``"2468"``, ``"5555"``, ``"8642"``, ``"1234"``, ``"46810"`` or ``"a,b,c,d"``)."""
    if pattern in MOLA_PATTERNS:
        numbers = MOLA_PATTERNS[pattern]
    else:
        try:
            numbers = tuple(int(x) for x in pattern.split(","))
        except ValueError:
            numbers = ()
        if len(numbers) != 4 or min(numbers) < 1:
            raise ValueError(f"unknown MoLA pattern {pattern!r}; use one of {sorted(MOLA_PATTERNS)} or 'a,b,c,d'.")
    if num_blocks < 4:
        raise ValueError(f"MoLA patterns split the blocks into 4 groups; the model has only {num_blocks}.")
    size = num_blocks // 4
    return [numbers[min(i // size, 3)] for i in range(num_blocks)]


def allocate_experts(scores=None, total_experts: int | None = None, alpha: float = 1.0, method: str = "layerif",
                     num_blocks: int | None = None, alpha_hill=None, reverse: bool = False) -> list[int]:
    """Experts per block.

    Args:
        scores: LayerIF block scores q (≥ 0; a ``LayerInfluenceScores`` uses its default aggregation). Negative
            scores are shifted to a minimum of 0 with a warning.
        total_experts: T ≥ number of blocks.
        alpha: exponent of the power transform.
        method: ``"layerif"``, ``"uniform"``, a MoLA pattern (``"2468"``, ``"5555"``, ``"8642"``, ``"1234"``,
            ``"46810"``; its total is fixed by the pattern — 160 for "2468" on 32 blocks — and a differing
            ``total_experts`` is reported in the log), or ``"alphalora"`` (the same allocator on block-mean
            PL_Alpha_Hill values ``alpha_hill`` with exponent 2.5; ``alpha`` is ignored).
        num_blocks: the model's block count (checked against the scores; needed for ``uniform``/MoLA without scores).
        reverse: the opposite direction (METHOD §3 keeps it an option): a *smaller* score gets more experts. Scores
            are mirrored within their range (q ↦ max q + min q − q) before the power transform.
    """
    if method in MOLA_PATTERNS or (isinstance(method, str) and method.count(",") == 3):
        L = num_blocks if num_blocks is not None else as_score_vector(scores).size
        counts = mola_pattern(method, L)
        if total_experts is not None and sum(counts) != total_experts:
            logger.warning("MoLA pattern %s on %d blocks has %d experts, not the requested %d.", method, L,
                           sum(counts), total_experts)
        return counts
    if total_experts is None:
        raise ValueError("total_experts is required.")
    if method == "uniform":
        L = num_blocks if num_blocks is not None else as_score_vector(scores).size
        return largest_remainder_allocation(np.zeros(L), total_experts)
    if method == "alphalora":
        if alpha_hill is None:
            raise ValueError("method='alphalora' needs alpha_hill= (block means of PL_Alpha_Hill, see block_alpha_hill).")
        values = as_score_vector(alpha_hill, num_blocks, "alpha_hill")
        return largest_remainder_allocation(mirror(values) if reverse else values, total_experts, ALPHALORA_EXPONENT)
    if method != "layerif":
        raise ValueError(f"unknown method {method!r}; use 'layerif', 'uniform', 'alphalora' or a MoLA pattern.")
    values = shift_negative(as_score_vector(scores, num_blocks))
    return largest_remainder_allocation(mirror(values) if reverse else values, total_experts, alpha)


__all__ = ["allocate_experts", "largest_remainder_allocation", "mola_pattern", "MOLA_PATTERNS"]
