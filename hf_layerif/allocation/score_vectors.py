"""Checks shared by the allocators: scores must be finite, of the right length, and usable."""

from __future__ import annotations

import numpy as np

from ..utils.logging import get_logger

logger = get_logger(__name__)


def as_score_vector(scores, num_blocks: int | None = None, name: str = "scores") -> np.ndarray:
    """Block scores as a float64 vector; accepts a list, a tensor or a ``LayerInfluenceScores``.

    Raises ``ValueError`` for NaN/inf, an empty vector, or a length other than ``num_blocks``.
    """
    if hasattr(scores, "block_scores"):
        scores = scores.block_scores()
    if hasattr(scores, "detach"):
        scores = scores.detach().cpu().numpy()
    values = np.asarray(scores, dtype=np.float64).reshape(-1)
    if values.size == 0:
        raise ValueError(f"{name} is empty.")
    if num_blocks is not None and values.size != num_blocks:
        raise ValueError(f"{name} has {values.size} values but the model has {num_blocks} blocks; compute the scores on "
                         "this model (or pass the matching block scores).")
    if not np.all(np.isfinite(values)):
        bad = np.flatnonzero(~np.isfinite(values)).tolist()
        raise ValueError(f"{name} has NaN/inf values at blocks {bad}; recompute the scores (check the influence run).")
    return values


def shift_negative(values: np.ndarray, name: str = "scores") -> np.ndarray:
    """Shift scores so the minimum is 0 when any is negative (aggregation ``all`` can give that), with a warning."""
    if values.min() < 0:
        logger.warning("%s contain negative values (min %.4g); shifting them so that the minimum is 0 (METHOD §3).",
                       name, values.min())
        return values - values.min()
    return values


def mirror(values: np.ndarray) -> np.ndarray:
    """The reversed direction: v ↦ max(v) + min(v) − v (the order flips, the range is kept)."""
    return values.max() + values.min() - values


SOURCE_HELP = {
    "scores": "scores= (LayerIF block scores, e.g. a LayerInfluenceScores)",
    "alpha_hill": "alpha_hill= (block means of PL_Alpha_Hill: block_alpha_hill(model))",
    "outlier_ratios": "outlier_ratios= (layerwise_outlier_distribution(model, calibration_ids))",
}


def source_values(method, num_blocks: int | None, **given) -> np.ndarray | None:
    """The per-block input ``method`` reads (``method.source`` among ``given``) as a checked float64 vector [L];
    None for a method without a source.

    Raises:
        ValueError: the input is missing (naming the keyword and how to compute it), or not a valid score vector.
    """
    if method.source is None:
        return None
    value = given.get(method.source)
    if value is None:
        raise ValueError(f"method={method.name!r} needs {SOURCE_HELP[method.source]}.")
    return as_score_vector(value, num_blocks, method.source if method.source != "scores" else "scores")
