"""Chunked accumulation of the Gram statistics a = G v and K = G Gᵀ, with bounded memory and resume.

Per-sample gradients arrive one batch ("chunk") at a time, as one [c, d_l] matrix per block; ``a`` is formed at
once. Chunks stay on the compute device in the in-memory *window* of a
:class:`~hf_layerif.influence.gradient_store.GradientStore`, of at most ``memory_budget_bytes``. When a window closes
(it is full, a checkpoint is saved, or the pass ends) its K blocks are formed with large products: one GEMM per
group for the window with itself and one per older window, read back from ``spill_dir`` once per new window (disk
traffic O(n² / window)); then the window is written there. With ``spill_dir=None`` everything must fit the budget
and K is one G Gᵀ product per group. Used by the estimators that need K (``exact``, ``lissa``).

``a`` and ``K`` are kept on the CPU, per parameter group (a block, or one tensor of a block); K is
[groups, n, n] in the gradients' compute dtype (float32, or float64 for float64 gradients).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..utils.logging import get_logger
from .checkpoint import ResumableAccumulator

logger = get_logger(__name__)

STATE_FILE = "gram_state.safetensors"
STATE_META = "gram_state.json"


@dataclass
class GroupLayout:
    """Column ranges of the parameter groups inside each block's flattened gradient.

    ``bounds[l]`` lists offsets [0, o_1, ..., d_l]; group j of block l is columns bounds[l][j]:bounds[l][j+1].
    ``parameter_counts``, when given, is the number of parameters d of each group for the damping rule, which can
    exceed its stored columns when gradients known to be zero are not stored (a fresh LoRA's A matrices).
    """

    bounds: list[list[int]]
    parameter_counts: list[int] | None = None

    @property
    def num_groups(self) -> int:
        return sum(len(b) - 1 for b in self.bounds)

    def group_to_block(self) -> torch.Tensor:
        return torch.tensor([l for l, b in enumerate(self.bounds) for _ in range(len(b) - 1)], dtype=torch.long)

    def dims(self) -> torch.Tensor:
        """Parameters d of each group (for the damping rule λ = factor · mean ‖g‖² / d)."""
        if self.parameter_counts is not None:
            return torch.tensor(self.parameter_counts, dtype=torch.long)
        return torch.tensor([b[j + 1] - b[j] for b in self.bounds for j in range(len(b) - 1)], dtype=torch.long)

    def block_dims(self) -> list[int]:
        return [b[-1] for b in self.bounds]


class GramAccumulator(ResumableAccumulator):
    """Accumulates a = G v and K = G Gᵀ per group over chunks of per-sample gradients.

    Args:
        layout: group column ranges per block.
        validation_gradients: v per block, [d_l] each (the mean validation gradient).
        num_samples: n, the number of training samples that will be added.
        compute_dtype: dtype of the products (float32 or float64).
        memory_budget_bytes: device memory for the in-memory window of stored gradients.
        spill_dir: folder for spilled windows (needed when the gradients exceed the budget, and for resume).
        store_dtype: dtype of stored gradients (bfloat16 halves memory and disk at a small precision cost).
        shard: (rank, world size). In a multi-process run every process holds every gradient, but each row of K is
            formed by one process only (each process takes a slice of every window's rows); the others leave it
            zero, and the caller sums K over the processes (:meth:`InfluenceEngine.run` does), so the
            Gram FLOPs are split P ways.
        validation_parts: the mean gradient of each of the P validation parts, [P, d_l] per block (or None):
            ``a_parts`` [P, G, n], a_p = G v_p, is formed beside ``a``, so an estimator can score against each part
            with the same K.
    """

    STATE_TENSORS = ("a", "K")
    STATE_FILE = STATE_FILE
    STATE_META = STATE_META

    def __init__(self, layout: GroupLayout, validation_gradients: list[torch.Tensor], num_samples: int,
                 compute_dtype: torch.dtype, memory_budget_bytes: int, spill_dir: str | os.PathLike | None = None,
                 store_dtype: torch.dtype | None = None, shard: tuple[int, int] = (0, 1),
                 validation_parts: list[torch.Tensor] | None = None):
        self._set_inputs(layout, validation_gradients, num_samples, compute_dtype, memory_budget_bytes, spill_dir,
                         store_dtype, over_budget_hint="Pass output_dir= / cache_dir=, raise gradient_memory_gb, use "
                         "gradient_dtype='bfloat16', or use projection_dim= with target='full'.")
        self.rank, self.world = shard
        G = layout.num_groups
        self.a = torch.zeros(G, num_samples, dtype=compute_dtype)
        self.K = torch.zeros(G, num_samples, num_samples, dtype=compute_dtype)
        self.v_parts = validation_parts
        self.a_parts = None
        if validation_parts is not None:
            self.a_parts = torch.zeros(validation_parts[0].shape[0], G, num_samples, dtype=compute_dtype)
            self.STATE_TENSORS = (*type(self).STATE_TENSORS, "a_parts")
        self.rows_done = 0
        self._group_offsets = []
        offset = 0
        for bounds in layout.bounds:
            self._group_offsets.append(offset)
            offset += len(bounds) - 1

    # --- products -------------------------------------------------------------------------------------
    def _row_slice(self, rows: int) -> tuple[int, int]:
        """The rows of a window this process forms products for (all of them in a one-process run)."""
        per = -(-rows // self.world)
        lo = min(rows, self.rank * per)
        return lo, min(rows, lo + per)

    def _products(self, left: list[torch.Tensor], right: list[torch.Tensor], left_start: int, right_start: int) -> None:
        """K[left rows, right cols] (and its mirror) for every group: one GEMM per group over this process's share
        of the left rows. ``left`` and ``right`` are whole windows ([rows, d_l] per block)."""
        rows = left[0].shape[0]
        lo, hi = self._row_slice(rows)
        if lo >= hi:
            return
        same = left is right
        r0, c0 = left_start + lo, right_start
        for l, bounds in enumerate(self.layout.bounds):
            L = left[l][lo:hi].to(self.compute_dtype)
            R = right[l].to(self.compute_dtype) if not same else left[l].to(self.compute_dtype)
            for j in range(len(bounds) - 1):
                g = self._group_offsets[l] + j
                block = (L[:, bounds[j]:bounds[j + 1]] @ R[:, bounds[j]:bounds[j + 1]].T).to("cpu")
                self.K[g, r0:r0 + block.shape[0], c0:c0 + block.shape[1]] = block
                if not same:
                    self.K[g, c0:c0 + block.shape[1], r0:r0 + block.shape[0]] = block.T

    def _close_window(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Form the products of the in-memory window with itself and with every spilled window; return it merged
        (sample indices [rows], [rows, d_l] per block)."""
        window = self.gradients.window()
        merged = window[1]
        start = int(window[0][0])  # rows arrive in dataset order: a window is a contiguous range
        self._products(merged, merged, start, start)
        for entry in self.gradients.spilled:
            _, older = self.gradients.read(entry, merged[0].device)
            self._products(merged, older, start, entry["start"])
            del older
        return window

    # --- public ---------------------------------------------------------------------------------------
    def add(self, grads: list[torch.Tensor]) -> None:
        """Add the next chunk: one [c, d_l] tensor per block, rows in dataset order. ``a`` is formed now; K when
        the window closes (one GEMM per group and window pair)."""
        c = grads[0].shape[0]
        if self.rows_done + c > self.n:
            raise ValueError(f"more samples than announced ({self.rows_done + c} > {self.n})")
        start = self.rows_done
        stored = self.gradients.append(grads, torch.arange(start, start + c))
        for l, bounds in enumerate(self.layout.bounds):
            block = stored[l].to(self.compute_dtype)
            v = self.v[l].to(block.device, self.compute_dtype)
            v_parts = None if self.v_parts is None else self.v_parts[l].to(block.device, self.compute_dtype)
            for j in range(len(bounds) - 1):
                lo, hi = bounds[j], bounds[j + 1]
                self.a[self._group_offsets[l] + j, start:start + c] = (block[:, lo:hi] @ v[lo:hi]).to("cpu")
                if v_parts is not None:
                    self.a_parts[:, self._group_offsets[l] + j, start:start + c] = \
                        (v_parts[:, lo:hi] @ block[:, lo:hi].T).to("cpu")
        self.rows_done += c
        if self.rows_done < self.n and self.gradients.full():
            self.flush()

    def flush(self) -> None:
        """Close the in-memory window (its products with itself and every older window) and write it to
        ``spill_dir``."""
        if self.gradients.empty:
            return
        if self.gradients.spill_dir is None:
            raise RuntimeError("flush() needs a spill_dir")
        self.gradients.spill(self._close_window())

    def finalize(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Close the last window; return (a, K)."""
        if self.rows_done != self.n:
            raise ValueError(f"only {self.rows_done} of {self.n} samples were added")
        if not self.gradients.empty:
            self._close_window()
            self.gradients.clear_window()
        return self.a, self.K

    # --- checkpointing --------------------------------------------------------------------------------
    def close_for_save(self) -> None:
        self.flush()
