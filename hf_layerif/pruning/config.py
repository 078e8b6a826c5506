"""``PruningConfig``: what to prune and how, a dataclass that saves and loads as JSON."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..allocation.allocation import Allocation
from ..allocation.methods import ALLOCATION_METHODS
from ..allocation.owl import OWL_LAMBDA, OWL_M
from ..influence.scores import LayerInfluenceScores
from ..utils.io import portable_source
from ..utils.pretrained import JsonPretrainedMixin
from .methods import PRUNING_METHODS, pruning_method

METHODS = tuple(PRUNING_METHODS)  # the built-in methods; the registry may hold more
# sparsity allocations the pruner computes from the model by name (the registry's methods without LayerIF scores)
NAMED_ALLOCATIONS = tuple(sorted(name for name, method in ALLOCATION_METHODS["sparsity"].items()
                                 if method.source != "scores"))
STRUCTURES = ("unstructured", "2:4", "4:8")
AUTO = "auto"  # allocation chosen among candidates by held-out evidence (pruning/selection.py)
PRUNING_CONFIG_FILE = "pruning_config.json"


@dataclass
class PruningConfig(JsonPretrainedMixin):
    """Pruning to a global sparsity with per-block ratios (METHOD §5, §7).

    Args:
        method: ``"magnitude"``, ``"wanda"`` or ``"sparsegpt"``.
        sparsity: global target sparsity S in (0, 1) over the blocks' linear weights.
        allocation: per-block ratios: ``None`` / ``"uniform"`` (S everywhere), ``"owl"``, ``"alphapruning"``,
            ``"auto"`` (chosen among ``candidates`` by held-out evidence, METHOD §5.1), an
            :class:`~hf_layerif.allocation.Allocation` (e.g. from LayerIF scores), a folder or file with
            ``layerif_allocation.json``, or ``LayerInfluenceScores`` (mapped with ``epsilon``).
        scores: LayerIF scores (``LayerInfluenceScores``, a folder with ``layerif_scores.json``, or one score per
            block) for the LayerIF candidates of ``allocation="auto"``.
        candidates: the candidates of ``allocation="auto"``: ``method[:option=value...]`` specs, comma-separated or
            a list (see :mod:`hf_layerif.pruning.candidates`); ``None``: uniform, OWL, AlphaPruning and, with
            ``scores``, LayerIF at ε 0.1, 0.2, 0.3 in both directions. Uniform is always a candidate.
        selection_nsamples, selection_seed: the selection split of ``"auto"``: windows of ``seqlen`` tokens drawn
            with this seed from calibration-source documents that calibration did not use.
        screen_fraction: ``"auto"`` screens every candidate with this fraction of the calibration sequences, then
            prunes uniform and the ``finalists`` best others with all of them; 1 evaluates every candidate fully.
        finalists: non-uniform candidates that go from screening to the final evaluation.
        min_margin_se: ``"auto"`` chooses a candidate other than uniform only when it beats uniform's objective by at
            least this many paired standard errors over the selection sequences (the per-sequence loss differences);
            otherwise uniform is kept. 0 chooses the lowest objective outright. The default, 1, was chosen among
            0, 1 and 2 on SmolLM2-135M runs (benchmarks/RESULTS.md, "The margin rule").
        epsilon: ratio band half-width for score-based allocations (LayerIF, AlphaPruning).
        reverse: the opposite direction for score-based allocations (a larger score gets less sparsity).
        structure: ``"unstructured"``, ``"2:4"`` or ``"4:8"``. N:M fixes every layer's sparsity at n/m, so it
            excludes per-block ratios (a clear error says so).
        nsamples, seqlen, seed, calibration: calibration data as the papers (128 × 2048 tokens of C4, seed 0);
            ``calibration`` is ``"c4"``, a local file, a Hub dataset id, or given to ``prune()`` directly.
        batch_size: calibration sequences per forward.
        activation_device / activation_dtype: where block inputs are kept (e.g. ``"cpu"`` / ``"bfloat16"``).
        blocksize, percdamp: SparseGPT column block size and dampening (fraction of mean diag H).
        hessian_dtype: SparseGPT's H = Σ x xᵀ and its inverse factor: ``"float32"`` (as the reference code and
            llm-compressor; half the memory and time of float64 on a CPU) or ``"float64"``.
        owl_lambda, owl_m: OWL's spread λ and outlier threshold M.
    """

    method: str = field(default="wanda", metadata={"help": f"One of {METHODS}."})
    sparsity: float = field(default=0.5, metadata={"help": "Global target sparsity."})
    # typed as a string for the command line; Allocation and LayerInfluenceScores objects are accepted too
    # str first, then None: the CLI parses a name or a path; Python callers may pass the objects
    allocation: str | None | Allocation | LayerInfluenceScores = field(default=None, metadata={
        "help": f"auto (chosen by held-out evidence) | {' | '.join(NAMED_ALLOCATIONS)} | a folder with "
                "layerif_allocation.json or layerif_scores.json."})
    scores: str | None | LayerInfluenceScores = field(default=None, metadata={
        "help": "allocation=auto: LayerIF scores (a folder with layerif_scores.json) for the LayerIF candidates."})
    candidates: str | None | list = field(default=None, metadata={
        "help": "allocation=auto: comma-separated candidates method[:option=value...], e.g. "
                "'uniform,owl,alphapruning,layerif:epsilon=0.1:reverse=true' (default: uniform, owl, alphapruning, "
                "and with --scores layerif at epsilon 0.1/0.2/0.3 in both directions)."})
    selection_nsamples: int = field(default=16, metadata={"help": "allocation=auto: selection-split sequences."})
    selection_seed: int = field(default=1, metadata={"help": "allocation=auto: seed of the selection split."})
    screen_fraction: float = field(default=0.0625, metadata={
        "help": "allocation=auto: fraction of calibration sequences used to screen every candidate (1: no screening)."})
    finalists: int = field(default=1, metadata={
        "help": "allocation=auto: candidates besides uniform evaluated with all calibration sequences."})
    min_margin_se: float = field(default=1.0, metadata={
        "help": "allocation=auto: a candidate other than uniform must beat uniform by this many paired standard errors "
                "of the selection objective (0: the lowest objective wins)."})
    epsilon: float = field(default=0.3, metadata={"help": "Ratio band half-width for score-based allocations."})
    reverse: bool = field(default=False, metadata={"help": "Score-based allocations: larger scores get less sparsity."})
    structure: str = field(default="unstructured", metadata={"help": f"One of {STRUCTURES}."})
    nsamples: int = field(default=128, metadata={"help": "Calibration sequences."})
    seqlen: int = field(default=2048, metadata={"help": "Tokens per calibration sequence."})
    seed: int = field(default=0, metadata={"help": "Calibration sampling seed."})
    calibration: str = field(default="c4", metadata={"help": "Calibration data: c4, a file or a Hub dataset id."})
    batch_size: int = field(default=1, metadata={"help": "Calibration sequences per forward."})
    activation_device: str | None = field(default=None, metadata={"help": "Where block inputs live (e.g. cpu)."})
    activation_dtype: str | None = field(default=None, metadata={"help": "dtype of stored block inputs (e.g. bfloat16)."})
    blocksize: int = field(default=128, metadata={"help": "SparseGPT column block size."})
    percdamp: float = field(default=0.01, metadata={"help": "SparseGPT dampening (fraction of mean diag H)."})
    hessian_dtype: str = field(default="float32", metadata={"help": "SparseGPT: dtype of H = Σ x xᵀ and its inverse "
                                                                     "factor, float32 (as the reference) or float64."})
    owl_lambda: float = field(default=OWL_LAMBDA, metadata={"help": "OWL spread lambda."})
    owl_m: float = field(default=OWL_M, metadata={"help": "OWL outlier threshold M."})

    FILE_NAME = PRUNING_CONFIG_FILE

    def __post_init__(self) -> None:
        pruning_method(self.method)  # an unknown name raises, listing the registered methods
        if self.structure not in STRUCTURES:
            raise ValueError(f"structure={self.structure!r}; choose one of {STRUCTURES}.")
        if not 0 < self.sparsity < 1:
            raise ValueError(f"sparsity must be in (0, 1), got {self.sparsity}.")
        if not 0 <= self.epsilon < 1:
            raise ValueError(f"epsilon must be in [0, 1), got {self.epsilon}.")
        if self.hessian_dtype not in ("float32", "float64"):
            raise ValueError(f"hessian_dtype must be 'float32' or 'float64', got {self.hessian_dtype!r}.")
        if self.nsamples < 1 or self.seqlen < 2 or self.batch_size < 1:
            raise ValueError("nsamples, batch_size must be >= 1 and seqlen >= 2.")
        if self.selection_nsamples < 1 or self.finalists < 1 or not 0 < self.screen_fraction <= 1:
            raise ValueError("selection_nsamples and finalists must be >= 1 and screen_fraction in (0, 1].")
        if not self.min_margin_se >= 0:
            raise ValueError(f"min_margin_se must be >= 0 (standard errors), got {self.min_margin_se}.")
        if self.allocation == AUTO and self.min_margin_se > 0 and self.selection_nsamples < 2:
            raise ValueError("min_margin_se needs a standard error, so at least 2 selection sequences: set "
                             "selection_nsamples >= 2, or min_margin_se=0 to choose the lowest objective outright.")
        if self.allocation == AUTO and self.nm is None:
            from .candidates import resolve_candidates

            resolve_candidates(self.candidates, True)  # unknown methods or options fail now, before any work
        elif self.candidates is not None:
            raise ValueError("candidates apply to allocation='auto'; set allocation='auto' or drop candidates.")
        if self.nm is not None:
            n, m = self.nm
            if abs(self.sparsity - n / m) > 1e-9:
                raise ValueError(f"structure {self.structure} prunes exactly {n}/{m} of every layer; set sparsity={n / m} "
                                 "or use structure='unstructured'.")
            if self.allocation not in (None, "uniform"):
                raise ValueError(
                    f"structure {self.structure} fixes every layer's sparsity at {n}/{m}, so per-block ratios "
                    f"(allocation={self.allocation if isinstance(self.allocation, str) else type(self.allocation).__name__}) "
                    "cannot apply: pruning some layers N:M and others to other ratios has no common definition of the "
                    "global budget. Use structure='unstructured' with an allocation, or allocation='uniform' with N:M."
                )

    def activation_kwargs(self) -> dict:
        """``activation_device`` / ``activation_dtype`` as the block-sequential runner takes them."""
        import torch

        dtype = getattr(torch, self.activation_dtype) if self.activation_dtype else None
        return {"activation_device": self.activation_device, "activation_dtype": dtype}

    @property
    def nm(self) -> tuple[int, int] | None:
        if self.structure == "unstructured":
            return None
        n, m = (int(x) for x in self.structure.split(":"))
        return n, m

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["calibration"] = portable_source(self.calibration)  # a local file is recorded by its name only
        if isinstance(self.scores, str):
            data["scores"] = portable_source(self.scores)
        if _is_object(self.allocation):
            data["allocation"] = _describe_allocation(self.allocation)
        if _is_object(self.scores):
            data["scores"] = {"type": type(self.scores).__name__}
        if isinstance(self.candidates, (list, tuple)):
            data["candidates"] = ",".join(c if isinstance(c, str) else _candidate_spec(c) for c in self.candidates)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: Path | None = None) -> PruningConfig:
        """A config from its JSON. An allocation object that was used is saved next to the config, so it is
        referred to by the folder (or Hub repo) the config was read from; score objects are not saved with it."""
        known = {f.name for f in dataclasses.fields(cls)}
        data = dict(data)
        if isinstance(data.get("allocation"), dict):
            data["allocation"] = str(source.parent) if source is not None else None
        if isinstance(data.get("scores"), dict):
            data["scores"] = None
        return cls(**{k: v for k, v in data.items() if k in known})


def _candidate_spec(candidate) -> str:
    return ":".join([candidate.method] + [f"{k}={v}" for k, v in sorted(candidate.options.items())])


def _is_object(value) -> bool:
    return value is not None and not isinstance(value, str)


def _describe_allocation(value) -> dict[str, Any]:
    if hasattr(value, "kind") and hasattr(value, "method"):
        return {"type": "Allocation", "method": value.method, "file": "layerif_allocation.json"}
    return {"type": type(value).__name__}
