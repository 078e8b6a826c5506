"""OWL's layerwise outlier distribution (METHOD §6) and the sparsity ratios it gives.

For block l, the Wanda scores |W_ij| · ‖X_j‖₂ of all its linear weights (X: the module's calibration inputs)
are pooled; LOD_l = 100 × the fraction of them greater than M × their mean (M = 5). Ratios: D_l =
(LOD_l − min)/(max − min) · 2λ, D_l ← D_l − mean(D) + (1 − S), r_l = 1 − D_l (≥ 0.01): the ratios span 2λ
around S, and a block with more outliers is pruned less. Inputs of block l are the dense outputs of block
l − 1 (OWL measures the unpruned model).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..calibration.runner import BlockSequentialRunner, InputStatistics
from ..models.offload import read_weight

OWL_M = 5.0
OWL_LAMBDA = 0.08
MIN_RATIO = 0.01


def wanda_scores(weight: torch.Tensor, column_norms: torch.Tensor, layout: str = "out_in") -> torch.Tensor:
    """|W_ij| · ‖X_j‖₂ in the weight's [out, in] layout (GPT-2 Conv1D weights are transposed first)."""
    w = weight.detach().float()
    if layout == "in_out":
        w = w.T
    return w.abs() * column_norms.to(w.device, torch.float32).unsqueeze(0)


def outlier_ratio(scores: list[torch.Tensor], m: float = OWL_M) -> float:
    """100 × fraction of the pooled scores greater than m × their mean."""
    flat = torch.cat([s.flatten() for s in scores])
    return float((flat > m * flat.mean()).sum()) / flat.numel() * 100.0


def layerwise_outlier_distribution(model: nn.Module, calibration_ids: torch.Tensor, m: float = OWL_M,
                                   batch_size: int = 1, progress: bool = True, **runner_kwargs) -> list[float]:
    """LOD_l (percent) for every block, from a block-sequential pass over ``calibration_ids`` [N, T]."""
    runner = BlockSequentialRunner(model, calibration_ids, batch_size=batch_size, progress=progress, **runner_kwargs)
    lods: list[float] = []

    def visit(index, block, forward):
        with InputStatistics(block) as stats:
            forward()
        # [out, in] weights read through the offload map (an offloaded block's weights are on meta again here)
        scores = [wanda_scores(read_weight(module), stats.column_norms(name)) for name, module in stats.modules.items()]
        lods.append(outlier_ratio(scores, m))

    runner.run(visit)
    return lods


def owl_ratios(outlier_ratios, target_sparsity: float, lam: float = OWL_LAMBDA) -> list[float]:
    """Sparsity per block from LOD values (percent): mean ratio S, spread 2λ, more outliers → less sparsity."""
    lod = np.asarray(outlier_ratios, dtype=np.float64)
    if not np.all(np.isfinite(lod)):
        raise ValueError("outlier ratios contain NaN/inf; recompute them from calibration data.")
    if lod.max() == lod.min():
        return [float(target_sparsity)] * lod.size
    density = (lod - lod.min()) / (lod.max() - lod.min()) * (2 * lam)
    density = density - density.mean() + (1 - target_sparsity)
    return np.maximum(1 - density, MIN_RATIO).tolist()
