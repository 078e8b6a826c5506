"""Pruning with per-block sparsity: Magnitude, Wanda, SparseGPT (METHOD §7)."""

from ..evaluation.perplexity import perplexity
from .config import PruningConfig
from .pruner import LayerIFPruner
from .report import PruningReport

__all__ = ["PruningConfig", "LayerIFPruner", "PruningReport", "perplexity"]
