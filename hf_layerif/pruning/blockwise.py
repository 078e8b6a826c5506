"""Pruning one Transformer block: collect its calibration statistics, then prune each of its linear weights.

Split in two so that several ratios can be applied to the same statistics (allocation selection prunes one block
for several candidate allocations that share their inputs, :mod:`hf_layerif.pruning.selection`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

from ..calibration import InputStatistics
from ..models.blocks import base_linears
from ..models.offload import read_weight, write_weight
from .config import PruningConfig
from .methods import PruningMethod
from .report import ModuleResult


def collect_block_statistics(block: nn.Module, method: PruningMethod, config: PruningConfig,
                             forward: Callable[[], None] | None) -> InputStatistics | None:
    """The input statistics ``method`` needs of ``block``'s linear modules, gathered while ``forward()`` runs the
    block (dense weights) on its calibration inputs; None for a method without calibration."""
    if method.statistics is None:
        return None
    dtype = getattr(torch, config.hessian_dtype) if method.needs_gram else torch.float32
    with InputStatistics(block, gram=method.needs_gram, dtype=dtype) as stats:
        forward()
    return stats


def prune_block_linears(block: nn.Module, index: int, block_name: str, ratio: float, method: PruningMethod,
                        config: PruningConfig, stats: InputStatistics | None) -> list[ModuleResult]:
    """Prune every linear weight of ``block`` to ``ratio`` in place (offload-aware) and say what each achieved."""
    results = []
    for name, module in base_linears(block):
        started = time.time()
        weight = read_weight(module)
        statistics = (None if stats is None else
                      stats.grams[name] if method.needs_gram else stats.column_norms(name))
        new, _, info = method.prune(weight, statistics, ratio, config)
        write_weight(module, new)
        achieved = float((new == 0).sum()) / new.numel()
        requested = ratio if config.nm is None else config.nm[0] / config.nm[1]
        results.append(ModuleResult(f"{block_name}.{name}", index, new.numel(), requested, achieved,
                                    time.time() - started, info))
    return results


def read_block_weights(block: nn.Module, device: str | torch.device | None = None) -> dict[str, torch.Tensor]:
    """Copies of the [out, in] weights of ``block``'s linear modules (on ``device``, default where they are)."""
    return {name: read_weight(module).to(device, copy=True) if device is not None else read_weight(module).clone()
            for name, module in base_linears(block)}


def write_block_weights(block: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Write weights read by :func:`read_block_weights` back into ``block``."""
    for name, module in base_linears(block):
        write_weight(module, weights[name])


__all__ = ["collect_block_statistics", "prune_block_linears", "read_block_weights", "write_block_weights"]
