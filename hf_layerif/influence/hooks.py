"""Composable ``accelerate`` hooks that capture per-sample gradients of linear modules.

``accelerate.hooks.add_hook_to_module(..., append=True)`` re-initialises the existing hook (an offload hook
reloads and re-offloads its weights) and drops the attributes ``dispatch_model`` added; and accelerate has no
API to remove one hook from a chain. :func:`attach_hook` / :func:`detach_hook` do both exactly: a module
that already carries a hook gets a :class:`~accelerate.hooks.SequentialHook` of (existing, ours) without
touching the existing one, and detaching restores the original hook object (or the original ``forward``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from accelerate.hooks import ModelHook, SequentialHook, add_hook_to_module, remove_hook_from_module
from torch import nn


def attach_hook(module: nn.Module, hook: ModelHook) -> None:
    """Append ``hook`` to ``module``'s accelerate hook chain, leaving any existing hook untouched."""
    existing = getattr(module, "_hf_hook", None)
    if existing is None:
        add_hook_to_module(module, hook)
        hook._layerif_previous = None
        return
    if not hasattr(module, "_old_forward"):
        raise RuntimeError(f"{type(module).__name__} has an `_hf_hook` but no `_old_forward`; cannot chain a hook safely.")
    hook.init_hook(module)
    hook._layerif_previous = existing
    module._hf_hook = SequentialHook(existing, hook)


def detach_hook(module: nn.Module, hook: ModelHook) -> None:
    """Remove exactly ``hook`` from ``module``; other hooks (device map, offload) stay as they were."""
    current = getattr(module, "_hf_hook", None)
    if current is None:
        return
    previous = getattr(hook, "_layerif_previous", None)
    if current is hook:
        remove_hook_from_module(module)
    elif isinstance(current, SequentialHook) and any(h is hook for h in current.hooks):
        remaining = [h for h in current.hooks if h is not hook]
        if previous is not None and len(current.hooks) == 2 and current.hooks[0] is previous:
            module._hf_hook = previous
        elif len(remaining) == 1:
            module._hf_hook = remaining[0]
        else:
            module._hf_hook = SequentialHook(*remaining)
        hook.detach_hook(module)
    else:
        raise RuntimeError(f"the hook to remove is not attached to {type(module).__name__}")


class _InputOutputHook(ModelHook):
    """Calls ``on_input(x)`` before the forward and ``on_output(y)`` after it (``y`` may be replaced)."""

    def __init__(self, on_input: Callable[[torch.Tensor], None] | None, on_output: Callable[[torch.Tensor], torch.Tensor]):
        self.on_input = on_input
        self.on_output = on_output

    def pre_forward(self, module, *args, **kwargs):
        if self.on_input is not None:
            x = args[0] if args else next(iter(kwargs.values()))
            self.on_input(x)
        return args, kwargs

    def post_forward(self, module, output):
        return self.on_output(output)


class HookSet:
    """Hooks attached to several modules at once, removed together (also on error, as a context manager)."""

    def __init__(self) -> None:
        self._attached: list[tuple[nn.Module, ModelHook]] = []

    def add(self, module: nn.Module, on_input, on_output) -> None:
        hook = _InputOutputHook(on_input, on_output)
        attach_hook(module, hook)
        self._attached.append((module, hook))

    def remove(self) -> None:
        while self._attached:
            module, hook = self._attached.pop()
            detach_hook(module, hook)

    def __enter__(self) -> HookSet:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
