"""Per-sample training gradients kept for reads after the training pass, in memory up to a budget, on disk beyond.

Both accumulators of the training pass use one :class:`GradientStore`: the streaming route (DataInf reads the
stored gradients twice after the pass) and the Gram route (``exact``, ``lissa``: each window of gradients is
multiplied with itself and with every older window). Rows arrive in chunks (one [c, d_l] tensor per block, with
the chunk's sample indices [c]); chunks collect in an in-memory *window*; when the window reaches the budget it is
written to ``spill_dir`` as one safetensors file (``indices`` and ``block_<l>``) and a new window starts.

Memory: one window, at most ``budget_bytes`` plus one chunk, on the device the chunks came from.
Disk: every spilled window once (the whole gradient matrix beyond the first window, in ``store_dtype``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import torch

from ..utils.io import read_safetensors, write_safetensors


class GradientStore:
    """Stored per-sample gradient rows: an in-memory window and the windows spilled to disk.

    Args:
        num_blocks: number of blocks (tensors per chunk).
        budget_bytes: bytes of rows kept in memory before the window is spilled.
        spill_dir: folder for spilled windows (``None``: every row must fit the budget).
        store_dtype: dtype the rows are stored in.
        over_budget_hint: what the user can do when the rows exceed the budget and there is no ``spill_dir``
            (appended to the ``MemoryError``).
    """

    def __init__(self, num_blocks: int, budget_bytes: int, spill_dir: str | os.PathLike | None,
                 store_dtype: torch.dtype, over_budget_hint: str = ""):
        self.num_blocks = num_blocks
        self.budget = int(budget_bytes)
        self.spill_dir = Path(spill_dir) if spill_dir is not None else None
        self.store_dtype = store_dtype
        self.over_budget_hint = over_budget_hint
        self.chunks: list[list[torch.Tensor]] = []  # chunks[k][l]: [c_k, d_l]
        self.chunk_indices: list[torch.Tensor] = []  # chunk_indices[k]: [c_k] sample indices (dataset order)
        self.nbytes = 0
        self.spilled: list[dict] = []  # {"file", "start" (first sample index), "rows"}

    # --- writing --------------------------------------------------------------------------------------
    def append(self, grads: list[torch.Tensor], indices: torch.Tensor) -> list[torch.Tensor]:
        """Keep one chunk (one [c, d_l] tensor per block) of the samples ``indices`` [c]; returns the stored
        tensors (in ``store_dtype``)."""
        stored = [g.detach().to(self.store_dtype) for g in grads]
        self.chunks.append(stored)
        self.chunk_indices.append(indices.to(stored[0].device, torch.long))
        self.nbytes += sum(t.numel() * t.element_size() for t in stored)
        return stored

    @property
    def empty(self) -> bool:
        """Whether the in-memory window holds no rows."""
        return not self.chunks

    def full(self) -> bool:
        """Whether the in-memory window reached the budget. Raises ``MemoryError`` (with the hint) when it did
        and there is no folder to spill to."""
        if self.nbytes < self.budget:
            return False
        if self.spill_dir is None:
            raise MemoryError(f"Per-sample gradients exceed gradient_memory_gb ({self.budget / 2**30:.2f} GB) and no "
                              f"folder to spill them to was given. {self.over_budget_hint}".rstrip())
        return True

    def window(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The in-memory window merged: (sample indices [rows], one [rows, d_l] tensor per block); no copy when it
        is one chunk."""
        if len(self.chunks) == 1:
            return self.chunk_indices[0], self.chunks[0]
        return (torch.cat(self.chunk_indices),
                [torch.cat([chunk[l] for chunk in self.chunks]) for l in range(self.num_blocks)])

    def spill(self, window: tuple[torch.Tensor, list[torch.Tensor]] | None = None) -> None:
        """Write the in-memory window (or the given merged ``window`` of it) to ``spill_dir`` and start a new one."""
        if self.empty:
            return
        if self.spill_dir is None:
            raise RuntimeError("spill() needs a spill_dir")
        indices, blocks = window if window is not None else self.window()
        name = f"gradients_{len(self.spilled):06d}.safetensors"
        write_safetensors(self.spill_dir / name, {"indices": indices, **{f"block_{l}": t for l, t in enumerate(blocks)}})
        self.spilled.append({"file": name, "start": int(indices[0]), "rows": int(indices.shape[0])})
        self.clear_window()

    def clear_window(self) -> None:
        """Drop the in-memory window (after its rows were used or spilled)."""
        self.chunks, self.chunk_indices, self.nbytes = [], [], 0

    # --- reading --------------------------------------------------------------------------------------
    def read(self, entry: dict, device: str | torch.device) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One spilled window: (sample indices [rows], one [rows, d_l] tensor per block) on ``device``."""
        tensors = read_safetensors(self.spill_dir / entry["file"], device=str(device))
        return tensors["indices"], [tensors[f"block_{l}"] for l in range(self.num_blocks)]

    def pieces(self, device: str | torch.device) -> Iterator[tuple[torch.Tensor, list[torch.Tensor]]]:
        """Every stored row, piece by piece: each spilled window (read from disk), then each chunk of the
        in-memory window (no copy); (sample indices [rows], one [rows, d_l] tensor per block) each."""
        for entry in self.spilled:
            yield self.read(entry, device)
        yield from zip(self.chunk_indices, self.chunks)

    def file_names(self) -> list[str]:
        """The spilled windows' file names inside ``spill_dir``."""
        return [entry["file"] for entry in self.spilled]
