"""``PruningReport``: requested vs achieved sparsity per module, per block and for the whole model."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..utils.pretrained import JsonPretrainedMixin

REPORT_FILE = "pruning_report.json"
_CORE_KEYS = ("method", "structure", "block_names", "block_ratios", "blocks", "global", "modules", "seconds",
              "peak_memory_bytes")


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
class PruningReport(JsonPretrainedMixin):
    """What a pruning run did. Sparsities are fractions of zero weights (parameter-weighted for blocks/model)."""

    method: str
    structure: str
    block_names: list[str]
    modules: list[ModuleResult]
    block_ratios: list[float]
    seconds: float = 0.0
    peak_memory_bytes: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def selection(self) -> dict[str, Any] | None:
        """``allocation="auto"``: every candidate's held-out objective, the split, the rule and the chosen one
        (:mod:`hf_layerif.pruning.selection`); None for a fixed allocation."""
        return self.extra.get("selection")

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

    FILE_NAME = REPORT_FILE

    save = JsonPretrainedMixin.save_pretrained  # the name used before save_pretrained / from_pretrained

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: Path | None = None) -> PruningReport:
        return cls(method=data["method"], structure=data["structure"], block_names=list(data["block_names"]),
                   modules=[ModuleResult(**m) for m in data["modules"]], block_ratios=list(data["block_ratios"]),
                   seconds=data.get("seconds", 0.0), peak_memory_bytes=data.get("peak_memory_bytes"),
                   extra={k: v for k, v in data.items() if k not in _CORE_KEYS})

    def table(self) -> str:
        width = max(len("block"), *(len(n) for n in self.block_names))
        lines = [f"{'block':<{width}}  {'requested':>9}  {'achieved':>9}  {'seconds':>8}"]
        for name, row in zip(self.block_names, self.block_sparsity()):
            lines.append(f"{name:<{width}}  {row['requested']:>9.4f}  {row['achieved']:>9.4f}  {row['seconds']:>8.2f}")
        g = self.global_sparsity()
        lines.append(f"{'global':<{width}}  {g['requested']:>9.4f}  {g['achieved']:>9.4f}  {self.seconds:>8.2f}")
        return "\n".join(lines)
