"""Fitting the scoring adapter to the task before scoring (METHOD §1: LayerIF scores a task-fitted LoRA).

DataInf and LayerIF score a model whose LoRA adapter was trained on the task. With a freshly initialised
adapter (B = 0) only B's gradients are non-zero and they are projections through A's random draw, so the block
ranking follows that draw. :func:`fit_adapter` trains only the tracked adapter's parameters for a bounded
number of AdamW steps on the training samples; the base model's weights are never touched.

:func:`redraw_adapter` re-initialises the adapter (A from a seed, B = 0, PEFT's initialisation) so that the
repeats of :func:`hf_layerif.compute_layer_influence` score independent draws (and fits).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

from ..utils.logging import get_logger

logger = get_logger(__name__)


def zero_gradient_lora_a(module, block_modules) -> bool:
    """True for a LoRA A module whose paired B weight is all zero (its gradient is then exactly zero)."""
    if ".lora_A." not in module.name:
        return False
    partner = module.name.replace(".lora_A.", ".lora_B.")
    b = next((m for m in block_modules if m.name == partner), None)
    return b is not None and not bool(b.module.weight.detach().any())


def lora_is_fresh(tracked) -> bool:
    """True when every tracked LoRA B matrix is zero (an untrained adapter)."""
    return all(
        not bool(m.module.weight.detach().any()) for modules in tracked for m in modules if ".lora_B." in m.name
    )


def adapter_parameters(tracked) -> list[nn.Parameter]:
    """The LoRA A and B weights of the tracked modules (``target="lora"``), in block order."""
    params = []
    for modules in tracked:
        for m in modules:
            if ".lora_A." in m.name or ".lora_B." in m.name:
                params.append(m.module.weight)
    return params


def snapshot(params: list[nn.Parameter]) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def restore(params: list[nn.Parameter], values: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for p, v in zip(params, values):
            p.copy_(v)


def redraw_adapter(tracked, seed: int) -> None:
    """A ← Kaiming-uniform (a = √5, PEFT's default) from ``seed``; B ← 0: a fresh adapter, as ``get_peft_model``
    creates one."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for modules in tracked:
            for module in modules:
                weight = module.module.weight
                if ".lora_A." in module.name:
                    fresh = torch.empty(weight.shape, dtype=torch.float32)
                    nn.init.kaiming_uniform_(fresh, a=math.sqrt(5), generator=gen)
                    weight.copy_(fresh.to(weight.dtype))
                elif ".lora_B." in module.name:
                    weight.zero_()


def fit_adapter(model: nn.Module, params: list[nn.Parameter], batches: Callable[[], Iterable[dict]], steps: int,
                learning_rate: float, seed: int, to_device: Callable[[dict], dict],
                autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                progress: bool = False) -> dict[str, float]:
    """Train ``params`` (the adapter) for ``steps`` AdamW steps on the mean token loss of ``batches``.

    Args:
        model: the model whose forward returns ``.loss`` for batches with ``labels``.
        params: the parameters to train (every other parameter keeps its value; its gradient is not kept).
        batches: factory of an iterable of collated batches (the training samples); drawn in a seeded random
            order, cycling when ``steps`` exceeds the number of batches.
        steps: optimizer steps; learning_rate: peak AdamW learning rate (linear warm-up over the first 10% of
            steps, linear decay to 0), weight decay 0, gradient norm clipped at 1.
        seed: order of the batches and the random draws of the fit (dropout), from a forked RNG: a fit gives the
            same adapter whatever ran before it in the process (a resumed run reproduces an uninterrupted one).
    Returns:
        ``{"loss_first": ..., "loss_last": ..., "steps": ...}``: mean loss of the first and last 10% of steps.
    """
    if steps < 1:
        raise ValueError("fit_steps must be >= 1 to fit the adapter.")
    if not params:
        raise ValueError("there are no adapter parameters to fit: fitting needs target='lora' and a LoRA adapter.")
    cached = [{k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in b.items()} for b in batches()]
    if not cached:
        raise ValueError("the training dataset is empty.")
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    warmup = max(1, steps // 10)

    def schedule(step: int) -> float:
        return (step + 1) / warmup if step < warmup else max(0.0, (steps - step) / max(1, steps - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    gen = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.train()
    device = params[0].device
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        losses = _fit_steps(model, params, cached, steps, optimizer, scheduler, gen, to_device, autocast, progress,
                            flags, was_training)
    tenth = max(1, steps // 10)
    result = {"steps": steps, "loss_first": float(losses[:tenth].mean()), "loss_last": float(losses[-tenth:].mean())}
    logger.info("Fitted the scoring adapter: %d steps, loss %.4f -> %.4f.", steps, result["loss_first"], result["loss_last"])
    return result


def _fit_steps(model, params, cached, steps, optimizer, scheduler, gen, to_device, autocast, progress, flags,
               was_training) -> torch.Tensor:
    """The AdamW loop of :func:`fit_adapter`; returns the loss of every step [steps] (float64)."""
    order: list[int] = []
    losses = torch.zeros(steps, dtype=torch.float64)
    try:
        from tqdm.auto import tqdm

        for step in tqdm(range(steps), desc="fitting the scoring adapter", disable=not progress, leave=False):
            if not order:
                order = torch.randperm(len(cached), generator=gen).tolist()
            batch = to_device(cached[order.pop()])
            with autocast():
                loss = model(**batch).loss
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the loss became {float(loss)} at fitting step {step}: lower fit_learning_rate.")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses[step] = loss.detach().to("cpu", torch.float64)
    finally:
        model.train(was_training)
        for p, flag in flags:
            p.requires_grad_(flag)
            p.grad = None
    return losses
