"""PL_Alpha_Hill (SPEC §6): the heavy-tail exponent of a weight matrix's eigenvalue spectrum.

For W, the ESD is λ = squared singular values, ascending (exact zeros dropped: their log is undefined). For a
candidate xmin = λ_i with n = N − i values at or above it, the Hill estimate is
α̂ = 1 + n / (Σ_{j≥i} ln λ_j − n ln λ_i), and the KS distance D = max_j |1 − (λ_j/λ_i)^(1−α̂) − j/n|
(j = 0..n−1 over λ_i..λ_N). Candidates (AlphaPruning's ``xmin_peak``): λ_i ≤ 1.5 × the peak of a 100-bin
histogram of log10 λ (the peak = 10^(left edge of the fullest bin)), i < N − 1; the α̂ of minimum D is kept.
The block value is the mean over the block's linear weights. Computed in float64 on the weight's device.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

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


def _linear_weights(block: nn.Module):
    for sub_name, sub in block.named_modules():
        if is_linear_like(sub) and not any(p.startswith(("lora_", "layerif_")) for p in sub_name.split(".")):
            yield sub.weight


def _cache_file(model: nn.Module, blocks, cache_dir) -> Path:
    """A cache key from the model id, revision and a cheap fingerprint of every linear weight (shape, sums)."""
    config = getattr(model, "config", None)
    digest = hashlib.sha256()
    digest.update(str(getattr(config, "_name_or_path", "")).encode())
    digest.update(str(getattr(config, "_commit_hash", "")).encode())
    for block in blocks.modules:
        for weight in _linear_weights(block):
            w = weight.detach()
            digest.update(f"{tuple(w.shape)}:{float(w.double().sum()):.12e}:{float(w.double().abs().sum()):.12e}".encode())
    root = Path(cache_dir) if cache_dir is not None else Path(
        os.environ.get("HF_LAYERIF_CACHE") or Path.home() / ".cache" / "hf_layerif") / "alpha_hill"
    return root / f"{digest.hexdigest()[:24]}.json"


def block_alpha_hill(model: nn.Module, block_pattern: str | None = None, progress: bool = False, cache: bool = True,
                     cache_dir: str | os.PathLike | None = None) -> list[float]:
    """Mean PL_Alpha_Hill of the linear weights of each Transformer block (one SVD per matrix).

    Results are cached (JSON) under ``$HF_LAYERIF_CACHE/alpha_hill`` keyed by the model id, revision and a
    fingerprint of the weights, since the SVDs are the expensive part (about 48 minutes for LLaMA-7B on a CPU).
    """
    from tqdm.auto import tqdm

    from ..utils.io import read_json, write_json

    if hasattr(model, "get_base_model") and hasattr(model, "peft_config"):
        model = model.get_base_model()
    blocks = find_transformer_blocks(model, block_pattern)
    path = _cache_file(model, blocks, cache_dir) if cache else None
    if path is not None and path.exists():
        cached = read_json(path)
        if cached.get("block_names") == blocks.names:
            return list(cached["alpha_hill"])
    means = []
    for block in tqdm(blocks.modules, desc="PL_Alpha_Hill", disable=not progress):
        values = [pl_alpha_hill(weight) for weight in _linear_weights(block)]
        means.append(sum(values) / len(values))
    if path is not None:
        write_json(path, {"block_names": blocks.names, "alpha_hill": means, "metric": "PL_Alpha_Hill (xmin_peak)"})
    return means
