"""Loading a saved LayerIF adapter, with the error a user needs when something is missing."""

from __future__ import annotations

import os


def load_model(base_model, adapter_path_or_repo: str | os.PathLike, adapter_name: str = "default",
               is_trainable: bool = False, **kwargs):
    """Load a LayerIF LoRA-MoE adapter onto ``base_model`` (a model or a model id / path).

    Equivalent to ``PeftModel.from_pretrained`` after ``import hf_layerif`` (which registers the ``LAYERIF`` PEFT
    type: PEFT has no plugin discovery, so a plain ``PeftModel.from_pretrained`` in a process that never imported
    hf_layerif fails with ``KeyError: 'LAYERIF'``).
    """
    from peft import PeftConfig, PeftModel

    from . import register

    register()
    if isinstance(base_model, (str, os.PathLike)):
        from transformers import AutoModelForCausalLM

        base_model = AutoModelForCausalLM.from_pretrained(base_model, **kwargs.pop("model_kwargs", {}))
    config = PeftConfig.from_pretrained(str(adapter_path_or_repo))
    if str(getattr(config.peft_type, "value", config.peft_type)) != "LAYERIF":
        raise ValueError(f"{adapter_path_or_repo} holds a {config.peft_type} adapter, not a LayerIF one; "
                         "load it with peft.PeftModel.from_pretrained.")
    return PeftModel.from_pretrained(base_model, str(adapter_path_or_repo), adapter_name=adapter_name,
                                     is_trainable=is_trainable, **kwargs)
