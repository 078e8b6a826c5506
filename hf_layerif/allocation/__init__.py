"""Turning per-block scores into allocations: LoRA experts per block (METHOD §4) and sparsity per block (§5)."""

from .allocation import (
    Allocation,
    allocation_schema,
    compare_allocations,
    describe_model,
    expert_allocation,
    plot_allocations,
    sparsity_allocation,
)
from .alpha_hill import block_alpha_hill, pl_alpha_hill
from .experts import MOLA_PATTERNS, allocate_experts, largest_remainder_allocation, mola_pattern
from .sparsity import allocate_sparsity, map_scores_to_ratios

__all__ = [
    "Allocation", "allocation_schema", "compare_allocations", "describe_model", "expert_allocation",
    "plot_allocations", "sparsity_allocation",
    "MOLA_PATTERNS", "allocate_experts", "largest_remainder_allocation", "mola_pattern", "block_alpha_hill",
    "pl_alpha_hill", "allocate_sparsity", "map_scores_to_ratios",
]
