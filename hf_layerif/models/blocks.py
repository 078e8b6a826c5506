"""Discovery of the Transformer blocks of any Hugging Face model.

The blocks are found from the model's own structure: the ``nn.ModuleList`` whose children are the classes the
model lists in ``_no_split_modules`` (the unit ``accelerate`` never splits across devices, i.e. the decoder or
encoder layer). Models without that attribute fall back to the largest ``ModuleList`` of identical children
that contain linear layers. A ``block_pattern`` regex over module names overrides both.

Names are normalised: wrapper components added by FSDP, activation checkpointing and ``torch.compile``
(``_fsdp_wrapped_module.``, ``_checkpoint_wrapped_module.``, ``_orig_mod.``) are removed, so
``model.layers.3`` names the same block in every set-up.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

WRAPPER_COMPONENTS = ("_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_orig_mod")
# Sub-module names that belong to adapters (PEFT LoRA and this package's LoRA-MoE); never part of `full`.
ADAPTER_COMPONENT_PREFIXES = ("lora_", "layerif_")


def normalize_module_name(name: str) -> str:
    """Remove FSDP / checkpoint / compile wrapper components from a dotted module name."""
    parts = [part for part in name.split(".") if part not in WRAPPER_COMPONENTS]
    return ".".join(parts)


def _unwrap(module: nn.Module) -> nn.Module:
    for attr in WRAPPER_COMPONENTS:
        inner = getattr(module, attr, None)
        if isinstance(inner, nn.Module):
            return _unwrap(inner)
    return module


def _natural_key(name: str) -> list:
    return [int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", name)]


def is_linear_like(module: nn.Module) -> bool:
    """``nn.Linear`` or transformers' GPT-2 style ``Conv1D`` (weight stored as [in, out])."""
    if isinstance(module, nn.Linear):
        return True
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "weight")


@dataclass
class TransformerBlocks:
    """The ordered Transformer blocks of a model.

    Attributes:
        names: normalised dotted names, one per block, in forward order (``["model.layers.0", ...]``).
        modules: the block modules themselves (wrappers removed).
        raw_names: the names as ``model.named_modules()`` reports them (wrappers included).
        source: how the blocks were found (``"no_split_modules"``, ``"module_list"`` or ``"block_pattern"``).
    """

    names: list[str]
    modules: list[nn.Module]
    raw_names: list[str]
    source: str
    block_class: str = ""
    pattern: str = field(default="")

    def __len__(self) -> int:
        return len(self.modules)

    def __iter__(self) -> Iterator[tuple[str, nn.Module]]:
        return iter(zip(self.names, self.modules))

    def name_pattern(self) -> str:
        """A regex matching every block name (used to record which model an allocation fits)."""
        if self.pattern:
            return self.pattern
        stems = {re.sub(r"\d+$", "", name) for name in self.names}
        if len(stems) == 1:
            return re.escape(stems.pop()) + r"\d+"
        return "|".join(re.escape(name) for name in self.names)

    def linear_params_per_block(self) -> list[int]:
        """Number of weight entries of the linear modules of each block (adapters excluded)."""
        counts = []
        for module in self.modules:
            total = 0
            for sub_name, sub in module.named_modules():
                if _is_adapter_path(sub_name) or not is_linear_like(sub):
                    continue
                total += sub.weight.numel()
            counts.append(total)
        return counts


def _is_adapter_path(name: str) -> bool:
    return any(part.startswith(ADAPTER_COMPONENT_PREFIXES) for part in name.split("."))


def base_linears(block: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name relative to ``block``, module) of every linear-like layer of the base model inside ``block``: the
    layers pruning, OWL, PL_Alpha_Hill and sparsity ratios act on. Adapter sub-modules (``lora_*``, ``layerif_*``)
    are skipped; a LoRA-wrapped layer counts once, through its own weight."""
    return [(name, module) for name, module in block.named_modules()
            if is_linear_like(module) and not _is_adapter_path(name)]


def _collect_no_split_names(model: nn.Module) -> set[str]:
    names: set[str] = set()
    for module in model.modules():
        value = getattr(module, "_no_split_modules", None)
        if value:
            names.update(value)
    return names


def _module_param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def find_transformer_blocks(model: nn.Module, block_pattern: str | None = None) -> TransformerBlocks:
    """Find the Transformer blocks of ``model`` (a ``PreTrainedModel``, a ``PeftModel`` or any wrapper).

    Args:
        model: the model; ``PeftModel``, ``device_map`` / offload hooks and FSDP or ``torch.compile``
            wrappers are all fine.
        block_pattern: optional regex; when given, the blocks are the modules whose *normalised* name
            matches it fully (e.g. ``r"model\\.layers\\.\\d+"``), sorted in natural order.

    Raises:
        ValueError: when no blocks are found, with the names of candidate module lists and how to pass
            ``block_pattern``.
    """
    if hasattr(model, "get_base_model") and hasattr(model, "peft_config"):
        model = model.get_base_model()  # names relative to the base model: they fit the model with or without PEFT
    named = [(normalize_module_name(name), name, module) for name, module in model.named_modules()]
    if block_pattern is not None:
        regex = re.compile(block_pattern)
        hits = {}
        for norm, raw, module in named:
            if norm and regex.fullmatch(norm) and norm not in hits:
                hits[norm] = (raw, _unwrap(module))
        if not hits:
            raise ValueError(
                f"block_pattern {block_pattern!r} matched no module name. Module names look like "
                f"{[n for n, _, _ in named[1:6]]}; pass a regex that matches each block's full name, e.g. "
                r"'model\.layers\.\d+'."
            )
        ordered = sorted(hits, key=_natural_key)
        return TransformerBlocks(
            names=ordered,
            modules=[hits[n][1] for n in ordered],
            raw_names=[hits[n][0] for n in ordered],
            source="block_pattern",
            block_class=type(hits[ordered[0]][1]).__name__,
            pattern=block_pattern,
        )

    no_split = _collect_no_split_names(model)
    best = None  # (score tuple, norm name, raw name, ModuleList)
    seen: set[str] = set()
    for norm, raw, module in named:
        if not isinstance(module, nn.ModuleList) or len(module) == 0 or norm in seen:
            continue
        seen.add(norm)
        children = [_unwrap(child) for child in module]
        classes = {type(child).__name__ for child in children}
        matched = sum(type(child).__name__ in no_split for child in children)
        uniform = len(classes) == 1
        has_linear = all(any(is_linear_like(m) for m in child.modules()) for child in children)
        if matched == len(children):
            rank = 2
        elif uniform and has_linear and len(children) > 1:
            rank = 1
        else:
            continue
        score = (rank, sum(_module_param_count(c) for c in children), len(children))
        if best is None or score > best[0]:
            best = (score, norm, raw, module)
    if best is None:
        lists = [norm for norm, _, m in named if isinstance(m, nn.ModuleList)]
        raise ValueError(
            "Could not find the Transformer blocks of this model: no nn.ModuleList holds the classes of its "
            f"`_no_split_modules` ({sorted(no_split) or 'none declared'}) or identical layers with linear "
            f"modules. Module lists found: {lists[:10]}. Pass block_pattern= (CLI: --block_pattern) with a regex "
            r"matching each block's name, e.g. 'transformer\.h\.\d+'."
        )
    (rank, _, _), norm, raw, module_list = best
    modules = [_unwrap(child) for child in module_list]
    return TransformerBlocks(
        names=[f"{norm}.{i}" if norm else str(i) for i in range(len(modules))],
        modules=modules,
        raw_names=[f"{raw}.{i}" if raw else str(i) for i in range(len(modules))],
        source="no_split_modules" if rank == 2 else "module_list",
        block_class=type(modules[0]).__name__,
    )


@dataclass
class TrackedModule:
    """One linear module whose per-sample weight gradient represents part of a block.

    ``layout`` is ``"out_in"`` for ``nn.Linear`` (weight [out, in]) and ``"in_out"`` for GPT-2's ``Conv1D``
    (weight [in, out]); the per-sample gradient is flattened in the parameter's own layout, with the bias
    gradient (if any) appended.
    """

    name: str
    module: nn.Module
    block_index: int
    in_features: int
    out_features: int
    has_bias: bool
    layout: str

    @property
    def numel(self) -> int:
        return self.in_features * self.out_features + (self.out_features if self.has_bias else 0)


def _tracked(name: str, module: nn.Module, block_index: int) -> TrackedModule:
    weight = module.weight
    if isinstance(module, nn.Linear):
        out_f, in_f = weight.shape[0], weight.shape[1]
        layout = "out_in"
    else:  # Conv1D
        in_f, out_f = weight.shape[0], weight.shape[1]
        layout = "in_out"
    if hasattr(module, "in_features") and hasattr(module, "out_features"):
        # bitsandbytes / offloaded weights may have a packed or meta shape; trust the declared sizes.
        in_f, out_f = int(module.in_features), int(module.out_features)
    return TrackedModule(
        name=name,
        module=module,
        block_index=block_index,
        in_features=int(in_f),
        out_features=int(out_f),
        has_bias=getattr(module, "bias", None) is not None,
        layout=layout,
    )


def tracked_modules(blocks: TransformerBlocks, target: str, adapter_name: str = "default") -> list[list[TrackedModule]]:
    """The linear modules whose per-sample gradients represent each block.

    Args:
        blocks: from :func:`find_transformer_blocks`.
        target: ``"lora"`` (the A and B matrices of the PEFT LoRA adapter ``adapter_name`` on each block) or
            ``"full"`` (the block's own linear weights and biases, adapters excluded).

    Returns:
        One list per block, in a fixed order (module order; for LoRA, A before B of each layer).

    Raises:
        ValueError: a block without trackable modules, a LoRA target without trainable LoRA parameters,
            or a DoRA adapter (its magnitude vector has no activation × gradient form).
    """
    if target not in ("lora", "full"):
        raise ValueError(f"target must be 'lora' or 'full', got {target!r}")
    per_block: list[list[TrackedModule]] = []
    for index, (block_name, block) in enumerate(blocks):
        found: list[TrackedModule] = []
        for sub_name, sub in block.named_modules():
            sub_norm = normalize_module_name(sub_name)
            full_name = f"{block_name}.{sub_norm}" if sub_norm else block_name
            if target == "full":
                if _is_adapter_path(sub_norm) or not is_linear_like(sub):
                    continue
                found.append(_tracked(full_name, sub, index))
            else:
                lora_a = getattr(sub, "lora_A", None)
                if not isinstance(lora_a, nn.ModuleDict) or adapter_name not in lora_a:
                    continue
                use_dora = getattr(sub, "use_dora", {})
                if isinstance(use_dora, dict) and use_dora.get(adapter_name, False):
                    raise ValueError(
                        f"{full_name} uses DoRA; influence over DoRA magnitudes is not supported. Score a plain "
                        "LoRA adapter (use_dora=False) or use target='full'."
                    )
                a_mod, b_mod = sub.lora_A[adapter_name], sub.lora_B[adapter_name]
                if not (isinstance(a_mod, nn.Linear) and isinstance(b_mod, nn.Linear)):
                    raise ValueError(f"{full_name}: only LoRA adapters on linear layers are supported (got {type(a_mod).__name__}).")
                if not (a_mod.weight.requires_grad or b_mod.weight.requires_grad):
                    continue
                found.append(_tracked(f"{full_name}.lora_A.{adapter_name}", a_mod, index))
                found.append(_tracked(f"{full_name}.lora_B.{adapter_name}", b_mod, index))
        per_block.append(found)
    if target == "lora" and not any(per_block):
        raise ValueError(
            f"target='lora' needs a PEFT LoRA adapter named {adapter_name!r} with trainable parameters on the "
            "Transformer blocks, and none was found. Wrap the model first, e.g. "
            "peft.get_peft_model(model, LoraConfig(r=8, target_modules='all-linear')), pass adapter_name=, "
            "or use target='full'."
        )
    empty = [blocks.names[i] for i, mods in enumerate(per_block) if not mods]
    if empty:
        raise ValueError(
            f"No {target!r} modules to track in block(s) {empty}. For target='lora' put the adapter on every "
            "block (target_modules='all-linear'); otherwise check block_pattern."
        )
    return per_block


def model_dtype(model: nn.Module) -> torch.dtype:
    for param in model.parameters():
        if param.is_floating_point():
            return param.dtype
    return torch.float32
