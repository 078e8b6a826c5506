"""Cheap content fingerprints of model weights (resume keys, and the identity of a local model in saved files)."""

from __future__ import annotations

import hashlib

import torch


def fingerprint_parameters(named: list[tuple[str, torch.Tensor]]) -> str:
    """sha256 (16 hex digits) of cheap statistics of each tensor: name, shape, dtype, float32 sum, L2 norm and
    64 strided values. One device→host copy in total; a re-drawn adapter or a changed weight changes it.
    Tensors on ``meta`` (offloaded) contribute their name and shape only."""
    digest = hashlib.sha256()
    stats = []
    for name, tensor in named:
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        if tensor.device.type == "meta" or tensor.numel() == 0 or not tensor.is_floating_point():
            continue
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // 64)
        acc = torch.float64 if flat.dtype == torch.float64 else torch.float32  # accumulate without a full copy
        stats.append(torch.cat([flat.sum(dtype=acc).reshape(1), torch.linalg.vector_norm(flat, dtype=acc).reshape(1),
                                flat[::step][:64].to(acc)]).to("cpu", torch.float64))
    if stats:
        digest.update(torch.cat(stats).numpy().tobytes())
    return digest.hexdigest()[:16]
