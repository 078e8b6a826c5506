"""Per-block inputs of allocation methods that the pruner computes from the model itself, each in one place.

A sparsity allocation method declares the input it reads (``AllocationMethod.source``); the ones computed here from
the model are OWL's outlier ratios (a block-sequential pass over calibration activations) and PL_Alpha_Hill (one SVD
per weight matrix, cached on disk). Both read weights through the offload map, so offloaded models work. Used by
the pruner for a named allocation and by allocation selection for its candidates (each input once per run).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from .config import PruningConfig


def outlier_ratios(model: nn.Module, config: PruningConfig, calibration_ids: torch.Tensor | None,
                   progress: bool) -> list[float]:
    """OWL's layerwise outlier distribution (percent per block) on ``calibration_ids`` [nsamples, seqlen]."""
    from ..allocation.owl import layerwise_outlier_distribution

    if calibration_ids is None:
        raise ValueError("OWL's outlier ratios need calibration token ids.")
    return layerwise_outlier_distribution(model, calibration_ids, m=config.owl_m, batch_size=config.batch_size,
                                          progress=progress, **config.activation_kwargs())


def alpha_hill(model: nn.Module, config: PruningConfig, calibration_ids: torch.Tensor | None,
               progress: bool) -> list[float]:
    """Block-mean PL_Alpha_Hill of the linear weights (no calibration; cached per model and weights)."""
    from ..allocation import block_alpha_hill

    return block_alpha_hill(model, progress=progress)


# source name (AllocationMethod.source) -> how to compute it from the model
MODEL_SOURCES: dict[str, Callable[..., list[float]]] = {"outlier_ratios": outlier_ratios, "alpha_hill": alpha_hill}
# the sources that read calibration activations (allocation selection screens them on its subset)
CALIBRATION_SOURCES = ("outlier_ratios",)


def compute_model_inputs(model: nn.Module, config: PruningConfig, sources: Iterable[str | None],
                         calibration_ids: torch.Tensor | None, progress: bool) -> dict[str, list[float]]:
    """Each distinct model-derived source among ``sources`` computed once (None and ``"scores"`` are skipped).

    Raises:
        ValueError: a source the pruner cannot compute from the model (pass an Allocation instead).
    """
    inputs: dict[str, list[float]] = {}
    for source in dict.fromkeys(sources):
        if source in (None, "scores") or source in inputs:
            continue
        if source not in MODEL_SOURCES:
            raise ValueError(f"an allocation needs {source}, which the pruner cannot compute from the model: pass an "
                             "Allocation or LayerInfluenceScores instead.")
        inputs[source] = MODEL_SOURCES[source](model, config, calibration_ids, progress)
    return inputs


__all__ = ["CALIBRATION_SOURCES", "MODEL_SOURCES", "compute_model_inputs"]
