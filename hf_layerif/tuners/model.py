"""``LayerIFModel``: the PEFT tuner that injects LoRA-MoE layers with a per-block number of experts."""

from __future__ import annotations

import math
import re
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from torch import nn

from ..models.blocks import find_transformer_blocks
from ..models.checks import check_quantized_shapes
from ..utils.logging import get_logger
from .config import LayerIFConfig
from .layer import LayerIFLayer, Linear, TokenContext
from .peft_type import PREFIX

logger = get_logger(__name__)


class LayerIFModel(BaseTuner):
    """Creates a LoRA mixture of experts from a transformers model (use through ``peft.get_peft_model``).

    Expert counts: ``experts_pattern`` (regex on the module name) first, then ``experts_per_layer[l]`` for a
    module inside Transformer block l, else ``num_experts``.

    Training: in train mode, when the model's forward receives ``labels`` and returns a loss, the router losses
    (:meth:`router_loss`) are added to it, and the output carries them apart as ``router_loss`` (a scalar tensor)
    beside ``loss`` (task + router), as transformers' MoE models carry ``aux_loss``. The path is explicit: the
    task-typed PEFT models (``task_type="CAUSAL_LM"`` etc.) call this tuner's :meth:`forward`, which adds it; a
    PEFT model without a task type calls the transformers model directly, past the tuner, so for that one only the
    same step runs as a forward hook on the wrapped model. With gradient accumulation and a Trainer that passes
    ``num_items_in_batch`` (the task loss is then already normalised over the accumulated micro-batches), the
    router loss is divided by the number of accumulation steps set with :meth:`set_gradient_accumulation_steps`
    — :class:`hf_layerif.tuners.LayerIFRouterCallback` and :class:`hf_layerif.LayerInfluenceTrainer` do that.
    """

    prefix: str = PREFIX
    tuner_layer_cls = LayerIFLayer
    target_module_mapping: dict[str, list[str]] = {}

    def __init__(self, model, config, adapter_name, low_cpu_mem_usage: bool = False, **kwargs) -> None:
        self._block_prefixes: list[str] | None = None
        self.gradient_accumulation_steps: int | None = None
        self.add_router_loss = True
        self._warned: set[str] = set()
        self._moe_layers_cache: dict[tuple[str, ...], list[tuple[str, Linear]]] = {}
        self._checked_checkpointing = False
        # the attention mask of each call, shared with the layers so routing statistics skip padding tokens
        self.token_context = TokenContext()
        super().__init__(model, config, adapter_name, low_cpu_mem_usage=low_cpu_mem_usage, **kwargs)
        self._router_loss_hook = None
        if self.peft_config[adapter_name].task_type is None:
            # PeftModel (no task type) calls the transformers model past this tuner's forward: only there does the
            # router loss need a hook on the wrapped model
            self._router_loss_hook = self.model.register_forward_hook(self._router_loss_hook_fn, with_kwargs=True)
        self._mask_hook = self.model.register_forward_pre_hook(self._remember_mask, with_kwargs=True)
        self._share_token_context()

    def _share_token_context(self) -> None:
        for module in self.model.modules():
            if isinstance(module, LayerIFLayer):
                module.token_context = self.token_context

    def _remember_mask(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]):
        mask = kwargs.get("attention_mask")
        self.token_context.mask = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None
        return None

    # --- injection --------------------------------------------------------------------------------------------
    def _prepare_adapter_config(self, peft_config: LayerIFConfig, model_config: dict) -> LayerIFConfig:
        if peft_config.target_modules is None:
            peft_config.target_modules = "all-linear"
        return peft_config

    def _prepare_model(self, peft_config: LayerIFConfig, model: nn.Module) -> None:
        check_quantized_shapes(model)
        blocks = find_transformer_blocks(model)
        self._block_prefixes = [name + "." for name in blocks.raw_names]
        if peft_config.experts_per_layer is not None and len(peft_config.experts_per_layer) != len(blocks):
            raise ValueError(
                f"experts_per_layer has {len(peft_config.experts_per_layer)} entries but the model has {len(blocks)} "
                f"Transformer blocks ({blocks.names[0]} ... {blocks.names[-1]}). Give one count per block, e.g. from "
                "hf_layerif.allocation.expert_allocation(scores, total_experts) computed on this model."
            )

    def block_index(self, key: str) -> int | None:
        """The Transformer block that module ``key`` belongs to (None outside the blocks)."""
        for index, prefix in enumerate(self._block_prefixes or []):
            if key.startswith(prefix):
                return index
        return None

    def experts_for(self, config: LayerIFConfig, key: str) -> int:
        for pattern, count in config.experts_pattern.items():
            if re.match(rf"(.*\.)?({pattern})$", key):
                return int(count)
        index = self.block_index(key)
        if config.experts_per_layer is not None and index is not None:
            return int(config.experts_per_layer[index])
        return int(config.num_experts)

    def _create_and_replace(self, peft_config: LayerIFConfig, adapter_name: str, target: nn.Module, target_name: str,
                            parent: nn.Module, current_key: str, parameter_name: str | None = None, **kwargs) -> None:
        if current_key is None:
            raise ValueError("current_key must be given")
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        weight = getattr(base, "weight", None)
        if weight is not None and weight.device.type == "meta":
            raise ValueError(
                f"{current_key} has its weights on the 'meta' device (offloaded with accelerate). Adapters injected "
                "there would compute on uninitialised memory. Load the model without CPU/disk offload (or with "
                "device_map onto real devices) before get_peft_model."
            )
        experts = self.experts_for(peft_config, current_key)
        args = dict(r=peft_config.r, lora_alpha=peft_config.lora_alpha, lora_dropout=peft_config.lora_dropout,
                    num_experts=experts, top_k=peft_config.top_k, router_init_std=peft_config.router_init_std,
                    router_z_loss=peft_config.router_z_loss_coef > 0, dispatch=peft_config.dispatch)
        if isinstance(target, LayerIFLayer):
            target.update_layer(adapter_name, **args)
            return
        if not (hasattr(base, "in_features") and hasattr(base, "out_features")) or isinstance(base, nn.Embedding):
            raise TypeError(f"LayerIF adapts linear layers only; {current_key} is a {type(base).__name__}. "
                            "Restrict target_modules to linear projections.")
        new_module = Linear(target, adapter_name, **args)
        new_module.token_context = self.token_context
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)

    # --- router losses ----------------------------------------------------------------------------------------
    def moe_layers(self) -> list[tuple[str, Linear]]:
        """(name, layer) of every layer with a routed adapter active; the module walk is cached per set of active
        adapters and redone after an adapter is added, deleted or activated."""
        key = tuple(self.active_adapters)
        cached = getattr(self, "_moe_layers_cache", {}).get(key)
        if cached is None:
            cached = [(n, m) for n, m in self.model.named_modules()
                      if isinstance(m, Linear) and any(m.num_experts.get(a, 1) > 1 for a in m.active_adapters)]
            self._moe_layers_cache[key] = cached
        return cached

    def inject_adapter(self, *args, **kwargs):
        getattr(self, "_moe_layers_cache", {}).clear()
        return super().inject_adapter(*args, **kwargs)

    def delete_adapter(self, *args, **kwargs):
        self._moe_layers_cache.clear()
        return super().delete_adapter(*args, **kwargs)

    def _unload_and_optionally_merge(self, *args, **kwargs):
        """``unload()`` / ``merge_and_unload()``: the base model comes back without this tuner's hooks, so it trains
        and evaluates as it did before (no stale router loss added to its outputs)."""
        model = super()._unload_and_optionally_merge(*args, **kwargs)
        self.remove_model_hooks()
        return model

    def remove_model_hooks(self) -> None:
        """Remove the hooks this tuner put on the wrapped model (router loss, attention-mask capture) and forget
        its LayerIF layers."""
        for name in ("_router_loss_hook", "_mask_hook"):
            handle = getattr(self, name, None)
            if handle is not None:
                handle.remove()
                setattr(self, name, None)
        self._moe_layers_cache.clear()

    def set_adapter(self, *args, **kwargs):
        self._moe_layers_cache.clear()
        return super().set_adapter(*args, **kwargs)

    def router_loss(self) -> torch.Tensor:
        """router_aux_loss_coef × mean load-balancing loss + router_z_loss_coef × mean z-loss over routed modules
        (from their last forward; a scalar tensor with gradient, 0 without routed modules)."""
        adapter = self.active_adapters[0]
        config = self.peft_config[adapter]
        aux, z = [], []
        for _, module in self.moe_layers():
            state = module.router_state.get(adapter)
            if state is not None:
                aux.append(state.aux)
                if state.z is not None:
                    z.append(state.z)
        if not aux:
            return torch.zeros(())
        loss = config.router_aux_loss_coef * torch.stack(aux).mean()
        if config.router_z_loss_coef and z:
            loss = loss + config.router_z_loss_coef * torch.stack(z).mean()
        return loss

    def router_statistics(self, per_module: bool = False) -> dict[str, float]:
        """Routing health since the last call (the load counters are then reset), in one stacked computation:

        ``router/aux_loss`` (mean load-balancing loss), ``router/entropy_mean`` and ``router/entropy_min`` (the
        normalised entropy of each routed module's expert load: 1 = even, 0 = one expert takes everything),
        ``router/max_share`` (the largest share any expert of any module takes); with ``per_module=True`` also
        ``router/<module>/entropy`` and ``router/<module>/max_share`` (two entries per routed module).
        """
        adapter = self.active_adapters[0]
        names, loads, aux = [], [], []
        for name, module in self.moe_layers():
            state = module.router_state.get(adapter)
            if state is None:
                continue
            load = module.take_load(adapter)
            loads.append(state.counts.float() if load is None else load)
            aux.append(state.aux.detach().float().reshape(()))
            names.append(name.replace("base_model.model.", ""))
        if not names:
            return {}
        entropies, max_shares = [], []
        for load in loads:  # modules differ in expert count: one small vector each, one transfer at the end
            share = load / load.sum().clamp_min(1)
            entropies.append(-(share * share.clamp_min(1e-12).log()).sum() / math.log(max(len(share), 2)))
            max_shares.append(share.max())
        values = torch.stack([torch.stack(aux).mean(), *entropies, *max_shares]).cpu().tolist()
        k = len(names)
        entropy, share = values[1:1 + k], values[1 + k:]
        stats = {"router/aux_loss": values[0], "router/entropy_mean": sum(entropy) / k,
                 "router/entropy_min": min(entropy), "router/max_share": max(share)}
        if per_module:
            for name, e, m in zip(names, entropy, share):
                stats[f"router/{name}/entropy"] = e
                stats[f"router/{name}/max_share"] = m
        return stats

    def set_gradient_accumulation_steps(self, steps: int) -> None:
        """Accumulation steps used to scale the router loss when the task loss is normalised over them."""
        if steps < 1:
            raise ValueError("gradient accumulation steps must be >= 1")
        self.gradient_accumulation_steps = int(steps)

    def _warn_reentrant_checkpointing(self) -> None:
        if self._checked_checkpointing:
            return
        self._checked_checkpointing = True  # checked on the first training step only (one module walk)
        for module in self.model.modules():
            func = getattr(module, "_gradient_checkpointing_func", None)
            if getattr(module, "gradient_checkpointing", False) and func is not None:
                if getattr(func, "keywords", {}).get("use_reentrant", True) and "reentrant" not in self._warned:
                    self._warned.add("reentrant")
                    logger.warning(
                        "Reentrant gradient checkpointing runs the first forward without gradients, so the router "
                        "load-balancing loss gets no gradient. Enable checkpointing with "
                        "gradient_checkpointing_kwargs={'use_reentrant': False}."
                    )
                return

    def forward(self, *args: Any, **kwargs: Any):
        """The wrapped model's forward; in training with ``labels``, its output's ``loss`` includes the router loss
        and ``router_loss`` holds that part (see the class docstring)."""
        outputs = self.model(*args, **kwargs)
        return self._with_router_loss(outputs, kwargs)

    def _router_loss_hook_fn(self, module: nn.Module, args: tuple, kwargs: dict[str, Any], outputs):
        """Forward hook on the wrapped model, for a PeftModel without task type (it bypasses :meth:`forward`)."""
        return self._with_router_loss(outputs, kwargs)

    def _with_router_loss(self, outputs, kwargs: dict[str, Any]):
        """``outputs`` with ``loss`` = task loss + router loss and ``router_loss`` set, when the model trains on
        ``labels`` and has routed modules; unchanged otherwise. Records each routed module's expert load."""
        if not (self.model.training and self.add_router_loss and kwargs.get("labels") is not None):
            return outputs
        loss = getattr(outputs, "loss", None)
        layers = self.moe_layers()
        if loss is None or not layers:
            return outputs
        self._warn_reentrant_checkpointing()
        router = self.router_loss().to(loss.device)
        if kwargs.get("num_items_in_batch") is not None:
            if self.gradient_accumulation_steps is None:
                if "accumulation" not in self._warned:
                    self._warned.add("accumulation")
                    logger.warning(
                        "The task loss is normalised over gradient-accumulation steps (num_items_in_batch), but the "
                        "router loss does not know their number and counts once per micro-batch. Use "
                        "hf_layerif.LayerInfluenceTrainer, add hf_layerif.LayerIFRouterCallback() to your "
                        "Trainer's callbacks, or call set_gradient_accumulation_steps()."
                    )
            else:
                router = router / self.gradient_accumulation_steps
        for _, layer in layers:
            layer.record_load()
        outputs["loss"] = loss + router
        outputs["router_loss"] = router
        return outputs
