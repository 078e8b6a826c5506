"""Stability of the block ranking (METHOD §9): bootstrap over training samples and Spearman statistics."""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import rankdata

UNSTABLE_SPEARMAN = 0.8


def reaches_threshold(value: float, threshold: float = UNSTABLE_SPEARMAN) -> bool:
    """``value >= threshold`` up to float rounding: Spearman correlations are rational numbers (0.8 exactly for one
    swapped pair of 4 blocks) that floating point may give as 0.7999999999999998."""
    return bool(value >= threshold - 1e-9)


def spearman_matrix(rows: np.ndarray) -> np.ndarray:
    """Pairwise Spearman rank correlation between the rows of ``rows`` [k, L] (average ranks for ties).

    A constant row has undefined correlation; it is reported as 1.0 against another constant row and 0.0
    otherwise.
    """
    ranks = rankdata(rows, axis=1)
    centered = ranks - ranks.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(centered, axis=1)
    constant = norms == 0
    safe = np.where(constant, 1.0, norms)
    corr = (centered @ centered.T) / np.outer(safe, safe)
    corr[constant[:, None] & constant[None, :]] = 1.0
    corr[constant[:, None] ^ constant[None, :]] = 0.0
    return corr


def spearman(x, y) -> float:
    return float(spearman_matrix(np.stack([np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)]))[0, 1])


def summarize_block_score_samples(samples: np.ndarray, reference: np.ndarray) -> dict:
    """Per-block mean/std/percentiles and ranking agreement of score samples [k, L] against ``reference`` [L]."""
    k = samples.shape[0]
    corr = spearman_matrix(np.concatenate([reference[None], samples]))
    to_reference = corr[0, 1:]
    pairwise = corr[1:, 1:][np.triu_indices(k, 1)] if k > 1 else np.array([1.0])
    return {
        "num_samples": int(k),
        "mean": samples.mean(axis=0).tolist(),
        "std": samples.std(axis=0, ddof=1 if k > 1 else 0).tolist(),
        "p05": np.percentile(samples, 5, axis=0).tolist(),
        "p95": np.percentile(samples, 95, axis=0).tolist(),
        "spearman_to_full_mean": float(to_reference.mean()),
        "spearman_to_full_p05": float(np.percentile(to_reference, 5)),
        "pairwise_spearman_mean": float(pairwise.mean()),
        "pairwise_spearman_min": float(pairwise.min()),
        "stable": reaches_threshold(float(np.percentile(to_reference, 5))),
    }


def summarize_draws(draw_scores: np.ndarray, reference: np.ndarray) -> dict:
    """Agreement of the block rankings of independent adapter draws (or fits) [k, L]: pairwise Spearman mean and
    minimum; ``stable`` when the mean reaches :data:`UNSTABLE_SPEARMAN`. Also the per-block spread of the draws."""
    summary = summarize_block_score_samples(draw_scores, reference)
    summary["stable"] = reaches_threshold(summary["pairwise_spearman_mean"])
    return summary


def split_half_step_up(split_half: float) -> float:
    """Agreement of two rankings from independent *full* validation sets, from the Spearman ``split_half`` of the
    rankings from the two halves of one set (Spearman–Brown with two halves: 2q / (1 + q); a q ≤ 0 is returned as
    is)."""
    q = float(split_half)
    return 2 * q / (1 + q) if q > 0 else q


def spearman_standard_error(value: float, num_items: int) -> float:
    """Standard error of a Spearman correlation ``value`` over ``num_items`` items: √(1.06 / (L − 3)) on the Fisher
    z scale (Fieller, Hartley & Pearson, 1957), carried back by the delta method, (1 − value²) · √(1.06 / (L − 3)).
    1.0 for L ≤ 3 (nothing can be said)."""
    if num_items <= 3:
        return 1.0
    v = float(np.clip(value, -0.999999, 0.999999))
    return (1 - v * v) * float(np.sqrt(1.06 / (num_items - 3)))


def reproducibility_standard_error(draw_agreement: float | None, draws: int, sample_agreement: float | None,
                                   validation_split_half: float | None, num_blocks: int) -> float | None:
    """Standard error of :func:`predicted_reproducibility` over ``num_blocks`` blocks, by the delta method: each
    figure's error taken as one Spearman's over L blocks (:func:`spearman_standard_error`), independent, through
    the derivatives of the prediction (Spearman–Brown for the draws, k / (1 + (k − 1) r)²; the step-up for the
    validation halves, 2 / (1 + q)²). A run's figures move with the accidents of its own samples and draws, which
    is what this measures; over simulated runs of one signal it came out 0.8 to 1.2 times the spread of their
    predictions (5 to 30 blocks; tested).
    None when no figure is given."""
    terms = []
    if draw_agreement is not None:
        k = max(int(draws), 1)
        r = float(draw_agreement)
        slope = k / (1 + (k - 1) * r) ** 2 if r > 0 else 1.0
        terms.append(slope * spearman_standard_error(r, num_blocks))
    if sample_agreement is not None:
        terms.append(spearman_standard_error(sample_agreement, num_blocks))
    if validation_split_half is not None:
        q = float(validation_split_half)
        terms.append((2 / (1 + q) ** 2 if q > 0 else 1.0) * spearman_standard_error(q, num_blocks))
    return float(np.sqrt(sum(t * t for t in terms))) if terms else None


def reproducibility_verdict(predicted: float, standard_error: float | None,
                            threshold: float = UNSTABLE_SPEARMAN) -> str:
    """"stable" when the predicted agreement less one standard error reaches ``threshold``, "unstable" when it
    stays under it with one standard error added, "uncertain" in between (one run's figures cannot tell)."""
    se = standard_error or 0.0
    if reaches_threshold(predicted - se, threshold):
        return "stable"
    return "uncertain" if reaches_threshold(predicted + se, threshold) else "unstable"


def predicted_reproducibility(draw_agreement: float | None, draws: int, sample_agreement: float | None,
                              validation_split_half: float | None = None) -> float | None:
    """Predicted Spearman between the block rankings of two independent runs of one scoring protocol (new adapter
    draws, a new training sample of the same size and, when ``validation_split_half`` is given, a new validation
    sample of the same size), from what one run measures about itself. Not seen: the adapter fit's dependence on
    the training sample (the draws refit on the same samples; the bootstrap resamples the scores without
    refitting); docs/FIDELITY.md §3.

    Model: a run's averaged block scores are signal + training-sample noise + validation-sample noise (both
    shared by its draws) + draw noise / k, with variances S, P, V and D / k, and T = S + P + V + D / k.

    - ``draw_agreement`` = r, the mean pairwise Spearman of the run's ``draws`` = k single draws: by
      Spearman–Brown, two means of k draws on the same samples agree at r_k = k·r / (1 + (k − 1)·r) = (T − D/k) / T.
    - ``sample_agreement`` = s, the mean pairwise Spearman of bootstrap resamples of the training samples (each
      resample deviates from the full sample about as a new sample would; the draws stay fixed): s = (T − P) / T.
    - ``validation_split_half`` = q, the Spearman between the rankings scored against the two halves of the
      validation samples (same draws, same training samples; each half's noise is 2V): q = (T − V) / (T + V), so a
      new validation set of the full size agrees at u = 2q / (1 + q) = (T − V) / T (:func:`split_half_step_up`).
    - Two independent runs share only the signal: ρ = S / T = r_k + s + u − 2 (without the validation figure,
      r_k + s − 1: the agreement of runs that share their validation samples).

    Figures that are missing (one draw; no bootstrap; one validation sample) are left out of the sum; with none,
    None. Correlations of ranks follow this model of values closely (tested by simulation).
    """
    parts = []
    if draw_agreement is not None:
        k = max(int(draws), 1)
        r = float(draw_agreement)
        parts.append(k * r / (1 + (k - 1) * r) if r > 0 else r)
    if sample_agreement is not None:
        parts.append(float(sample_agreement))
    if validation_split_half is not None:
        parts.append(split_half_step_up(validation_split_half))
    if not parts:
        return None
    return float(sum(parts) - (len(parts) - 1))


def floor_to(value: float, digits: int = 3) -> float:
    """``value`` rounded down (so a figure just under a threshold is never printed equal to it)."""
    scale = 10**digits
    return float(np.floor(value * scale + 1e-9) / scale)


def bootstrap_block_scores(influence: torch.Tensor, aggregate, num_resamples: int, seed: int = 0,
                           chunk: int = 16) -> np.ndarray:
    """Block scores of ``num_resamples`` bootstrap resamples of the training samples (columns).

    Args:
        influence: [L, n] influence matrix.
        aggregate: callable mapping [..., L, n] influences to [..., L] block scores.
    Returns:
        [num_resamples, L] float64 array. Memory: chunk × L × n values at a time.
    """
    L, n = influence.shape
    gen = torch.Generator().manual_seed(seed)
    inf64 = influence.to(torch.float64)
    out = []
    for start in range(0, num_resamples, chunk):
        b = min(chunk, num_resamples - start)
        idx = torch.randint(0, n, (b, n), generator=gen)
        resampled = inf64[:, idx].permute(1, 0, 2)  # [b, L, n]
        out.append(aggregate(resampled).numpy())
    return np.concatenate(out) if out else np.zeros((0, L))
