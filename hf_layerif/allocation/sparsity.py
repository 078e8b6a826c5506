"""Sparsity ratio per block (METHOD §5) with an exact global budget, and its baselines."""

from __future__ import annotations

import numpy as np

from ..utils.logging import get_logger
from .methods import allocation_method, register_allocation_method
from .owl import OWL_LAMBDA, OWL_M
from .score_vectors import as_score_vector, source_values

logger = get_logger(__name__)

MAX_RATIO = 0.99
SAVGOL_WINDOW = 7
SAVGOL_ORDER = 3


def smooth_scores(values: np.ndarray, window: int = SAVGOL_WINDOW, polyorder: int = SAVGOL_ORDER) -> np.ndarray:
    """Savitzky–Golay smoothing (scipy). The window shrinks to the largest odd number ≤ L when L < window;
    smoothing is skipped when that window is ≤ polyorder (scipy needs polyorder < window): L ≤ 4 for the defaults."""
    from scipy.signal import savgol_filter

    L = values.size
    w = window if L >= window else (L if L % 2 == 1 else L - 1)
    if w <= polyorder:
        return values.copy()
    return savgol_filter(values, w, polyorder)


def rebalance_to_budget(ratios: np.ndarray, params: np.ndarray, target: float, upper: float = MAX_RATIO) -> np.ndarray:
    """Clamp ratios to [0, upper] and rescale the unclamped blocks so that Σ P_l r_l = target · Σ P_l exactly.

    Ratios are non-negative here (the linear map gives r ≥ 1 − ε > 0), so only the upper bound can bind; the
    budget a clamp removes is spread over the other blocks in proportion to their ratios, repeatedly, until
    no block exceeds ``upper``.
    """
    r = ratios.astype(np.float64).copy()
    budget = target * params.sum()
    if target > upper:
        raise ValueError(f"a global sparsity of {target} cannot be reached with every block at most {upper}.")
    clamped = np.zeros(r.size, dtype=bool)
    for _ in range(r.size + 1):
        free = ~clamped
        remaining = budget - (params[clamped] * upper).sum()
        mass = (params[free] * r[free]).sum()
        if mass <= 0:
            r[free] = remaining / params[free].sum()
        else:
            r[free] *= remaining / mass
        over = free & (r > upper)
        if not over.any():
            break
        clamped |= over
        r[clamped] = upper
    if clamped.any():
        logger.warning("Sparsity ratios of blocks %s were clamped at %g; the budget they lost went to the other blocks "
                       "(a smaller epsilon or sparsity avoids the clamp).", np.flatnonzero(clamped).tolist(), upper)
    return np.clip(r, 0.0, upper)


def map_scores_to_ratios(values, target_sparsity: float, epsilon: float, params_per_block, smooth: bool,
                         reverse: bool = False) -> np.ndarray:
    """METHOD §5 steps 1–5: |q| → min-max → (Savitzky–Golay) → [1 − ε, 1 + ε] → budget → clamp + rebalance."""
    a = np.abs(np.asarray(values, dtype=np.float64))
    params = np.asarray(params_per_block, dtype=np.float64)
    if a.max() == a.min():
        return np.full(a.size, float(target_sparsity))
    a = (a - a.min()) / (a.max() - a.min())
    if reverse:
        a = 1.0 - a
    if smooth:
        a = smooth_scores(a)
        if a.max() == a.min():
            return np.full(a.size, float(target_sparsity))
    s1, s2 = 1.0 - epsilon, 1.0 + epsilon
    r = (a - a.min()) / (a.max() - a.min()) * (s2 - s1) + s1
    r = r * (target_sparsity * params.sum()) / (params * r).sum()
    return rebalance_to_budget(r, params, target_sparsity)


@register_allocation_method("sparsity", "layerif", source="scores",
                            options={"epsilon": 0.3, "smooth": True, "reverse": False},
                            description="LayerIF: |q| → min-max → Savitzky-Golay → [S(1-ε), S(1+ε)] → budget (METHOD §5)")
def layerif_sparsity(values: np.ndarray, target_sparsity: float, params_per_block: np.ndarray, *, epsilon: float,
                     smooth: bool, reverse: bool) -> list[float]:
    return map_scores_to_ratios(values, target_sparsity, epsilon, params_per_block, smooth, reverse).tolist()


@register_allocation_method("sparsity", "alphapruning", source="alpha_hill",
                            options={"epsilon": 0.3, "smooth": False, "reverse": False},
                            description="AlphaPruning: block-mean PL_Alpha_Hill through the same linear map")
def alphapruning_sparsity(values: np.ndarray, target_sparsity: float, params_per_block: np.ndarray, *,
                          epsilon: float, smooth: bool, reverse: bool) -> list[float]:
    return map_scores_to_ratios(values, target_sparsity, epsilon, params_per_block, smooth, reverse).tolist()


@register_allocation_method("sparsity", "owl", source="outlier_ratios", options={"owl_lambda": OWL_LAMBDA},
                            input_options={"owl_m": OWL_M},
                            description="OWL: 1 - LOD spread over [S-λ, S+λ] (outlier-weighted)")
def owl_sparsity(values: np.ndarray, target_sparsity: float, params_per_block: np.ndarray, *,
                 owl_lambda: float) -> list[float]:
    from .owl import owl_ratios

    return owl_ratios(values, target_sparsity, owl_lambda)


@register_allocation_method("sparsity", "uniform", description="the target sparsity in every block")
def uniform_sparsity(values: None, target_sparsity: float, params_per_block: np.ndarray) -> list[float]:
    return [float(target_sparsity)] * len(params_per_block)


def allocate_sparsity(scores=None, target_sparsity: float = 0.5, epsilon: float = 0.3, smooth: bool | None = None,
                      params_per_block=None, method: str = "layerif", num_blocks: int | None = None,
                      alpha_hill=None, outlier_ratios=None, owl_lambda: float = OWL_LAMBDA, reverse: bool = False) -> list[float]:
    """Sparsity ratio per block whose parameter-weighted mean equals ``target_sparsity`` (to 1e-6 or better).

    Args:
        scores: LayerIF block scores (their absolute values are used).
        target_sparsity: global sparsity S in (0, 1).
        epsilon: half-width ε ∈ [0, 1) of the ratio band [S(1−ε), S(1+ε)] before the budget rescale.
        smooth: Savitzky–Golay smoothing (window 7, order 3); default on for ``layerif``, off for baselines.
        params_per_block: prunable parameters P_l of each block (default: equal).
        method: a registered sparsity method (``ALLOCATION_METHODS["sparsity"]``): ``"layerif"``, ``"uniform"``
            (r_l = S), ``"alphapruning"`` (block-mean PL_Alpha_Hill values ``alpha_hill`` through the same map, no
            smoothing) or ``"owl"`` (``outlier_ratios`` = LOD per block from
            :func:`hf_layerif.allocation.owl.layerwise_outlier_distribution`, spread ``owl_lambda``). Each method
            uses only its own options (``epsilon``/``smooth``/``reverse`` for the linear map, ``owl_lambda`` for OWL).
        reverse: the opposite direction (METHOD §3 keeps it an option): a larger |score| gets a *smaller* ratio
            (the normalised scores are mirrored, a ↦ 1 − a, before smoothing and the linear map).
    Direction: by default a larger score (or PL_Alpha_Hill) gets a larger ratio (METHOD §3).
    """
    if not 0 < target_sparsity < 1:
        raise ValueError(f"target_sparsity must be in (0, 1), got {target_sparsity}.")
    if not 0 <= epsilon < 1:
        raise ValueError(f"epsilon must be in [0, 1), got {epsilon}.")
    chosen = allocation_method("sparsity", method)
    values = source_values(chosen, num_blocks, scores=scores, alpha_hill=alpha_hill, outlier_ratios=outlier_ratios)
    if values is not None:
        L = values.size
    elif num_blocks is not None or params_per_block is not None:
        L = num_blocks if num_blocks is not None else len(params_per_block)
    elif scores is not None:
        L = as_score_vector(scores).size
    else:
        raise ValueError(f"method={method!r} needs num_blocks= or params_per_block=.")
    params = np.ones(L) if params_per_block is None else np.asarray(params_per_block, dtype=np.float64)
    if params.size != L or np.any(params <= 0):
        raise ValueError(f"params_per_block must hold {L} positive counts, got {params.tolist()}.")
    options = chosen.resolve_options({"epsilon": epsilon, "smooth": smooth, "reverse": reverse, "owl_lambda": owl_lambda})
    return [float(v) for v in chosen.function(values, target_sparsity, params, **options)]
