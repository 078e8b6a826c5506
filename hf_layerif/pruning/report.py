"""``PruningReport``: requested vs achieved sparsity per module, per block and for the whole model."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..utils.io import write_json


@dataclass
class ModuleResult:
    name: str
    block: int
    numel: int
    requested: float
    achieved: float
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class PruningReport:
    """What a pruning run did. Sparsities are fractions of zero weights (parameter-weighted for blocks/model)."""

    method: str
    structure: str
    block_names: list[str]
    modules: list[ModuleResult]
    block_ratios: list[float]
    seconds: float = 0.0
    peak_memory_bytes: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def block_sparsity(self) -> list[dict[str, float]]:
        out = []
        for index in range(len(self.block_names)):
            mods = [m for m in self.modules if m.block == index]
            total = sum(m.numel for m in mods) or 1
            out.append({"requested": sum(m.requested * m.numel for m in mods) / total,
                        "achieved": sum(m.achieved * m.numel for m in mods) / total,
                        "seconds": sum(m.seconds for m in mods)})
        return out

    def global_sparsity(self) -> dict[str, float]:
        total = sum(m.numel for m in self.modules) or 1
        return {"requested": sum(m.requested * m.numel for m in self.modules) / total,
                "achieved": sum(m.achieved * m.numel for m in self.modules) / total}

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "structure": self.structure, "block_names": self.block_names,
                "block_ratios": self.block_ratios, "blocks": self.block_sparsity(), "global": self.global_sparsity(),
                "modules": [m.__dict__ for m in self.modules], "seconds": self.seconds,
                "peak_memory_bytes": self.peak_memory_bytes, **self.extra}

    def save(self, directory: str | os.PathLike) -> Path:
        path = Path(directory) / "pruning_report.json"
        write_json(path, self.to_dict())
        return path

    def table(self) -> str:
        width = max(len("block"), *(len(n) for n in self.block_names))
        lines = [f"{'block':<{width}}  {'requested':>9}  {'achieved':>9}  {'seconds':>8}"]
        for name, row in zip(self.block_names, self.block_sparsity()):
            lines.append(f"{name:<{width}}  {row['requested']:>9.4f}  {row['achieved']:>9.4f}  {row['seconds']:>8.2f}")
        g = self.global_sparsity()
        lines.append(f"{'global':<{width}}  {g['requested']:>9.4f}  {g['achieved']:>9.4f}  {self.seconds:>8.2f}")
        return "\n".join(lines)
