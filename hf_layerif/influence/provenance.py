"""Provenance recorded with scores: library versions, the model and its adapters, JSON-safe values."""

from __future__ import annotations

import platform
from typing import Any

import torch
from torch import nn

from ..utils.fingerprint import fingerprint_parameters
from ..utils.io import is_local_path, portable_source
from ..version import __version__


def library_versions() -> dict[str, str]:
    import accelerate
    import peft
    import transformers

    return {"hf_layerif": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "accelerate": accelerate.__version__, "python": platform.python_version()}


def model_provenance(model: nn.Module) -> dict[str, Any]:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    info: dict[str, Any] = {"class": type(base).__name__}
    if config is not None:
        name = getattr(config, "_name_or_path", "") or ""
        info["model_id"] = portable_source(name)  # a local folder: local:<name> and a fingerprint of the weights
        if name and is_local_path(name):
            info["fingerprint"] = fingerprint_parameters(list(base.named_parameters()))
        info["revision"] = getattr(config, "_commit_hash", None)
        info["architectures"] = getattr(config, "architectures", None)
        info["model_type"] = getattr(config, "model_type", None)
    peft_config = getattr(model, "peft_config", None)
    if isinstance(peft_config, dict):
        info["adapters"] = {name: cfg.to_dict() for name, cfg in peft_config.items()}
        for cfg in info["adapters"].values():
            for key, value in list(cfg.items()):
                if isinstance(value, set):
                    cfg[key] = sorted(value)
            if "base_model_name_or_path" in cfg:
                cfg["base_model_name_or_path"] = portable_source(cfg["base_model_name_or_path"])
    return info


def json_safe(value):
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [json_safe(v) for v in (sorted(value) if isinstance(value, set) else value)]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
