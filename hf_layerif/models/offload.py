"""Where a module's weights and computation live under accelerate's hooks (``device_map``, ``cpu_offload``).

accelerate attaches an ``AlignDevicesHook`` (or a ``SequentialHook`` holding several) as ``module._hf_hook``; an
offloaded module keeps its weight on ``meta`` and reads it from the hook's ``weights_map`` at each forward. This
module is the one place that walks those hooks.
"""

from __future__ import annotations

import torch
from torch import nn


def accelerate_hooks(module: nn.Module) -> list:
    """The accelerate hooks attached to ``module`` (a ``SequentialHook`` flattened; [] when there is none)."""
    hook = getattr(module, "_hf_hook", None)
    return [] if hook is None else [hook, *getattr(hook, "hooks", [])]


def _as_device(device) -> torch.device:
    return torch.device(f"cuda:{device}" if isinstance(device, int) else device)


def execution_device(module: nn.Module) -> torch.device | None:
    """The device accelerate runs ``module`` on, or None when no hook says."""
    for hook in accelerate_hooks(module):
        device = getattr(hook, "execution_device", None)
        if device is not None:
            return _as_device(device)
    return None


def input_device(model: nn.Module) -> torch.device:
    """Where input ids should go: the input embeddings' execution device (accelerate hook), else their weight's
    device (cpu for a weight on ``meta``)."""
    embeddings = model.get_input_embeddings()
    device = execution_device(embeddings)
    if device is not None:
        return device
    device = embeddings.weight.device
    return torch.device("cpu") if device.type == "meta" else device


def offloaded_weight(module: nn.Module) -> torch.Tensor | None:
    """The tensor that holds an offloaded ``module.weight`` (accelerate's weights map), or None when in memory."""
    for hook in accelerate_hooks(module):
        weights_map = getattr(hook, "weights_map", None)
        if getattr(hook, "offload", False) and weights_map is not None:
            return weights_map["weight"]
    return None


def read_weight(module: nn.Module) -> torch.Tensor:
    """The [out, in] weight of a linear-like module (GPT-2 ``Conv1D`` transposed), detached, read from the offload
    map when the module is offloaded."""
    weight = module.weight
    if weight.device.type == "meta":
        weight = offloaded_weight(module)
        if weight is None:
            raise ValueError("the weight is on 'meta' and has no offload map to read from")
    return weight.detach() if isinstance(module, nn.Linear) else weight.detach().T


def write_weight(module: nn.Module, value: torch.Tensor) -> None:
    """Copy an [out, in] ``value`` into the module's weight (or its offload map), in the weight's dtype."""
    value = value if isinstance(module, nn.Linear) else value.T
    target = offloaded_weight(module) if module.weight.device.type == "meta" else module.weight.data
    if target is None:
        raise ValueError("the weight is on 'meta' and has no offload map to write to")
    with torch.no_grad():
        target.copy_(value.to(device=target.device, dtype=target.dtype))


__all__ = ["accelerate_hooks", "execution_device", "input_device", "offloaded_weight", "read_weight", "write_weight"]
