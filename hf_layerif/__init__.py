"""hf-layerif: per-block influence (LayerIF) for Hugging Face models.

Importing the package registers the ``LAYERIF`` PEFT type (so saved LayerIF adapters load with
``peft.PeftModel.from_pretrained``), at once if peft is imported, else as soon as it is; every other public name
loads its module on first use, so the import itself is fast.

Sign convention (Koh & Liang): an influence value I_l(z) < 0 means that up-weighting the training sample z
lowers the validation loss through block l (a beneficial sample); I_l(z) > 0 means it raises it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .version import __version__

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
    "expert_allocation": "hf_layerif.allocation",
    "sparsity_allocation": "hf_layerif.allocation",
    "push_allocation_to_hub": "hf_layerif.hub",
    "load_allocation": "hf_layerif.hub",
    "LayerIFPruner": "hf_layerif.pruning",
    "PruningConfig": "hf_layerif.pruning",
}

__all__ = ["__version__", *_LAZY]

if TYPE_CHECKING:  # pragma: no cover  (imports for type checkers and IDEs only)
    from .allocation import Allocation, expert_allocation, sparsity_allocation  # noqa: F401
    from .hub import load_allocation, push_allocation_to_hub  # noqa: F401
    from .influence.api import compute_layer_influence  # noqa: F401
    from .influence.arguments import InfluenceArguments  # noqa: F401
    from .influence.estimators import get_estimator  # noqa: F401
    from .influence.scores import LayerInfluenceScores  # noqa: F401
    from .models.blocks import TransformerBlocks, find_transformer_blocks  # noqa: F401
    from .pruning import LayerIFPruner, PruningConfig  # noqa: F401
    from .trainer import LayerInfluenceTrainer  # noqa: F401
    from .tuners import LayerIFConfig, LayerIFModel, LayerIFRouterCallback, load_model  # noqa: F401


def _register_peft_type() -> None:
    """Register the LAYERIF PEFT type (the import's only side effect) so that adapters saved by this package load
    with plain ``peft.PeftModel.from_pretrained``.

    When peft is already imported, registration happens now. Otherwise it happens right after peft's own import
    (see :mod:`hf_layerif.peft_import_hook`), so ``import hf_layerif`` stays fast and imports neither torch nor
    peft by itself.
    """
    import sys

    if "peft" in sys.modules and getattr(sys.modules["peft"], "__spec__", None) is not None:
        from .tuners import register  # importing the tuner package registers the type

        register()
    else:
        from .peft_import_hook import register_after_peft_import

        register_after_peft_import()


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
