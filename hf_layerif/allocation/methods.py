"""Registries of allocation methods chosen by name: experts per block and sparsity per block.

A method is one function in one file (``experts.py``, ``sparsity.py``, or a user's module), registered with
:func:`register_allocation_method`. It declares the per-block input it reads (``source``: LayerIF ``scores``,
block-mean PL_Alpha_Hill ``alpha_hill``, OWL ``outlier_ratios``, or nothing) and its own options with their
defaults; :func:`allocate_experts` / :func:`allocate_sparsity` validate the name here, fetch the source, pass only
the method's options, and record exactly those options in the allocation's provenance.

Call conventions (``values``: the source as a float64 vector [L], or None for a method without a source):

- experts: ``fn(values, total_experts, num_blocks, **options) -> list[int]`` (Σ = total, each ≥ 1);
- sparsity: ``fn(values, target_sparsity, params_per_block, **options) -> list[float]`` (parameter-weighted mean =
  target).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

KINDS = ("experts", "sparsity")
SOURCES = ("scores", "alpha_hill", "outlier_ratios", None)


@dataclass(frozen=True)
class AllocationMethod:
    """One named way to allocate experts or sparsity over blocks.

    Attributes:
        name: the name users pass (``method=``, ``--baseline``).
        kind: ``"experts"`` or ``"sparsity"``.
        function: the allocator (call conventions in the module docstring).
        source: the per-block input it reads: ``"scores"``, ``"alpha_hill"``, ``"outlier_ratios"`` or None.
        options: its keyword options and their defaults.
        description: one line for ``--help`` and errors.
        fixed_total: an expert method whose total is set by the method itself (MoLA patterns).
        input_options: settings its per-block input is computed with (e.g. OWL's outlier threshold M) and their
            defaults; recorded in the allocation's hyperparameters, not passed to ``function``.
        constants: fixed values the method uses (e.g. AlphaLoRA's exponent), recorded in the allocation's
            hyperparameters.
    """

    name: str
    kind: str
    function: Callable[..., list]
    source: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    fixed_total: bool = False
    input_options: dict[str, Any] = field(default_factory=dict)
    constants: dict[str, Any] = field(default_factory=dict)

    def resolve_options(self, given: dict[str, Any]) -> dict[str, Any]:
        """The method's options: its defaults, overridden by the values in ``given`` that are not None."""
        return {key: given[key] if given.get(key) is not None else default for key, default in self.options.items()}

    def recorded_settings(self, given: dict[str, Any]) -> dict[str, Any]:
        """What an allocation made with this method records beside its options: its input's settings (defaults
        overridden by ``given``) and its constants."""
        inputs = {key: given[key] if given.get(key) is not None else default for key, default in self.input_options.items()}
        return {**inputs, **self.constants}


ALLOCATION_METHODS: dict[str, dict[str, AllocationMethod]] = {kind: {} for kind in KINDS}
# families of names built on demand (MoLA's "a,b,c,d" patterns): kind -> [(resolver, how to write a name)];
# a resolver returns a method for a name it understands, else None
NAME_FAMILIES: dict[str, list[tuple[Callable[[str], AllocationMethod | None], str]]] = {kind: [] for kind in KINDS}


def register_allocation_method(kind: str, name: str, *, source: str | None = None, options: dict[str, Any] | None = None,
                               description: str = "", fixed_total: bool = False,
                               input_options: dict[str, Any] | None = None, constants: dict[str, Any] | None = None):
    """Decorator registering ``function`` as allocation method ``name`` of ``kind`` (replacing one of that name)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}.")
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}.")

    def register(function: Callable[..., list]) -> Callable[..., list]:
        ALLOCATION_METHODS[kind][name] = AllocationMethod(name, kind, function, source, dict(options or {}),
                                                          description, fixed_total, dict(input_options or {}),
                                                          dict(constants or {}))
        return function

    return register


def allocation_method(kind: str, name: str) -> AllocationMethod:
    """The registered method ``name`` of ``kind``, or one built by a registered name family (MoLA ``"a,b,c,d"``).

    Raises:
        ValueError: an unknown name, listing the registered ones.
    """
    methods = ALLOCATION_METHODS[kind]
    if name in methods:
        return methods[name]
    for resolve, _ in NAME_FAMILIES[kind]:
        method = resolve(name) if isinstance(name, str) else None
        if method is not None:
            return method
    hint = "".join(f" or {how}" for _, how in NAME_FAMILIES[kind])
    raise ValueError(f"unknown {kind} allocation method {name!r}; use one of {', '.join(sorted(methods))}{hint}.")


def method_names(kind: str) -> list[str]:
    """Registered method names of ``kind`` (for ``--help``)."""
    return sorted(ALLOCATION_METHODS[kind])


__all__ = ["ALLOCATION_METHODS", "NAME_FAMILIES", "AllocationMethod", "allocation_method", "method_names", "register_allocation_method"]
