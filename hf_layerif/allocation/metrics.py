"""PL_Alpha_Hill (SPEC §6): the heavy-tail exponent of a weight matrix's eigenvalue spectrum.

For W, the ESD is λ = squared singular values, ascending (exact zeros dropped: their log is undefined). For a
candidate xmin = λ_i with n = N − i values at or above it, the Hill estimate is
α̂ = 1 + n / (Σ_{j≥i} ln λ_j − n ln λ_i), and the KS distance D = max_j |1 − (λ_j/λ_i)^(1−α̂) − j/n|
(j = 0..n−1 over λ_i..λ_N). Candidates (AlphaPruning's ``xmin_peak``): λ_i ≤ 1.5 × the peak of a 100-bin
histogram of log10 λ (the peak = 10^(left edge of the fullest bin)), i < N − 1; the α̂ of minimum D is kept.
The block value is the mean over the block's linear weights. Computed in float64 on the weight's device.
"""

from __future__ import annotations

import torch
from torch import nn

from ..models.blocks import find_transformer_blocks, is_linear_like


def esd(weight: torch.Tensor) -> torch.Tensor:
    """Ascending non-zero eigenvalues of WᵀW (squared singular values), float64."""
    s = torch.linalg.svdvals(weight.detach().to(torch.float64))
    lam = torch.sort(s**2).values
    return lam[lam > 0]


def pl_alpha_hill(weight: torch.Tensor, bins: int = 100, peak_factor: float = 1.5) -> float:
    """PL_Alpha_Hill of one matrix (``xmin_peak`` choice of xmin, minimum KS distance)."""
    lam = esd(weight)
    N = lam.numel()
    if N < 2:
        raise ValueError("PL_Alpha_Hill needs a matrix with at least 2 non-zero singular values.")
    logs = torch.log10(lam)
    hist = torch.histc(logs, bins=bins, min=float(logs.min()), max=float(logs.max()))
    width = (logs.max() - logs.min()) / bins
    peak = 10 ** float(logs.min() + width * int(torch.argmax(hist)))
    ln = torch.log(lam)
    # suffix sums of ln λ: S_i = Σ_{j≥i} ln λ_j
    suffix = torch.flip(torch.cumsum(torch.flip(ln, [0]), 0), [0])
    best_alpha, best_d = None, float("inf")
    for i in range(N - 1):
        xmin = float(lam[i])
        if xmin > peak_factor * peak:
            break
        n = N - i
        alpha = 1.0 + n / float(suffix[i] - n * ln[i])
        tail = lam[i:]
        j = torch.arange(n, dtype=torch.float64, device=lam.device)
        d = float(torch.max(torch.abs(1 - (tail / xmin) ** (1 - alpha) - j / n)))
        if d < best_d:
            best_alpha, best_d = alpha, d
    if best_alpha is None:
        raise ValueError("no xmin candidate below 1.5 × the histogram peak")
    return best_alpha


def block_alpha_hill(model: nn.Module, block_pattern: str | None = None, progress: bool = False) -> list[float]:
    """Mean PL_Alpha_Hill of the linear weights of each Transformer block (one SVD per matrix)."""
    from tqdm.auto import tqdm

    blocks = find_transformer_blocks(model, block_pattern)
    means = []
    for _, block in tqdm(list(blocks), desc="PL_Alpha_Hill", disable=not progress):
        values = []
        for sub_name, sub in block.named_modules():
            if is_linear_like(sub) and not any(p.startswith(("lora_", "layerif_")) for p in sub_name.split(".")):
                values.append(pl_alpha_hill(sub.weight))
        means.append(sum(values) / len(values))
    return means
