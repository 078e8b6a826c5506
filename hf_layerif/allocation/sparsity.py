"""Sparsity ratio per block (METHOD §5) with an exact global budget, and its baselines."""

from __future__ import annotations

import numpy as np

from .owl import OWL_LAMBDA
from .score_vectors import as_score_vector

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
        method: ``"layerif"``, ``"uniform"`` (r_l = S), ``"alphapruning"`` (block-mean PL_Alpha_Hill values
            ``alpha_hill`` through the same map, no smoothing) or ``"owl"`` (``outlier_ratios`` = LOD per block
            from :func:`hf_layerif.allocation.owl.layerwise_outlier_distribution`, spread ``owl_lambda``).
        reverse: the opposite direction (METHOD §3 keeps it an option): a larger |score| gets a *smaller* ratio
            (the normalised scores are mirrored, a ↦ 1 − a, before smoothing and the linear map).
    Direction: by default a larger score (or PL_Alpha_Hill) gets a larger ratio (METHOD §3).
    """
    if not 0 < target_sparsity < 1:
        raise ValueError(f"target_sparsity must be in (0, 1), got {target_sparsity}.")
    if not 0 <= epsilon < 1:
        raise ValueError(f"epsilon must be in [0, 1), got {epsilon}.")
    if method == "owl":
        if outlier_ratios is None:
            raise ValueError("method='owl' needs outlier_ratios= (layerwise_outlier_distribution(model, calibration_ids)).")
        from .owl import owl_ratios

        lod = as_score_vector(outlier_ratios, num_blocks, "outlier_ratios")
        return owl_ratios(lod, target_sparsity, owl_lambda)
    if method == "alphapruning":
        if alpha_hill is None:
            raise ValueError("method='alphapruning' needs alpha_hill= (block means of PL_Alpha_Hill).")
        values = as_score_vector(alpha_hill, num_blocks, "alpha_hill")
        smooth = False if smooth is None else smooth
    elif method in ("layerif", "uniform"):
        if scores is None and method == "uniform":
            if num_blocks is None and params_per_block is None:
                raise ValueError("method='uniform' needs num_blocks= or params_per_block=.")
            values = np.zeros(num_blocks if num_blocks is not None else len(params_per_block))
        else:
            values = as_score_vector(scores, num_blocks)
        smooth = (method == "layerif") if smooth is None else smooth
    else:
        raise ValueError(f"unknown method {method!r}; use 'layerif', 'uniform', 'alphapruning' or 'owl'.")
    L = values.size
    params = np.ones(L) if params_per_block is None else np.asarray(params_per_block, dtype=np.float64)
    if params.size != L or np.any(params <= 0):
        raise ValueError(f"params_per_block must hold {L} positive counts, got {params.tolist()}.")
    if method == "uniform":
        return [float(target_sparsity)] * L
    return map_scores_to_ratios(values, target_sparsity, epsilon, params, smooth, reverse).tolist()
