"""The LayerIF LoRA-MoE tuner for PEFT (config / layer / model, as PEFT's own tuners)."""

from .peft_type import register

register()

from .callback import LayerIFRouterCallback  # noqa: E402
from .config import LayerIFConfig  # noqa: E402
from .layer import LayerIFLayer, Linear  # noqa: E402
from .loading import load_model  # noqa: E402
from .model import LayerIFModel  # noqa: E402

__all__ = ["LayerIFConfig", "LayerIFModel", "LayerIFLayer", "Linear", "LayerIFRouterCallback", "load_model", "register"]
