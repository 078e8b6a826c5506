"""The LayerIF LoRA-MoE tuner for PEFT (config / layer / model, as PEFT's own tuners).

Importing the package registers the ``LAYERIF`` PEFT type. It imports nothing of transformers' Trainer: the
registration can run while transformers itself is still being imported (right after its own ``import peft``),
so :class:`LayerIFRouterCallback` loads on first use.
"""

from .peft_type import register

register()

from .config import LayerIFConfig  # noqa: E402
from .layer import LayerIFLayer, Linear  # noqa: E402
from .loading import load_model  # noqa: E402
from .model import LayerIFModel  # noqa: E402

__all__ = ["LayerIFConfig", "LayerIFModel", "LayerIFLayer", "Linear", "LayerIFRouterCallback", "load_model", "register"]


def __getattr__(name: str):
    if name == "LayerIFRouterCallback":
        from .callback import LayerIFRouterCallback

        return LayerIFRouterCallback
    raise AttributeError(f"module 'hf_layerif.tuners' has no attribute {name!r}")
