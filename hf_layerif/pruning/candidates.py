"""Candidate sparsity allocations for ``allocation="auto"`` (METHOD §5.1): parsing, defaults and validation.

A candidate is a registered sparsity allocation method plus the options it is run with, written on the command line
as ``method[:option=value...]``, comma-separated::

    uniform,owl,alphapruning:epsilon=0.2,layerif:epsilon=0.1:reverse=true

Everything here is checked before any calibration or pruning starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..allocation.methods import allocation_method

UNIFORM = "uniform"
# default candidates: the paper's baselines, and LayerIF in both directions over a range of bands when scores exist
DEFAULT_BASELINES = ("uniform", "owl", "alphapruning")
DEFAULT_LAYERIF_EPSILONS = (0.1, 0.2, 0.3)


@dataclass(frozen=True)
class AllocationCandidate:
    """One candidate allocation: a registered sparsity method and the options given to it (others: defaults)."""

    method: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """``method`` or ``method(option=value, ...)`` with the options given, in a stable order."""
        if not self.options:
            return self.method
        return f"{self.method}({', '.join(f'{k}={_format(v)}' for k, v in sorted(self.options.items()))})"

    @property
    def source(self) -> str | None:
        """The per-block input the method reads (``scores``, ``alpha_hill``, ``outlier_ratios`` or None)."""
        return allocation_method("sparsity", self.method).source

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "method": self.method, "options": dict(sorted(self.options.items()))}

    def __hash__(self) -> int:
        return hash(self.name)


def _format(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else f"{value:g}" if isinstance(value, float) else str(value)


def _parse_value(text: str, default: Any, where: str) -> Any:
    if isinstance(default, bool):
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ValueError(f"{where}: expected true or false, got {text!r}.")
    if isinstance(default, (int, float)):
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{where}: expected a number, got {text!r}.") from None
    return text


def make_candidate(method: str, **options: Any) -> AllocationCandidate:
    """A validated candidate: ``method`` must be a registered sparsity method and every option one of its own."""
    registered = allocation_method("sparsity", method)  # an unknown name raises, listing the registered ones
    unknown = sorted(set(options) - set(registered.options))
    if unknown:
        allowed = ", ".join(sorted(registered.options)) or "none"
        raise ValueError(f"candidate {method!r} has no option {', '.join(unknown)}; its options: {allowed}.")
    return AllocationCandidate(method, dict(options))


def parse_candidate(spec: str) -> AllocationCandidate:
    """``"layerif:epsilon=0.1:reverse=true"`` → a candidate (see the module docstring)."""
    parts = [p.strip() for p in spec.strip().split(":")]
    if not parts[0]:
        raise ValueError(f"empty candidate in {spec!r}; write method[:option=value...].")
    method = allocation_method("sparsity", parts[0])
    options = {}
    for part in parts[1:]:
        if "=" not in part:
            raise ValueError(f"candidate {spec!r}: {part!r} is not option=value.")
        key, value = (x.strip() for x in part.split("=", 1))
        if key not in method.options:
            allowed = ", ".join(sorted(method.options)) or "none"
            raise ValueError(f"candidate {spec!r}: {parts[0]!r} has no option {key!r}; its options: {allowed}.")
        options[key] = _parse_value(value, method.options[key], f"candidate {spec!r} option {key}")
    return AllocationCandidate(parts[0], options)


def default_candidates(with_scores: bool) -> list[AllocationCandidate]:
    """uniform, OWL, AlphaPruning and, ``with_scores``, LayerIF at ε ∈ {0.1, 0.2, 0.3} in both directions."""
    candidates = [AllocationCandidate(name) for name in DEFAULT_BASELINES]
    if with_scores:
        candidates += [AllocationCandidate("layerif", {"epsilon": eps, "reverse": reverse})
                       for reverse in (False, True) for eps in DEFAULT_LAYERIF_EPSILONS]
    return candidates


def resolve_candidates(candidates: str | Sequence[str | AllocationCandidate] | None,
                       with_scores: bool) -> list[AllocationCandidate]:
    """The candidate list of ``allocation="auto"``: given (a comma-separated string, or a list of specs or
    candidates) or the defaults. Uniform is always included (first), duplicates are dropped, and a score-based
    candidate without scores raises.

    Raises:
        ValueError: an unknown method or option, an empty list, or LayerIF candidates without scores (names the fix).
    """
    if candidates is None:
        chosen = default_candidates(with_scores)
    else:
        items = [c for c in candidates.split(",") if c.strip()] if isinstance(candidates, str) else list(candidates)
        if not items:
            raise ValueError("candidates is empty; give method names (e.g. 'uniform,owl,alphapruning') or leave it "
                             "unset for the defaults.")
        chosen = [c if isinstance(c, AllocationCandidate) else parse_candidate(c) for c in items]
    needing = [c.name for c in chosen if c.source == "scores"]
    if needing and not with_scores:
        raise ValueError(f"candidates {needing} map LayerIF scores, but none were given: pass scores= (--scores "
                         "DIR with layerif_scores.json) or drop them.")
    unique: dict[str, AllocationCandidate] = {UNIFORM: AllocationCandidate(UNIFORM)}
    for candidate in chosen:
        unique.setdefault(candidate.name, candidate)
    return list(unique.values())


__all__ = ["AllocationCandidate", "default_candidates", "make_candidate", "parse_candidate", "resolve_candidates"]
