"""Registry of pruning methods chosen by name (``PruningConfig.method``, ``hf-layerif prune --method``).

A method is one function registered with :func:`register_pruning_method`. It declares which calibration
statistics of a module's input it needs — ``None`` (no calibration: magnitude), ``"column_norms"`` (‖X_j‖₂ per
input column: Wanda) or ``"gram"`` (H = Σ x xᵀ: SparseGPT) — and prunes one weight::

    fn(weight [out, in], statistics, ratio, config) -> (pruned weight [out, in], mask [out, in] bool, info dict)

``statistics`` is the module's column norms [in], its Gram matrix [in, in] (float64 on a CPU, float32 on an
accelerator), or None; ``config`` is the :class:`~hf_layerif.pruning.PruningConfig` (N:M structure, SparseGPT's
blocksize and dampening, ...). ``ratio`` is the module's fraction of weights to remove, in [0, 1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .masks import magnitude_mask, sparsegpt_prune, wanda_mask

STATISTICS = (None, "column_norms", "gram")


@dataclass(frozen=True)
class PruningMethod:
    """One named pruning method: ``prune`` (see the module docstring) and the input statistics it needs."""

    name: str
    prune: Callable[..., tuple[torch.Tensor, torch.Tensor, dict[str, Any]]]
    statistics: str | None = None
    description: str = ""

    @property
    def needs_calibration(self) -> bool:
        return self.statistics is not None

    @property
    def needs_gram(self) -> bool:
        """Whether ``prune`` reads the input Gram matrix H = Σ x xᵀ (else column norms, or nothing)."""
        return self.statistics == "gram"


PRUNING_METHODS: dict[str, PruningMethod] = {}


def register_pruning_method(name: str, *, statistics: str | None = None, description: str = ""):
    """Decorator registering ``prune`` as pruning method ``name`` (replacing one of that name)."""
    if statistics not in STATISTICS:
        raise ValueError(f"statistics must be one of {STATISTICS}, got {statistics!r}.")

    def register(prune: Callable) -> Callable:
        PRUNING_METHODS[name] = PruningMethod(name, prune, statistics, description)
        return prune

    return register


def pruning_method(name: str) -> PruningMethod:
    """The registered method ``name``; an unknown name raises ``ValueError`` listing the registered ones."""
    if name not in PRUNING_METHODS:
        raise ValueError(f"method={name!r}; choose one of {', '.join(sorted(PRUNING_METHODS))}.")
    return PRUNING_METHODS[name]


@register_pruning_method("magnitude", description="the smallest |W| of each matrix (no calibration)")
def prune_magnitude(weight, statistics, ratio, config):
    mask = magnitude_mask(weight, ratio, config.nm)
    return weight.masked_fill(mask, 0), mask, {}


@register_pruning_method("wanda", statistics="column_norms", description="Wanda: the smallest |W|·‖X‖ of each row")
def prune_wanda(weight, statistics, ratio, config):
    mask = wanda_mask(weight, statistics, ratio, config.nm).to(weight.device)
    return weight.masked_fill(mask, 0), mask, {}


@register_pruning_method("sparsegpt", statistics="gram", description="SparseGPT: OBS pruning with error feedback")
def prune_sparsegpt(weight, statistics, ratio, config):
    return sparsegpt_prune(weight.to(statistics.device), statistics, ratio, config.nm, config.blocksize,
                           config.percdamp)


__all__ = ["PRUNING_METHODS", "PruningMethod", "pruning_method", "register_pruning_method"]
