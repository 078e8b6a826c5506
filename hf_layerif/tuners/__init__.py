"""The LayerIF LoRA-MoE tuner for PEFT (config / layer / model, as PEFT's own tuners).

Importing the package registers the ``LAYERIF`` PEFT type (:func:`register`), the way PEFT registers its own
tuners from their packages. It imports nothing of transformers' Trainer: the registration can run while
transformers itself is still being imported (right after its own ``import peft``), so
:class:`LayerIFRouterCallback` loads on first use.
"""

from .config import LayerIFConfig
from .layer import LayerIFLayer, Linear
from .model import LayerIFModel
from .peft_type import PEFT_TYPE_NAME, PREFIX, ensure_peft_type


def register() -> None:
    """Register ``LayerIFConfig`` / ``LayerIFModel`` with PEFT under ``PeftType.LAYERIF`` (idempotent)."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
    from peft.utils import register_peft_method

    peft_type = ensure_peft_type()
    if peft_type in PEFT_TYPE_TO_CONFIG_MAPPING:
        return
    register_peft_method(name=PEFT_TYPE_NAME.lower(), config_cls=LayerIFConfig, model_cls=LayerIFModel, prefix=PREFIX)


register()

from .loading import load_model  # noqa: E402

__all__ = ["LayerIFConfig", "LayerIFModel", "LayerIFLayer", "Linear", "LayerIFRouterCallback", "load_model", "register"]


def __getattr__(name: str):
    if name == "LayerIFRouterCallback":
        from .callback import LayerIFRouterCallback

        return LayerIFRouterCallback
    raise AttributeError(f"module 'hf_layerif.tuners' has no attribute {name!r}")
