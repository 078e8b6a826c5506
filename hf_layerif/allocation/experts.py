"""Number of LoRA experts per block (METHOD §4), and the baselines the paper compares against."""

from __future__ import annotations

import numpy as np

from ..utils.logging import get_logger
from .methods import NAME_FAMILIES, AllocationMethod, allocation_method, register_allocation_method
from .score_vectors import as_score_vector, mirror, shift_negative, source_values

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


@register_allocation_method("experts", "layerif", source="scores", options={"alpha": 1.0, "reverse": False},
                            description="LayerIF: q_l^alpha by largest remainder (METHOD §4)")
def layerif_experts(values: np.ndarray, total_experts: int, num_blocks: int, *, alpha: float,
                    reverse: bool) -> list[int]:
    values = shift_negative(values)
    return largest_remainder_allocation(mirror(values) if reverse else values, total_experts, alpha)


@register_allocation_method("experts", "uniform", description="the same number of experts in every block")
def uniform_experts(values: None, total_experts: int, num_blocks: int) -> list[int]:
    return largest_remainder_allocation(np.zeros(num_blocks), total_experts)


@register_allocation_method("experts", "alphalora", source="alpha_hill", options={"reverse": False},
                            constants={"exponent": ALPHALORA_EXPONENT},
                            description="AlphaLoRA: block-mean PL_Alpha_Hill^2.5 by largest remainder")
def alphalora_experts(values: np.ndarray, total_experts: int, num_blocks: int, *, reverse: bool) -> list[int]:
    return largest_remainder_allocation(mirror(values) if reverse else values, total_experts, ALPHALORA_EXPONENT)


def _mola(pattern: str):
    def allocate(values: None, total_experts: int | None, num_blocks: int) -> list[int]:
        counts = mola_pattern(pattern, num_blocks)
        if total_experts is not None and sum(counts) != total_experts:
            logger.warning("MoLA pattern %s on %d blocks has %d experts, not the requested %d.", pattern, num_blocks,
                           sum(counts), total_experts)
        return counts

    return allocate


for _pattern, _numbers in MOLA_PATTERNS.items():
    register_allocation_method("experts", _pattern, fixed_total=True,
                               description=f"MoLA: {'/'.join(map(str, _numbers))} experts in the 4 block quarters")(
        _mola(_pattern))


def custom_mola_method(pattern: str) -> AllocationMethod | None:
    """A MoLA pattern given as ``"a,b,c,d"`` (its numbers validated when it is used); None for another name."""
    if pattern.count(",") != 3:
        return None
    return AllocationMethod(pattern, "experts", _mola(pattern), None, {}, f"MoLA pattern {pattern}", fixed_total=True)


NAME_FAMILIES["experts"].append((custom_mola_method, "a MoLA pattern 'a,b,c,d'"))


def allocate_experts(scores=None, total_experts: int | None = None, alpha: float = 1.0, method: str = "layerif",
                     num_blocks: int | None = None, alpha_hill=None, reverse: bool = False) -> list[int]:
    """Experts per block.

    Args:
        scores: LayerIF block scores q (≥ 0; a ``LayerInfluenceScores`` uses its default aggregation). Negative
            scores are shifted to a minimum of 0 with a warning.
        total_experts: T ≥ number of blocks.
        alpha: exponent of the power transform.
        method: a registered expert method (``ALLOCATION_METHODS["experts"]``): ``"layerif"``, ``"uniform"``, a
            MoLA pattern (``"2468"``, ``"5555"``, ``"8642"``, ``"1234"``, ``"46810"`` or ``"a,b,c,d"``; its total
            is fixed by the pattern — 160 for "2468" on 32 blocks — and a differing ``total_experts`` is reported in
            the log), or ``"alphalora"`` (the same allocator on block-mean PL_Alpha_Hill values ``alpha_hill`` with
            exponent 2.5; ``alpha`` is ignored).
        num_blocks: the model's block count (checked against the scores; needed for ``uniform``/MoLA without scores).
        reverse: the opposite direction (METHOD §3 keeps it an option): a *smaller* score gets more experts. Scores
            are mirrored within their range (q ↦ max q + min q − q) before the power transform.
    """
    chosen = allocation_method("experts", method)
    if total_experts is None and not chosen.fixed_total:
        raise ValueError("total_experts is required.")
    values = source_values(chosen, num_blocks, scores=scores, alpha_hill=alpha_hill)
    L = values.size if values is not None else num_blocks if num_blocks is not None else as_score_vector(scores).size
    options = chosen.resolve_options({"alpha": alpha, "reverse": reverse})
    return chosen.function(values, total_experts, L, **options)


__all__ = ["allocate_experts", "largest_remainder_allocation", "mola_pattern", "MOLA_PATTERNS"]
