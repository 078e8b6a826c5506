"""DataInf and TracIn in O(n·d) time without the n×n Gram matrix (METHOD §2.1).

Per parameter group (a block, or one tensor of a block) with per-sample gradients G ∈ R^{n×d} and the mean
validation gradient v:

- TracIn needs only a = G v:                          I = −a.
- DataInf needs a and the squared norms ‖g_i‖² (one pass over G), then, with λ from the norms and
  c_i = a_i / (λ + ‖g_i‖²), the vector w = Gᵀ c = Σ_i c_i g_i (a second read of G) and the products G w
  (a third read):                                     I = −(a − G w / n) / λ.

This equals :class:`~hf_layerif.influence.estimators.DataInfEstimator` on (a, K) exactly in exact arithmetic
(K c = G Gᵀ c = G w), at O(n·d) instead of O(n²·d) time and with no n² memory.

:class:`StreamingStatistics` keeps a and the norms on the compute device while gradients arrive batch by batch,
and keeps the gradients themselves (DataInf only) in a :class:`~hf_layerif.influence.gradient_store.GradientStore`
(in memory up to a budget, spilled to disk beyond it),
so that the two later reads need no gradient recomputation. Memory: a and norms (groups × n values), one window
of gradients (≤ ``memory_budget_bytes``), and w (Σ d values).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable

import torch

from .checkpoint import ResumableAccumulator
from .estimators import damping_from_gram
from .gram import GroupLayout

STATE_FILE = "stream_state.safetensors"
STATE_META = "stream_state.json"


class StreamingStatistics(ResumableAccumulator):
    """a, ‖g‖² and (for DataInf) the stored gradients, accumulated chunk by chunk.

    Args:
        layout: column ranges of the groups in each block's gradient.
        validation_gradients: v per block, [d_l] each.
        num_samples: n.
        compute_dtype: dtype of the products (float32, or float64 for float64 gradients).
        memory_budget_bytes: device memory for stored gradients; beyond it, windows spill to ``spill_dir``.
        spill_dir: folder for spilled windows and the resumable state (``None``: everything must fit the budget).
        store_dtype: dtype of stored gradients.
        keep_gradients: store gradients for the later reads (DataInf); TracIn needs none.
        validation_parts: the mean gradient of each of the P validation parts, [P, d_l] per block (or None):
            ``a_parts`` [P, groups, n], a_p = G v_p, is formed beside ``a`` (P more products per chunk) and
            :meth:`for_validation_parts` gives the statistics that score against every part at once.
    """

    STATE_TENSORS = ("a", "norms")
    STATE_FILE = STATE_FILE
    STATE_META = STATE_META

    def __init__(self, layout: GroupLayout, validation_gradients: list[torch.Tensor], num_samples: int,
                 compute_dtype: torch.dtype, memory_budget_bytes: int, spill_dir: str | os.PathLike | None = None,
                 store_dtype: torch.dtype | None = None, keep_gradients: bool = True,
                 validation_parts: list[torch.Tensor] | None = None):
        self._set_inputs(layout, validation_gradients, num_samples, compute_dtype, memory_budget_bytes, spill_dir,
                         store_dtype, over_budget_hint="Pass output_dir= / cache_dir=, raise gradient_memory_gb, use "
                         "gradient_dtype='bfloat16', or estimator='tracin' (which stores none).")
        self.keep_gradients = keep_gradients
        device = validation_gradients[0].device
        groups = layout.num_groups
        self.a = torch.zeros(groups, num_samples, dtype=compute_dtype, device=device)
        self.norms = torch.zeros(groups, num_samples, dtype=compute_dtype, device=device)
        self.v_parts = validation_parts
        self.a_parts = None
        if validation_parts is not None:
            self.a_parts = torch.zeros(validation_parts[0].shape[0], groups, num_samples, dtype=compute_dtype,
                                       device=device)
            self.STATE_TENSORS = (*type(self).STATE_TENSORS, "a_parts")
        self.rows_done = 0
        # a multi-process run sums w and G w over the processes, each holding only its own samples' gradients
        self.reduce: Callable[[torch.Tensor], torch.Tensor] | None = None

    # --- first pass -----------------------------------------------------------------------------------
    def _group_columns(self):
        g = 0
        for l, bounds in enumerate(self.layout.bounds):
            for j in range(len(bounds) - 1):
                yield g, l, bounds[j], bounds[j + 1]
                g += 1

    def local_statistics(self, grads: list[torch.Tensor]) -> torch.Tensor:
        """[c, (2 + P) × groups]: a = g · v and ‖g‖² of each group for each row of a chunk, then with
        ``validation_parts`` a_p = g · v_p (group-major: column 2·groups + group·P + p); no host sync."""
        compute = [g.to(self.compute_dtype) for g in grads]
        columns = []
        for _, l, lo, hi in self._group_columns():
            block = compute[l][:, lo:hi]
            columns.append(block @ self.v[l][lo:hi].to(block.device, self.compute_dtype))
        for _, l, lo, hi in self._group_columns():
            columns.append(compute[l][:, lo:hi].pow(2).sum(1))
        stats = torch.stack(columns, dim=1)
        if self.v_parts is None:
            return stats
        parts = [compute[l][:, lo:hi] @ self.v_parts[l][:, lo:hi].to(compute[l].device, self.compute_dtype).T
                 for _, l, lo, hi in self._group_columns()]  # [c, P] each
        return torch.cat([stats, *parts], dim=1)

    def add_statistics(self, stats: torch.Tensor) -> int:
        """Record the [c, (2 + P) × groups] statistics of the next c samples (dataset order); returns their first
        index."""
        c = stats.shape[0]
        if self.rows_done + c > self.n:
            raise ValueError(f"more samples than announced ({self.rows_done + c} > {self.n})")
        start = self.rows_done
        groups = self.layout.num_groups
        self.a[:, start:start + c] = stats[:, :groups].T.to(self.a.device, self.compute_dtype)
        self.norms[:, start:start + c] = stats[:, groups:2 * groups].T.to(self.norms.device, self.compute_dtype)
        if self.a_parts is not None:
            parts = stats[:, 2 * groups:].reshape(c, groups, self.a_parts.shape[0]).permute(2, 1, 0)
            self.a_parts[:, :, start:start + c] = parts.to(self.a_parts.device, self.compute_dtype)
        self.rows_done += c
        return start

    def add(self, grads: list[torch.Tensor]) -> None:
        """Add the next chunk: one [c, d_l] tensor per block, rows in dataset order (no host sync)."""
        start = self.add_statistics(self.local_statistics(grads))
        if self.keep_gradients:
            c = grads[0].shape[0]
            self.store(grads, torch.arange(start, start + c, device=self.a.device))

    def for_validation_parts(self) -> StreamingStatistics:
        """The same statistics scored against every validation part at once (``a`` replaced by ``a_parts``
        [P, groups, n]; the norms, λ and the stored gradients are shared): an estimator's :meth:`from_statistics`
        on it gives [P, groups, n]. DataInf reads the stored gradients twice more, for all parts together."""
        if self.a_parts is None:
            raise ValueError("these statistics were accumulated without validation_parts")
        parts = copy.copy(self)
        parts.a = self.a_parts
        return parts

    def store(self, grads: list[torch.Tensor], indices: torch.Tensor) -> None:
        """Keep gradient rows (one [c, d_l] tensor per block) of the samples ``indices`` [c] for the later reads."""
        if not self.keep_gradients or grads[0].shape[0] == 0:
            return
        self.gradients.append(grads, indices)
        if self.rows_done < self.n and self.gradients.full():
            self.gradients.spill()

    def damping(self, args) -> torch.Tensor:
        """λ per group by DataInf's rule (or the absolute value), float64 [groups], on the CPU."""
        return damping_from_gram(self.norms.to("cpu", torch.float64), self.layout.dims(), args.damping_factor, args.damping)

    def datainf(self, damping: torch.Tensor) -> torch.Tensor:
        """I [..., groups, n] float64 (Koh & Liang sign): −(a − G w / n) / λ with w = Gᵀ c, c = a / (λ + ‖g‖²); ``a``
        is [groups, n], or [R, groups, n] for R validation vectors scored in the same two reads."""
        if self.rows_done != self.n:
            raise ValueError(f"only {self.rows_done} of {self.n} samples were added")
        device = self.a.device
        lam = damping.to(device, torch.float64)[:, None]
        a = self.a.to(torch.float64)
        batched = a.dim() == 3
        if not batched:
            a = a.unsqueeze(0)
        R = a.shape[0]
        c = (a / (lam + self.norms.to(torch.float64))).to(self.compute_dtype)  # [R, groups, n]
        # products in the compute dtype (no float64 copy of the gradients), sums over pieces in float64
        w = [torch.zeros(R, hi - lo, dtype=torch.float64, device=device) for _, _, lo, hi in self._group_columns()]
        for indices, blocks in self.gradients.pieces(device):
            for g, l, lo, hi in self._group_columns():
                w[g] += (c[:, g, indices] @ blocks[l][:, lo:hi].to(self.compute_dtype)).to(torch.float64)
        if self.reduce is not None:  # each process summed over its own samples
            w = list(torch.split(self.reduce(torch.cat(w, dim=1)), [x.shape[1] for x in w], dim=1))
        w = [x.to(self.compute_dtype) for x in w]
        Gw = torch.zeros_like(a)
        for indices, blocks in self.gradients.pieces(device):
            for g, l, lo, hi in self._group_columns():
                Gw[:, g, indices] = (w[g] @ blocks[l][:, lo:hi].to(self.compute_dtype).T).to(torch.float64)
        if self.reduce is not None:  # every sample's row was formed by exactly one process
            Gw = self.reduce(Gw)
        influence = (-(a - Gw / self.n) / lam).to("cpu")
        return influence if batched else influence[0]

    # --- checkpointing --------------------------------------------------------------------------------
    def close_for_save(self) -> None:
        if self.keep_gradients:
            self.gradients.spill()
