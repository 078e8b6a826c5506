"""``Allocation``: one durable, shareable format for per-block expert counts and sparsity ratios.

``save_pretrained(dir)`` writes ``layerif_allocation.json`` (UTF-8, sorted keys, ``format`` and
``format_version``; every list indexed by block). ``from_pretrained(dir)`` validates it against the JSON Schema
shipped in the package (``hf_layerif/schemas/layerif_allocation.schema.json``), accepts the same major version
and ignores unknown keys. Nothing is pickled or executed.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from ..influence.score_files import SIGN_CONVENTION
from ..models.blocks import base_linears, find_transformer_blocks
from ..utils.fingerprint import fingerprint_parameters
from ..utils.io import display_name, is_local_path, portable_source, read_versioned_json, save_figure
from ..utils.pretrained import JsonPretrainedMixin
from ..version import __version__
from .experts import allocate_experts
from .methods import allocation_method
from .owl import OWL_LAMBDA, OWL_M
from .sparsity import MAX_RATIO, allocate_sparsity

ALLOCATION_FILE = "layerif_allocation.json"
ALLOCATION_FORMAT = "hf-layerif-allocation"
ALLOCATION_FORMAT_VERSION = "1.0"


def allocation_schema() -> dict:
    """The JSON Schema of ``layerif_allocation.json`` (shipped inside the package)."""
    text = resources.files("hf_layerif").joinpath("schemas/layerif_allocation.schema.json").read_text(encoding="utf-8")
    return json.loads(text)


def describe_model(model: nn.Module, block_pattern: str | None = None) -> dict[str, Any]:
    """What an allocation fits: architecture, model id + revision, blocks, prunable linear parameters per block."""
    blocks = find_transformer_blocks(model, block_pattern)
    base = model.get_base_model() if hasattr(model, "get_base_model") and hasattr(model, "peft_config") else model
    config = getattr(base, "config", None)
    architectures = getattr(config, "architectures", None) if config is not None else None
    model_id = getattr(config, "_name_or_path", None) or None
    local = model_id is not None and is_local_path(model_id)
    return {
        "architecture": (architectures[0] if architectures else type(base).__name__),
        # a local folder is recorded as local:<name> with a fingerprint of the weights, never as a path
        "model_id": portable_source(model_id),
        **({"fingerprint": fingerprint_parameters(list(base.named_parameters()))} if local else {}),
        "revision": getattr(config, "_commit_hash", None),
        "num_blocks": len(blocks),
        "block_names": list(blocks.names),
        "block_pattern": blocks.name_pattern(),
        "params_per_block": blocks.linear_params_per_block(),
    }


def describe_from_scores(scores) -> dict[str, Any]:
    """The model description recorded in :class:`LayerInfluenceScores` provenance (no model needed)."""
    blocks = scores.provenance.get("blocks", {})
    model = scores.provenance.get("model", {})
    if "params_per_block" not in blocks:
        raise ValueError("these scores do not record the model's parameters per block (made by an older version); "
                         "pass model= as well.")
    architectures = model.get("architectures")
    return {
        "architecture": architectures[0] if architectures else model.get("class"),
        "model_id": model.get("model_id") or None,
        **({"fingerprint": model["fingerprint"]} if model.get("fingerprint") else {}),
        "revision": model.get("revision"),
        "num_blocks": len(scores.block_names),
        "block_names": list(scores.block_names),
        "block_pattern": blocks.get("pattern"),
        "params_per_block": list(blocks["params_per_block"]),
    }


def _description(model, scores) -> dict[str, Any]:
    if model is not None:
        return describe_model(model)
    if scores is not None and hasattr(scores, "provenance"):
        return describe_from_scores(scores)
    raise ValueError("pass model= (or LayerInfluenceScores as scores=) so the allocation records the model it fits.")


@dataclass
class Allocation(JsonPretrainedMixin):
    """Per-block experts (``kind="experts"``, ints ≥ 1) or sparsity ratios (``kind="sparsity"``, in [0, 0.99]).

    Attributes:
        values: one entry per block.
        method: ``layerif``, ``uniform``, a MoLA pattern, ``alphalora``, ``alphapruning`` or ``owl``.
        hyperparameters: what the method used (total experts, alpha, target sparsity, epsilon, ...).
        scores: the per-block scores (or metric values) the values were computed from, if any.
        model: :func:`describe_model` of the model it fits.
        provenance: datasets and estimator settings of the scores, when built from LayerIF scores.
    """

    kind: str
    values: list
    method: str
    hyperparameters: dict[str, Any]
    model: dict[str, Any]
    scores: list[float] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    achieved_sparsity: float | None = None
    library_version: str = __version__
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    def __post_init__(self) -> None:
        self.validate()

    @property
    def num_blocks(self) -> int:
        return len(self.values)

    def validate(self) -> None:
        """Schema and cross-field checks (list lengths = number of blocks), raising ``ValueError``."""
        import jsonschema

        try:
            jsonschema.validate(self.to_json_dict(), allocation_schema())
        except jsonschema.ValidationError as err:
            where = "/".join(str(p) for p in err.absolute_path) or "(top level)"
            raise ValueError(f"invalid allocation at {where}: {err.message}") from None
        n = self.model["num_blocks"]
        for name, values in (("values", self.values), ("model.block_names", self.model["block_names"]),
                             ("model.params_per_block", self.model["params_per_block"]), ("scores", self.scores)):
            if values is not None and len(values) != n:
                raise ValueError(f"invalid allocation: {name} has {len(values)} entries but the model has {n} blocks.")

    # --- I/O ---------------------------------------------------------------------------------------------
    def to_json_dict(self) -> dict[str, Any]:
        return {
            "format": ALLOCATION_FORMAT,
            "format_version": ALLOCATION_FORMAT_VERSION,
            "kind": self.kind,
            "values": list(self.values),
            "method": self.method,
            "hyperparameters": self.hyperparameters,
            "scores": None if self.scores is None else list(self.scores),
            "achieved_sparsity": self.achieved_sparsity,
            "model": self.model,
            "provenance": self.provenance,
            "sign_convention": SIGN_CONVENTION,
            "library_version": self.library_version,
            "created": self.created,
        }

    FILE_NAME = ALLOCATION_FILE

    def to_dict(self) -> dict[str, Any]:
        """The JSON of ``layerif_allocation.json`` (same as :meth:`to_json_dict`)."""
        return self.to_json_dict()

    @classmethod
    def read_file(cls, path: Path) -> dict[str, Any]:
        return read_versioned_json(path, ALLOCATION_FORMAT, ALLOCATION_FORMAT_VERSION, "Allocation")

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: Path | None = None) -> Allocation:
        """Validate ``data`` against the allocation schema and build the allocation."""
        import jsonschema

        try:
            jsonschema.validate(data, allocation_schema())
        except jsonschema.ValidationError as err:
            where = "/".join(str(p) for p in err.absolute_path) or "(top level)"
            raise ValueError(f"{source or 'allocation'}: invalid allocation at {where}: {err.message}") from None
        return cls(kind=data["kind"], values=list(data["values"]), method=data["method"],
                   hyperparameters=data["hyperparameters"], model=data["model"], scores=data.get("scores"),
                   provenance=data.get("provenance") or {}, achieved_sparsity=data.get("achieved_sparsity"),
                   library_version=data["library_version"], created=data["created"])

    @classmethod
    def from_values(cls, values, kind: str, model: nn.Module, method: str = "custom", **hyperparameters) -> Allocation:
        """An allocation from values computed elsewhere (one per Transformer block of ``model``).

        ``kind="experts"``: integers ≥ 1; ``kind="sparsity"``: ratios in [0, 0.99] (the achieved parameter-weighted
        sparsity is computed from the model's prunable parameters per block).
        """
        if kind not in ("experts", "sparsity"):
            raise ValueError(f"kind must be 'experts' or 'sparsity', not {kind!r}.")
        description = describe_model(model)
        values = [int(v) for v in values] if kind == "experts" else [float(v) for v in values]
        if len(values) != description["num_blocks"]:
            raise ValueError(f"{len(values)} values for a model with {description['num_blocks']} Transformer blocks; "
                             "give one value per block.")
        achieved = None
        if kind == "sparsity":
            params = description["params_per_block"]
            achieved = float(np.dot(values, params) / np.sum(params))
        return cls(kind, values, method, dict(hyperparameters), description, achieved_sparsity=achieved)

    # --- fitting a model ------------------------------------------------------------------------------------
    def check_fits(self, model: nn.Module) -> None:
        """Raise ``ValueError`` saying what differs when ``model`` is not the model this allocation was made for
        (number of blocks, block names, prunable parameters per block)."""
        try:
            other = describe_model(model)
        except ValueError as err:
            raise ValueError(f"the allocation does not fit this model: {err}") from None
        problems = []
        if other["num_blocks"] != self.model["num_blocks"]:
            problems.append(f"{other['num_blocks']} blocks in the model vs {self.model['num_blocks']} in the allocation")
        elif other["block_names"] != self.model["block_names"]:
            diff = [(a, b) for a, b in zip(self.model["block_names"], other["block_names"]) if a != b][:3]
            problems.append(f"block names differ (allocation vs model: {diff})")
        if other["params_per_block"] != self.model["params_per_block"] and other["num_blocks"] == self.model["num_blocks"]:
            bad = [i for i, (a, b) in enumerate(zip(self.model["params_per_block"], other["params_per_block"])) if a != b]
            problems.append(f"prunable parameters differ in blocks {bad[:8]} (e.g. block {bad[0]}: "
                            f"{self.model['params_per_block'][bad[0]]} in the allocation vs {other['params_per_block'][bad[0]]})")
        if problems:
            made_for = self.model.get("model_id") or self.model.get("architecture")
            raise ValueError(f"This allocation was made for {made_for!r} and does not fit the given model: "
                             + "; ".join(problems) + ". Compute an allocation for this model.")

    def to_peft_config(self, **lora_kwargs):
        """The :class:`~hf_layerif.LayerIFConfig` of this expert allocation (``experts_per_layer`` = values)."""
        from ..tuners.config import LayerIFConfig

        return LayerIFConfig.from_allocation(self, **lora_kwargs)

    def ratios_for(self, model: nn.Module) -> dict[str, float]:
        """Sparsity ratio of every prunable linear module (full module names of ``model``), block-wise mapping."""
        if self.kind != "sparsity":
            raise ValueError("ratios_for() needs a sparsity allocation (kind='sparsity').")
        self.check_fits(model)
        blocks = find_transformer_blocks(model)
        ratios = {}
        for raw, block, ratio in zip(blocks.raw_names, blocks.modules, self.values):
            for sub_name, _ in base_linears(block):
                ratios[f"{raw}.{sub_name}"] = float(ratio)
        return ratios


def _scores_and_provenance(scores) -> tuple[list[float] | None, dict]:
    if scores is None:
        return None, {}
    if hasattr(scores, "block_scores"):
        protocol = dict(scores.provenance.get("protocol") or {})
        protocol.pop("fits", None)  # per-draw fit losses stay with the scores
        provenance = {"scores": {"aggregation": scores.arguments.get("aggregation"), "arguments": scores.arguments,
                                 "estimator": scores.estimator, "data": scores.provenance.get("data"),
                                 "model": scores.provenance.get("model", {}).get("model_id"),
                                 "protocol": protocol or None, "agreement": scores.agreement() or None}}
        return scores.block_scores().tolist(), provenance
    values = scores.detach().cpu().tolist() if hasattr(scores, "detach") else [float(x) for x in scores]
    return values, {}


def expert_allocation(scores=None, total_experts: int | None = None, *, model: nn.Module | None = None,
                      alpha: float = 1.0, method: str = "layerif", alpha_hill=None, reverse: bool = False) -> Allocation:
    """An expert :class:`Allocation` (see :func:`allocate_experts` for the methods).

    The model it fits comes from ``model`` or, when ``scores`` is a ``LayerInfluenceScores``, from its provenance.
    """
    description = _description(model, scores)
    values = allocate_experts(scores, total_experts, alpha, method, num_blocks=description["num_blocks"],
                              alpha_hill=alpha_hill, reverse=reverse)
    chosen = allocation_method("experts", method)
    used, provenance = _scores_and_provenance({"scores": scores, "alpha_hill": alpha_hill}.get(chosen.source))
    hyper = {"total_experts": int(sum(values)), "requested_total_experts": total_experts,
             **chosen.resolve_options({"alpha": alpha, "reverse": reverse}), **chosen.recorded_settings({})}
    if "reverse" in hyper:
        hyper["direction"] = "reversed" if hyper.pop("reverse") else "more experts for larger scores"
    return Allocation("experts", [int(v) for v in values], method, hyper, description, used, provenance)


def sparsity_allocation(scores=None, target_sparsity: float = 0.5, *, model: nn.Module | None = None,
                        epsilon: float = 0.3, smooth: bool | None = None, method: str = "layerif", alpha_hill=None,
                        outlier_ratios=None, owl_lambda: float = OWL_LAMBDA, owl_m: float = OWL_M,
                        reverse: bool = False) -> Allocation:
    """A sparsity :class:`Allocation`; reports the achieved parameter-weighted global sparsity.

    The model it fits comes from ``model`` or, when ``scores`` is a ``LayerInfluenceScores``, from its provenance.
    """
    description = _description(model, scores)
    params = description["params_per_block"]
    values = allocate_sparsity(scores, target_sparsity, epsilon, smooth, params, method, description["num_blocks"],
                               alpha_hill=alpha_hill, outlier_ratios=outlier_ratios, owl_lambda=owl_lambda,
                               reverse=reverse)
    chosen = allocation_method("sparsity", method)
    used, provenance = _scores_and_provenance(
        {"scores": scores, "alpha_hill": alpha_hill, "outlier_ratios": outlier_ratios}.get(chosen.source))
    achieved = float(np.dot(values, params) / np.sum(params))
    # the options this method used, nothing else (OWL records no epsilon; uniform records only the target)
    hyper = {"target_sparsity": target_sparsity, "mapping": "block-wise",
             **chosen.resolve_options({"epsilon": epsilon, "smooth": smooth, "reverse": reverse,
                                       "owl_lambda": owl_lambda}),
             **chosen.recorded_settings({"owl_m": owl_m})}
    if "reverse" in hyper:
        hyper["direction"] = "reversed" if hyper.pop("reverse") else "more sparsity for larger scores"
    return Allocation("sparsity", values, method, hyper, description, used, provenance, achieved_sparsity=achieved)


def compare_allocations(a: Allocation, b: Allocation) -> dict[str, Any]:
    """Spearman rank correlation of two allocations' per-block values and their per-block differences (b − a)."""
    from ..influence.stability import spearman

    if a.kind != b.kind:
        raise ValueError(f"compare_allocations compares allocations of one kind; got {a.kind!r} ({a.method}) and "
                         f"{b.kind!r} ({b.method}).")
    if a.num_blocks != b.num_blocks:
        raise ValueError(f"the allocations have {a.num_blocks} and {b.num_blocks} blocks; compare allocations of one model.")
    diff = [float(y) - float(x) for x, y in zip(a.values, b.values)]
    return {"spearman": spearman(a.values, b.values), "differences": diff,
            "max_abs_difference": max(abs(d) for d in diff), "methods": [a.method, b.method], "kind": [a.kind, b.kind]}


def plot_allocations(allocations: list[Allocation], path: str | os.PathLike, labels: list[str] | None = None,
                     title: str | None = None) -> Path:
    """Side-by-side bars of several allocations over blocks (PNG)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if not allocations:
        raise ValueError("plot_allocations needs at least one allocation.")
    kinds = {a.kind for a in allocations}
    if len(kinds) != 1 or len({a.num_blocks for a in allocations}) != 1:
        raise ValueError("plot_allocations compares allocations of one kind over the same blocks.")
    labels = labels or [a.method for a in allocations]
    L = allocations[0].num_blocks
    width = 0.8 / len(allocations)
    fig, ax = plt.subplots(figsize=(max(6, L * 0.35 * len(allocations) ** 0.5), 4))
    x = np.arange(L)
    for i, (alloc, label) in enumerate(zip(allocations, labels)):
        if alloc.kind == "experts":
            label = f"{label} (total {sum(alloc.values)})"
        elif alloc.achieved_sparsity is not None:
            label = f"{label} (global {alloc.achieved_sparsity:.3f})"
        offset = x + (i - (len(allocations) - 1) / 2) * width
        ax.bar(offset, alloc.values, width, label=label)
        if alloc.kind == "sparsity":  # a ratio clamped at the maximum is marked, never silent
            clamped = np.asarray(alloc.values) >= MAX_RATIO - 1e-12
            if clamped.any():
                ax.scatter(offset[clamped], np.asarray(alloc.values)[clamped] + 0.02, marker="v", color="black", zorder=3,
                           label=f"clamped at {MAX_RATIO} ({label.split(' (')[0]})")
    targets = {a.hyperparameters.get("target_sparsity") for a in allocations if a.kind == "sparsity"} - {None}
    for target in sorted(targets):
        ax.axhline(float(target), color="black", lw=0.8, ls="--", label=f"target sparsity {float(target):g}")
    ax.set_xlabel("block")
    ax.set_ylabel("experts" if kinds == {"experts"} else "sparsity ratio")
    model_name = allocations[0].model.get("model_id") or allocations[0].model.get("architecture") or ""
    model_name = display_name(model_name) if model_name else model_name
    ax.set_title(title or (("Experts per block" if kinds == {"experts"} else "Sparsity per block")
                           + (f" of {model_name}" if model_name else "")))
    ax.set_xticks(x[:: max(1, L // 16)])
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=8)  # outside: covers no bar
    fig.tight_layout()
    return save_figure(fig, path)
