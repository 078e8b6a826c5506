"""``hf-layerif allocate experts|sparsity``: allocations from saved scores (or a baseline), with a table and plot."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

from ..allocation.methods import ALLOCATION_METHODS, allocation_method
from ..allocation.owl import OWL_LAMBDA, OWL_M

KINDS = ("experts", "sparsity")


def _baselines_help(kind: str) -> str:
    """The registered methods of ``kind`` other than LayerIF, each with its one-line description."""
    from .. import allocation  # noqa: F401  (registers the built-in methods)

    listed = "; ".join(f"{name}: {method.description}" for name, method in sorted(ALLOCATION_METHODS[kind].items())
                       if name != "layerif")
    return f"A baseline instead of LayerIF scores ({listed}{'; or a MoLA pattern a,b,c,d' if kind == 'experts' else ''})."


@dataclass
class AllocateArguments:
    """Options shared by ``allocate experts`` and ``allocate sparsity``."""

    scores: str | None = field(default=None, metadata={"help": "Folder with layerif_scores.json (hf-layerif score --output)."})
    output: str = field(default="layerif-allocation", metadata={"help": "Output folder (layerif_allocation.json, allocation.png)."})
    model: str | None = field(default=None, metadata={"help": "Model path or Hub id (needed by model-based baselines)."})
    revision: str | None = field(default=None, metadata={"help": "Model revision."})
    aggregation: str | None = field(default=None, metadata={"help": "Block-score aggregation (default: the one the scores were made with)."})
    reverse: bool = field(default=False, metadata={"help": "Opposite direction: larger scores get fewer experts / less sparsity."})
    device: str | None = field(default=None, metadata={"help": "Device for model-based baselines."})


@dataclass
class ExpertAllocationArguments(AllocateArguments):
    """``hf-layerif allocate experts``: LoRA-MoE experts per block from LayerIF scores (``--scores``), or a baseline;
    ``alphalora`` reads the model (``--model``)."""

    total: int | None = field(default=None, metadata={"help": "Total number of experts T (required)."})
    alpha: float = field(default=1.0, metadata={"help": "Exponent of the power transform of the scores."})
    baseline: str | None = field(default=None, metadata={"help": _baselines_help("experts")})


@dataclass
class SparsityAllocationArguments(AllocateArguments):
    """``hf-layerif allocate sparsity``: pruning sparsity per block from LayerIF scores (``--scores``), or a
    baseline; ``owl`` and ``alphapruning`` read the model (``--model``)."""

    sparsity: float | None = field(default=None, metadata={"help": "Global target sparsity S (required)."})
    epsilon: float = field(default=0.3, metadata={"help": "Ratio band half-width ε: ratios span [S(1-ε), S(1+ε)] before rescaling."})
    no_smooth: bool = field(default=False, metadata={"help": "No Savitzky-Golay smoothing of LayerIF scores."})
    baseline: str | None = field(default=None, metadata={"help": _baselines_help("sparsity")})
    owl_lambda: float = field(default=OWL_LAMBDA, metadata={"help": "owl: spread λ."})
    owl_m: float = field(default=OWL_M, metadata={"help": "owl: outlier threshold M (times the block's mean score)."})
    calibration: str = field(default="c4", metadata={"help": "owl: calibration data: c4 (Hub), a local json/jsonl/txt file "
                                                              "(txt: paragraphs separated by blank lines) or a Hub id."})
    nsamples: int = field(default=128, metadata={"help": "owl: calibration sequences."})
    seqlen: int = field(default=2048, metadata={"help": "owl: tokens per calibration sequence (capped at the model's context)."})
    seed: int = field(default=0, metadata={"help": "owl: calibration sampling seed."})


ARGUMENTS = {"experts": ExpertAllocationArguments, "sparsity": SparsityAllocationArguments}


def _load_model(args: AllocateArguments):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if args.model is None:
        raise SystemExit(f"--baseline {args.baseline} reads the model: pass --model.")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    from ..data.loading import check_model_source

    check_model_source(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, revision=args.revision, dtype="auto").to(device).eval()
    return model, AutoTokenizer.from_pretrained(args.model, revision=args.revision)


def run(argv: list[str]) -> int:
    from transformers import HfArgumentParser

    usage = (f"usage: hf-layerif allocate {{{','.join(KINDS)}}} [options]\n\n"
             "  experts    LoRA-MoE experts per block (hf-layerif allocate experts --help)\n"
             "  sparsity   pruning sparsity per block (hf-layerif allocate sparsity --help)")
    if argv and argv[0] in ("-h", "--help"):
        print(usage)
        return 0
    if not argv or argv[0] not in KINDS:
        print(usage, file=sys.stderr)
        return 2
    kind = argv.pop(0)
    parser = HfArgumentParser(ARGUMENTS[kind], prog=f"hf-layerif allocate {kind}")
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    return allocate(kind, args)


def allocate(kind: str, args: AllocateArguments) -> int:
    from ..allocation import (
        block_alpha_hill,
        expert_allocation,
        plot_allocations,
        sparsity_allocation,
    )
    from ..influence.scores import LayerInfluenceScores

    method = args.baseline or "layerif"
    try:
        chosen_method = allocation_method(kind, method)
    except ValueError as err:
        raise SystemExit(f"--baseline: {err}") from None
    scores = LayerInfluenceScores.from_pretrained(args.scores) if args.scores else None
    if scores is not None and args.aggregation:
        scores = scores.with_reporting(aggregation=args.aggregation)  # a new object with its own stability
    if chosen_method.source == "scores" and scores is None:
        raise SystemExit("pass --scores (a folder from `hf-layerif score`) or a --baseline.")
    needs_model = chosen_method.source in ("alpha_hill", "outlier_ratios") or scores is None
    model = tokenizer = None
    if needs_model:
        model, tokenizer = _load_model(args)
    allocations = []
    if kind == "experts":
        if args.total is None:
            raise SystemExit("--total is required for expert allocation.")
        hill = block_alpha_hill(model, progress=True) if chosen_method.source == "alpha_hill" else None
        chosen = expert_allocation(scores, args.total, model=model, alpha=args.alpha,
                                   method=method, alpha_hill=hill, reverse=args.reverse)
        if method != "layerif" and scores is not None:
            allocations.append(expert_allocation(scores, args.total, alpha=args.alpha))
    else:
        if args.sparsity is None:
            raise SystemExit("--sparsity is required for sparsity allocation.")
        extra = {}
        if chosen_method.source == "alpha_hill":
            extra["alpha_hill"] = block_alpha_hill(model, progress=True)
        elif chosen_method.source == "outlier_ratios":
            from ..allocation.owl import layerwise_outlier_distribution
            from ..calibration import get_calibration_data
            from ..models.checks import check_sequence_length

            seqlen = check_sequence_length(args.seqlen, model, "--seqlen")
            ids = get_calibration_data(tokenizer, args.calibration, args.nsamples, seqlen, args.seed)
            extra["outlier_ratios"] = layerwise_outlier_distribution(model, ids, m=args.owl_m)
            extra["owl_m"] = args.owl_m
        chosen = sparsity_allocation(scores, args.sparsity, model=model, epsilon=args.epsilon,
                                     smooth=False if args.no_smooth else None, method=method,
                                     owl_lambda=args.owl_lambda, reverse=args.reverse, **extra)
        if method != "layerif" and scores is not None:
            allocations.append(sparsity_allocation(scores, args.sparsity, epsilon=args.epsilon,
                                                   smooth=False if args.no_smooth else None))
    allocations.append(chosen)
    path = chosen.save_pretrained(args.output)
    print(format_allocation_table(allocations))
    if chosen.kind == "sparsity":
        print(f"achieved global sparsity (parameter-weighted): {chosen.achieved_sparsity:.6f} "
              f"(target {chosen.hyperparameters['target_sparsity']})")
    png = plot_allocations(allocations, os.path.join(args.output, "allocation.png"))
    print(f"allocation: {path}\nplot: {png}")
    return 0


def format_allocation_table(allocations) -> str:
    first = allocations[0]
    names = first.model["block_names"]
    width = max(len("block"), *(len(n) for n in names))
    header = f"{'block':<{width}}" + "".join(f"  {a.method:>12}" for a in allocations)
    lines = [header]
    for i, name in enumerate(names):
        cells = "".join(f"  {a.values[i]:>12}" if a.kind == "experts" else f"  {a.values[i]:>12.4f}" for a in allocations)
        lines.append(f"{name:<{width}}{cells}")
    if first.kind == "experts":
        lines.append(f"{'total':<{width}}" + "".join(f"  {sum(a.values):>12}" for a in allocations))
    return "\n".join(lines)
