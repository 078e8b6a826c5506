"""``LayerInfluenceScores``: the per-block influence matrix, block scores, stability and provenance.

Sign convention (Koh & Liang), stated in every file written: I_l(z_i) < 0 means up-weighting training sample
z_i lowers the validation loss through block l (beneficial); I_l(z_i) > 0 means it raises it (detrimental).
Block scores q_l are non-negative magnitudes of beneficial influence by default (METHOD §3); a larger q_l
means the block is more sensitive to the task's data, i.e. less well trained for it.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..utils.logging import get_logger
from .score_files import (  # noqa: F401 - SIGN_CONVENTION and the file names are re-exported here
    INFLUENCE_FILE,
    SCORES_JSON,
    SIGN_CONVENTION,
    read_scores,
    scores_json,
    write_scores,
)
from .stability import (
    UNSTABLE_SPEARMAN,
    bootstrap_block_scores,
    floor_to,
    predicted_reproducibility,
    reaches_threshold,
    reproducibility_standard_error,
    reproducibility_verdict,
    spearman,
    split_half_step_up,
    summarize_block_score_samples,
    summarize_draws,
)
from .validation_parts import split_block_scores

logger = get_logger(__name__)



Aggregation = Callable[[torch.Tensor, float], torch.Tensor]
AGGREGATIONS: dict[str, Aggregation] = {}


def register_aggregation(name: str) -> Callable[[Aggregation], Aggregation]:
    """Decorator: make ``fn(influence [..., L, n] float64, fraction) -> [..., L]`` available as an aggregation
    by ``name`` (in ``InfluenceArguments.aggregation``, ``block_scores(name)`` and the CLI)."""

    def decorate(fn: Aggregation) -> Aggregation:
        if name in AGGREGATIONS:
            raise ValueError(f"aggregation {name!r} is already registered")
        AGGREGATIONS[name] = fn
        return fn

    return decorate


@register_aggregation("positive")
def _positive(values: torch.Tensor, fraction: float) -> torch.Tensor:
    """Σ_i max(−I_l(z_i), 0): the beneficial mass (LayerIF(+ve), the default)."""
    return (-values).clamp_min(0).sum(-1)


@register_aggregation("all")
def _all(values: torch.Tensor, fraction: float) -> torch.Tensor:
    """−Σ_i I_l(z_i) (may be negative)."""
    return -values.sum(-1)


@register_aggregation("top_fraction")
def _top_fraction(values: torch.Tensor, fraction: float) -> torch.Tensor:
    """Σ of −I_l over the ⌈fraction·n⌉ samples with the most negative I_l."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    k = max(1, math.ceil(fraction * values.shape[-1]))
    return torch.topk(-values, k, dim=-1).values.sum(-1)


@register_aggregation("harmful")
def _harmful(values: torch.Tensor, fraction: float) -> torch.Tensor:
    """Σ_i max(I_l(z_i), 0): the paper's literal §3.2 formula, for ablation."""
    return values.clamp_min(0).sum(-1)


def aggregate_block_scores(influence: torch.Tensor, aggregation: str = "positive", fraction: float = 0.25) -> torch.Tensor:
    """Block scores q_l from influences [..., L, n] (METHOD §3) with a registered aggregation; returns [..., L]
    float64. Registered: ``positive`` (default), ``all``, ``top_fraction``, ``harmful`` (see each function)."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {tuple(AGGREGATIONS)}, got {aggregation!r}")
    return AGGREGATIONS[aggregation](influence.to(torch.float64), fraction)


@dataclass(frozen=True)
class LayerInfluenceScores:
    """Result of :func:`hf_layerif.compute_layer_influence`: a value (frozen; other reporting settings give a new
    object, :meth:`with_reporting`). Saving and loading live in :mod:`.score_files`, the table and the plot in
    :mod:`.score_display`, the bootstrap in :mod:`.stability`.

    Attributes:
        influence: [num_blocks, num_train] float32 influence matrix (Koh & Liang sign, see module docstring).
        block_names: normalised block names, e.g. ``model.layers.0``.
        damping: damping λ of each parameter group (one per block for ``granularity="block"``), float64.
        group_to_block: block index of each damping entry.
        arguments: the :class:`~hf_layerif.InfluenceArguments` used, as a dict.
        estimator: the estimator's name and settings.
        provenance: model id / revision / architecture, dataset fingerprints, library versions, time.
        train_losses: [num_train] per-sample training losses at the scored parameters.
        repeat_block_scores: [repeats, num_blocks] block scores of repeated adapter initialisations (or None).
        draw_influence: [repeats, num_blocks, num_train] the normalised influence matrix of each adapter draw (or
            None), so that another aggregation has its own draw statistics (:meth:`with_reporting`).
        validation_part_influence: [P, num_blocks, num_train] the influence against the mean gradient of each of
            the P interleaved parts of the validation samples (averaged over draws like ``influence``), or None.
            Influence is linear in that gradient, so a union of parts scores as their weighted mean; the stability
            report compares the rankings of every balanced pair of halves (:mod:`.validation_parts`).
        validation_part_weights: [P] w_p = m_p / m, summing to 1 (None without the parts).
    """

    influence: torch.Tensor
    block_names: list[str]
    damping: torch.Tensor
    group_to_block: list[int]
    arguments: dict[str, Any]
    estimator: dict[str, Any]
    provenance: dict[str, Any] = field(default_factory=dict)
    train_losses: torch.Tensor | None = None
    repeat_block_scores: torch.Tensor | None = None
    draw_influence: torch.Tensor | None = None
    validation_part_influence: torch.Tensor | None = None
    validation_part_weights: list[float] | None = None
    # the stability of the default reporting settings, computed once (a cache of a pure function of the fields)
    _stability: dict | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.influence.dim() != 2 or self.influence.shape[0] != len(self.block_names):
            raise ValueError(f"influence must be [num_blocks={len(self.block_names)}, num_train], got {tuple(self.influence.shape)}")
        object.__setattr__(self, "influence", self.influence.to(torch.float32))
        parts = self.validation_part_influence
        if parts is not None:
            if parts.dim() != 3 or tuple(parts.shape[1:]) != tuple(self.influence.shape) or parts.shape[0] % 2:
                raise ValueError(f"validation_part_influence must be [P, {', '.join(map(str, self.influence.shape))}] "
                                 f"with an even P, got {tuple(parts.shape)}")
            weights = self.validation_part_weights
            if weights is None or len(weights) != parts.shape[0] or min(weights) <= 0 or abs(sum(weights) - 1) > 1e-6:
                raise ValueError(f"validation_part_influence needs validation_part_weights: {parts.shape[0]} positive "
                                 f"weights m_p / m summing to 1, got {weights}.")
            object.__setattr__(self, "validation_part_influence", parts.to(torch.float32))
            object.__setattr__(self, "validation_part_weights", [float(w) for w in weights])

    @property
    def num_blocks(self) -> int:
        return self.influence.shape[0]

    @property
    def num_train(self) -> int:
        return self.influence.shape[1]

    def block_damping(self) -> list[float] | list[list[float]]:
        """λ per block (block granularity) or the list of per-tensor λ of each block (tensor granularity)."""
        per_block: list[list[float]] = [[] for _ in range(self.num_blocks)]
        for lam, block in zip(self.damping.tolist(), self.group_to_block):
            per_block[block].append(lam)
        return [v[0] for v in per_block] if all(len(v) == 1 for v in per_block) else per_block

    def block_scores(self, aggregation: str | None = None, fraction: float | None = None) -> torch.Tensor:
        """Block scores q [num_blocks] float64 (METHOD §3; default aggregation from the run's arguments)."""
        aggregation = aggregation or self.arguments.get("aggregation", "positive")
        fraction = self.arguments.get("fraction", 0.25) if fraction is None else fraction
        return aggregate_block_scores(self.influence, aggregation, fraction)

    def validation_split_scores(self, aggregation: str | None = None, fraction: float | None = None
                                ) -> torch.Tensor | None:
        """Block scores [S, 2, num_blocks] float64 of the two halves of each of the S balanced splits of the
        validation parts (:func:`~hf_layerif.influence.validation_parts.balanced_splits`; None when the run did not
        form the parts)."""
        if self.validation_part_influence is None:
            return None
        aggregation = aggregation or self.arguments.get("aggregation", "positive")
        fraction = self.arguments.get("fraction", 0.25) if fraction is None else fraction
        return split_block_scores(self.validation_part_influence, self.validation_part_weights,
                                  lambda x: aggregate_block_scores(x, aggregation, fraction))

    def ranking(self, aggregation: str | None = None) -> list[int]:
        """Block indices from the highest to the lowest score."""
        scores = self.block_scores(aggregation)
        return sorted(range(self.num_blocks), key=lambda i: (-float(scores[i]), i))

    # --- stability -----------------------------------------------------------------------------------
    def stability(self, num_resamples: int | None = None, aggregation: str | None = None, seed: int | None = None) -> dict:
        """Bootstrap over training samples of the block scores (METHOD §9), cached for the default settings.

        Returns a dict with per-block ``mean``, ``std``, ``p05``, ``p95``, Spearman of resampled rankings to the
        full-data ranking (``spearman_to_full_mean`` / ``_p05``), ``pairwise_spearman_mean``, ``stable``, and
        when repeats were run, the same statistics over adapter initialisations under ``repeats``; when the run
        formed the validation parts, under ``validation`` the Spearman between two halves' rankings averaged over
        every balanced split of the parts (``split_half_spearman``, with its ``split_half_spearman_range``, the
        ``splits`` and ``parts``) and what it gives for a new validation set of the full size
        (``full_size_spearman``); under ``reproducibility`` the verdict: the Spearman predicted between this run's
        ranking and an independent run's (:func:`~hf_layerif.influence.stability.predicted_reproducibility`) and
        ``stable`` (it reaches :data:`UNSTABLE_SPEARMAN`).
        """
        default = num_resamples is None and aggregation is None and seed is None
        if default and self._stability is not None:
            return self._stability
        aggregation = aggregation or self.arguments.get("aggregation", "positive")
        fraction = self.arguments.get("fraction", 0.25)
        num_resamples = self.arguments.get("bootstrap_samples", 200) if num_resamples is None else num_resamples
        seed = self.arguments.get("seed", 0) if seed is None else seed
        reference = self.block_scores(aggregation).numpy()
        result: dict[str, Any] = {"aggregation": aggregation}
        if num_resamples > 0 and self.num_train > 1:
            samples = bootstrap_block_scores(self.influence, lambda x: aggregate_block_scores(x, aggregation, fraction),
                                             num_resamples, seed)
            result["bootstrap"] = summarize_block_score_samples(samples, reference)
        if self.repeat_block_scores is not None and self.repeat_block_scores.shape[0] > 1:
            draws = self.repeat_block_scores.numpy().astype(np.float64)
            if self.draw_influence is not None:
                draws = aggregate_block_scores(self.draw_influence, aggregation, fraction).numpy()
            elif aggregation != self.arguments.get("aggregation", "positive"):
                draws = None  # scores of an older version kept the per-draw scores of their own aggregation only
            if draws is not None:
                result["repeats"] = summarize_draws(draws, reference)
        splits = self.validation_split_scores(aggregation, fraction)
        if splits is not None:
            agreements = [spearman(pair[0].numpy(), pair[1].numpy()) for pair in splits]
            q = float(np.mean(agreements))
            result["validation"] = {"split_half_spearman": q, "full_size_spearman": split_half_step_up(q),
                                    "split_half_spearman_range": [float(min(agreements)), float(max(agreements))],
                                    "parts": int(self.validation_part_influence.shape[0]),
                                    "splits": int(splits.shape[0])}
        draws = result.get("repeats")
        boot = result.get("bootstrap")
        validation = result.get("validation")
        figures = (draws["pairwise_spearman_mean"] if draws else None, draws["num_samples"] if draws else 1,
                   boot["pairwise_spearman_mean"] if boot else None,
                   validation["split_half_spearman"] if validation else None)
        predicted = predicted_reproducibility(*figures)
        if predicted is not None:
            # one run's figures move with its own samples and draws: the verdict is "stable" or "unstable" only when
            # the prediction is one standard error clear of the threshold, else "uncertain"
            se = reproducibility_standard_error(*figures, self.num_blocks)
            verdict = reproducibility_verdict(predicted, se)
            result["reproducibility"] = {"predicted_spearman": predicted, "predicted_spearman_se": se,
                                         "stable": verdict == "stable", "verdict": verdict,
                                         "draws_averaged": draws["num_samples"] if draws else 1,
                                         "new_validation_samples": validation is not None}
        if default:
            object.__setattr__(self, "_stability", result)
        return result

    def with_reporting(self, aggregation: str | None = None, fraction: float | None = None,
                       bootstrap_samples: int | None = None) -> LayerInfluenceScores:
        """A new scores object with other reporting settings (the default aggregation, its fraction, the bootstrap
        size) over the same influence matrices, with its own stability; this object is unchanged."""
        arguments = dict(self.arguments)
        for name, value in (("aggregation", aggregation), ("fraction", fraction), ("bootstrap_samples", bootstrap_samples)):
            if value is not None:
                arguments[name] = value
        if arguments.get("aggregation") not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {tuple(AGGREGATIONS)}, got {arguments.get('aggregation')!r}")
        if arguments == self.arguments:
            return self
        repeat = self.repeat_block_scores
        if self.draw_influence is not None:
            repeat = aggregate_block_scores(self.draw_influence, arguments["aggregation"], arguments.get("fraction", 0.25))
        elif arguments.get("aggregation") != self.arguments.get("aggregation"):
            repeat = None
        return dataclasses.replace(self, arguments=arguments, repeat_block_scores=repeat, _stability=None)

    def agreement(self) -> dict[str, float]:
        """The ranking-agreement figures: the 5th-percentile Spearman of bootstrap resamples to the full ranking
        (``bootstrap``), the mean pairwise Spearman of the adapter draws / fits (``draws``), where they exist, and
        the Spearman predicted with an independent run of the protocol (``reproducibility``), which decides
        whether the run is called stable."""
        info = self.stability()
        figures = {}
        if info.get("bootstrap"):
            figures["bootstrap"] = info["bootstrap"]["spearman_to_full_p05"]
        if info.get("repeats"):
            figures["draws"] = info["repeats"]["pairwise_spearman_mean"]
        if info.get("reproducibility"):
            figures["reproducibility"] = info["reproducibility"]["predicted_spearman"]
        return figures

    def warn_if_unstable(self) -> bool:
        """Log one warning when the ranking is predicted to reproduce below :data:`UNSTABLE_SPEARMAN` across
        independent runs of the protocol (new draws, a resampled training set and, when the run formed the
        validation halves, new validation samples), naming the largest source of noise and its fix;
        return True then. (Scores saved without the prediction: the weaker of the bootstrap and draw figures.)"""
        info = self.stability()
        figures = self.agreement()
        if "reproducibility" in figures:
            value = figures["reproducibility"]
            if info["reproducibility"].get("verdict", "stable" if reaches_threshold(value) else "unstable") != "unstable":
                return False
            draws, boot, validation = info.get("repeats"), info.get("bootstrap"), info.get("validation")
            k = draws["num_samples"] if draws else 1
            # what each source of noise costs the prediction (1 - r_k, 1 - s, 1 - u; see predicted_reproducibility)
            costs = {"draws": 1.0 - predicted_reproducibility(draws["pairwise_spearman_mean"], k, None) if draws else 0.0,
                     "training": 1.0 - boot["pairwise_spearman_mean"] if boot else 0.0,
                     "validation": 1.0 - validation["full_size_spearman"] if validation else 0.0}
            parts = []
            if draws:
                parts.append(f"{k} adapter draws averaged, agreeing pairwise at {floor_to(draws['pairwise_spearman_mean']):.3f}")
            if boot:
                parts.append(f"bootstrap resamples of the training samples agreeing at "
                             f"{floor_to(boot['pairwise_spearman_mean']):.3f}")
            if validation:
                splits = validation.get("splits", 1)
                parts.append(f"halves of the validation samples agreeing at {floor_to(validation['split_half_spearman']):.3f}"
                             + (f" (mean of {splits} splits)" if splits > 1 else ""))
            fix = {"draws": "Average more draws (repeats=) or fit the scoring adapter longer (fit_steps=)",
                   "training": "Score more training samples",
                   "validation": "Use more validation samples"}[max(costs, key=costs.get)]
            runs = ("new validation samples" if validation else "the same validation samples")
            se = info["reproducibility"].get("predicted_spearman_se")
            bound = f" ± {se:.3f}" if se else ""
            logger.warning("The block ranking is unstable: it is predicted to reproduce at a Spearman of %.3f%s across "
                           "independent runs of this protocol with %s (%s), below %.1f by more than its standard error. "
                           "%s before acting on it.",
                           floor_to(value), bound, runs, "; ".join(parts), UNSTABLE_SPEARMAN, fix)
            return True
        if not figures:
            return False
        weakest = min(figures, key=figures.get)
        value = figures[weakest]
        if reaches_threshold(value):
            return False
        what = {"bootstrap": "5th-percentile Spearman of bootstrap resamples of the training samples to the full ranking",
                "draws": "mean pairwise Spearman between adapter draws"}[weakest]
        fix = {"bootstrap": "Score more training samples",
               "draws": "Fit the scoring adapter (fit_steps=) or average more draws (repeats=)"}[weakest]
        logger.warning("The block ranking is unstable: %s is %.3f, below %.1f. %s before acting on it.", what,
                       floor_to(value), UNSTABLE_SPEARMAN, fix)
        return True

    # --- I/O -----------------------------------------------------------------------------------------
    def to_json_dict(self) -> dict[str, Any]:
        """The JSON of ``layerif_scores.json`` (:mod:`.score_files`)."""
        return scores_json(self, AGGREGATIONS)

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write ``influence.safetensors`` (influence, damping, losses) and ``layerif_scores.json``, atomically."""
        write_scores(self, save_directory, AGGREGATIONS)

    @classmethod
    def from_pretrained(cls, repo_id_or_path: str | os.PathLike, revision: str | None = None) -> LayerInfluenceScores:
        """Load scores saved by :meth:`save_pretrained` from a local folder or a Hub repo (JSON + safetensors only;
        nothing is unpickled)."""
        return cls(**read_scores(repo_id_or_path, revision))

    # --- display -------------------------------------------------------------------------------------
    def summary_table(self, aggregation: str | None = None) -> str:
        """A plain-text table: block, score, bootstrap mean ± std, rank, damping (:mod:`.score_display`)."""
        from .score_display import scores_table

        return scores_table(self, aggregation)

    def plot(self, path: str | os.PathLike, aggregation: str | None = None, title: str | None = None) -> Path:
        """Save a PNG: per-block score bars (bootstrap p05–p95 as error bars) and a block × sample heat map
        (:mod:`.score_display`)."""
        from .score_display import plot_scores

        return plot_scores(self, path, aggregation, title)
