"""Checks run once on a model before long work starts: finite weights, context length, quantized shapes.

Each check raises an error that names the module (or the samples) and the fix, so that a run of hours never
fails at its end for a reason visible at its start.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ..utils.logging import get_logger

logger = get_logger(__name__)

# bitsandbytes >= 0.48 repacks 4-bit weights for its AVX512-BF16 CPU kernel in blocks of 32 output rows and
# pairs of input columns (``_convert_weight_packed_for_cpu``); other shapes fail there with a bare assertion.
BNB_CPU_PACK_OUT_MULTIPLE = 32
BNB_CPU_PACK_IN_MULTIPLE = 2


def check_finite_weights(model: nn.Module, what: str = "the model") -> None:
    """Raise ``FloatingPointError`` naming the first parameters that hold NaN or ±inf.

    Parameters on the ``meta`` device (offloaded with accelerate) are skipped: they are checked where their
    values live. One reduction per tensor, run once before scoring, pruning or saving.
    """
    bad: list[str] = []
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.device.type == "meta" or not param.is_floating_point():
                continue
            if not bool(torch.isfinite(param).all()):
                count = int((~torch.isfinite(param)).sum())
                bad.append(f"{name} ({count} of {param.numel()} values)")
                if len(bad) >= 5:
                    break
    if bad:
        raise FloatingPointError(
            f"{what} has non-finite weights (NaN or inf) in: {', '.join(bad)}. Nothing was computed. Reload the "
            "checkpoint, or find the step that produced them (fp16 overflow during training is a common cause; "
            "train in bf16 or fp32)."
        )


def model_max_length(model: nn.Module) -> int | None:
    """The longest sequence the model's position encoding accepts (``max_position_embeddings``, ``n_positions``,
    ...), or ``None`` when the config states no limit."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    if config is None:
        return None
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx"):
        value = getattr(text_config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_sequence_length(requested: int, model: nn.Module, option: str) -> int:
    """Return ``requested`` clamped to the model's context, with a warning naming ``option`` when it was longer."""
    limit = model_max_length(model)
    if limit is not None and requested > limit:
        logger.warning("%s=%d is longer than the model's context (%d positions); using %d tokens instead.",
                       option, requested, limit, limit)
        return limit
    return requested


def _bnb_cpu_packing_active() -> bool:
    """Whether bitsandbytes' CPU 4-bit kernel repacks weights on this machine (it needs AVX512-BF16)."""
    try:
        from bitsandbytes.functional import has_avx512bf16
    except Exception:  # bitsandbytes missing or without the CPU packed path
        return False
    try:
        return bool(has_avx512bf16())
    except Exception:
        return False


def check_quantized_shapes(model: nn.Module, modules: Iterable[str] | None = None) -> None:
    """Refuse 4-bit bitsandbytes layers whose shapes the active CPU kernel cannot run, naming the dimension.

    On CPUs with AVX512-BF16, bitsandbytes repacks 4-bit weights on their first inference forward and needs
    ``out_features`` divisible by 32 and ``in_features`` divisible by 2; elsewhere (other CPUs, CUDA) any shape
    works. ``modules`` restricts the check to these module names (default: every module).
    """
    wanted = None if modules is None else set(modules)
    offending = []
    for name, module in model.named_modules():
        if type(module).__name__ not in ("Linear4bit", "LinearNF4", "LinearFP4"):
            continue
        if wanted is not None and name not in wanted:
            continue
        weight = getattr(module, "weight", None)
        if weight is None or weight.device.type != "cpu":
            continue
        out_f, in_f = int(module.out_features), int(module.in_features)
        if out_f % BNB_CPU_PACK_OUT_MULTIPLE or in_f % BNB_CPU_PACK_IN_MULTIPLE:
            offending.append(f"{name} (out_features={out_f}, in_features={in_f})")
    if offending and _bnb_cpu_packing_active():
        raise ValueError(
            "bitsandbytes' 4-bit CPU kernel on this machine (AVX512-BF16 packed path) needs out_features divisible "
            f"by {BNB_CPU_PACK_OUT_MULTIPLE} and in_features divisible by {BNB_CPU_PACK_IN_MULTIPLE}; these layers "
            f"are not: {', '.join(offending[:5])}{' ...' if len(offending) > 5 else ''}. Keep them unquantized "
            "(BitsAndBytesConfig(llm_int8_skip_modules=[...])), use 8-bit, or run the 4-bit model on a GPU."
        )
