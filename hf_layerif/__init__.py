"""hf-layerif: per-block influence (LayerIF) for Hugging Face models.

Importing the package registers the ``LAYERIF`` PEFT type (so saved LayerIF adapters load with
``peft.PeftModel.from_pretrained``); every other public name loads its module on first use.

Sign convention (Koh & Liang): an influence value I_l(z) < 0 means that up-weighting the training sample z
lowers the validation loss through block l (a beneficial sample); I_l(z) > 0 means it raises it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0.dev0"

_LAZY = {
    "InfluenceArguments": "hf_layerif.influence.arguments",
    "LayerInfluenceScores": "hf_layerif.influence.scores",
    "compute_layer_influence": "hf_layerif.influence.api",
    "find_transformer_blocks": "hf_layerif.models.blocks",
    "TransformerBlocks": "hf_layerif.models.blocks",
    "LayerInfluenceTrainer": "hf_layerif.trainer",
    "get_estimator": "hf_layerif.influence.estimators",
    "LayerIFConfig": "hf_layerif.tuners",
    "LayerIFModel": "hf_layerif.tuners",
    "LayerIFRouterCallback": "hf_layerif.tuners",
    "load_model": "hf_layerif.tuners",
    "Allocation": "hf_layerif.allocation",
}

__all__ = ["__version__", *_LAZY]

if TYPE_CHECKING:  # pragma: no cover  (imports for type checkers and IDEs only)
    from .allocation import Allocation  # noqa: F401
    from .influence.api import compute_layer_influence  # noqa: F401
    from .influence.arguments import InfluenceArguments  # noqa: F401
    from .influence.estimators import get_estimator  # noqa: F401
    from .influence.scores import LayerInfluenceScores  # noqa: F401
    from .models.blocks import TransformerBlocks, find_transformer_blocks  # noqa: F401
    from .trainer import LayerInfluenceTrainer  # noqa: F401
    from .tuners import LayerIFConfig, LayerIFModel, LayerIFRouterCallback, load_model  # noqa: F401


def _register_peft_type() -> None:
    """Register the LAYERIF PEFT type (the import's only side effect): adapters saved by this package then load
    with plain ``peft.PeftModel.from_pretrained``."""
    try:
        import peft  # noqa: F401
    except ImportError:  # pragma: no cover - peft is a dependency
        return
    from .tuners.peft_type import register

    register()


_register_peft_type()


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hf_layerif' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
