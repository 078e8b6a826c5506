"""PL_Alpha_Hill (METHOD §6): the heavy-tail exponent of a weight matrix's eigenvalue spectrum.

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

from ..models.blocks import base_linears, find_transformer_blocks
from ..models.offload import read_weight


def esd(weight: torch.Tensor) -> torch.Tensor:
    """Ascending non-zero eigenvalues of WᵀW (squared singular values), float64."""
    s = torch.linalg.svdvals(weight.detach().to(torch.float64))
    lam = torch.sort(s**2).values
    return lam[lam > 0]


def pl_alpha_hill(weight: torch.Tensor, bins: int = 100, peak_factor: float = 1.5, xmin: str = "peak",
                  chunk: int = 256) -> float:
    """PL_Alpha_Hill of one matrix.

    Args:
        xmin: how xmin is chosen: ``"peak"`` (AlphaPruning's default: candidates ≤ ``peak_factor`` × the histogram
            peak, minimum KS distance), ``"scan"`` (every candidate, minimum KS distance; weightwatcher's default
            fit) or ``"mid"`` (xmin = λ_{N/2}, no search).
    """
    if xmin not in ("peak", "scan", "mid"):
        raise ValueError(f"xmin must be 'peak', 'scan' or 'mid', got {xmin!r}")
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
    if xmin == "mid":
        idx = torch.tensor([N // 2], device=lam.device)
    elif xmin == "scan":
        idx = torch.arange(N - 1, device=lam.device)
    else:
        # λ is ascending, so the candidates at or below the bound are a prefix (AlphaPruning stops at the first above)
        idx = torch.nonzero(lam[: N - 1] <= peak_factor * peak).flatten()
    if idx.numel() == 0:
        raise ValueError(f"no xmin candidate below {peak_factor} × the histogram peak")
    n = (N - idx).to(torch.float64)
    alphas = 1.0 + n / (suffix[idx] - n * ln[idx])
    k = torch.arange(N, device=lam.device)
    best_d = torch.empty(idx.numel(), dtype=torch.float64, device=lam.device)
    for start in range(0, idx.numel(), chunk):  # KS distances, [chunk, N] at a time
        i = idx[start:start + chunk, None]
        a = alphas[start:start + chunk, None]
        nn_ = n[start:start + chunk, None]
        j = (k[None, :] - i).to(torch.float64)
        ratio = lam[None, :] / lam[i]
        dist = torch.abs(1 - ratio ** (1 - a) - j / nn_)
        best_d[start:start + chunk] = torch.where(j >= 0, dist, torch.zeros_like(dist)).amax(dim=1)
    return float(alphas[int(torch.argmin(best_d))])


def _linear_weights(block: nn.Module):
    """The [out, in] weights of the block's linears, read through the offload map when offloaded."""
    for _, sub in base_linears(block):
        yield read_weight(sub)


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
