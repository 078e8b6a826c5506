"""Pruning with per-block sparsity: Magnitude, Wanda, SparseGPT (METHOD §7)."""

from .config import PruningConfig
from .evaluation import perplexity
from .pruner import LayerIFPruner
from .report import PruningReport

__all__ = ["PruningConfig", "LayerIFPruner", "PruningReport", "perplexity"]
