"""``hf-layerif prune``: prune a model with per-block ratios, report requested vs achieved sparsity, evaluate."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

from ..pruning.config import AUTO, PruningConfig

SELECTION_DIRNAME = ".selection"  # resume state of allocation=auto inside the output folder, removed once saved
DEFAULT_CLI_ALLOCATION = AUTO  # the command line's main path: the allocation chosen by held-out evidence


@dataclass
class PruneArguments:
    """Model, output and evaluation options (the pruning options are PruningConfig's)."""

    model: str = field(metadata={"help": "Model path or Hub id."})
    output: str = field(default="layerif-pruned", metadata={"help": "Output folder for the pruned model and reports."})
    revision: str | None = field(default=None, metadata={"help": "Model revision."})
    torch_dtype: str = field(default="auto", metadata={"help": "auto, float32, bfloat16 or float16."})
    device_map: str | None = field(default=None, metadata={"help": "e.g. 'auto' to dispatch over GPUs / CPU."})
    device: str | None = field(default=None, metadata={"help": "Device when no device_map (default: cuda if available)."})
    eval: str | None = field(default=None, metadata={"help": "Comma-separated: wikitext2, zero-shot, or task names."})
    wikitext2: str | None = field(default=None, metadata={"help": "Local WikiText-2 test file (jsonl rows or joined text)."})
    eval_seqlen: int | None = field(default=None, metadata={"help": "Perplexity window (default: the calibration seqlen)."})
    eval_max_windows: int | None = field(default=None, metadata={"help": "Perplexity over at most this many windows (default: all)."})
    task_files: str | None = field(default=None, metadata={"help": "Local task files: name=path,name=path."})
    eval_limit: int | None = field(default=None, metadata={"help": "Items per zero-shot task (default: all)."})
    no_save: bool = field(default=False, metadata={"help": "Do not write the pruned model."})
    base_model: str | None = field(default=None, metadata={
        "help": "The Hub id the (local) model comes from, for the model card's base_model."})
    license: str | None = field(default=None, metadata={"help": "The model card's license (e.g. apache-2.0)."})


def _resolve_allocation(value):
    from pathlib import Path

    from ..allocation.methods import ALLOCATION_METHODS

    if value is None or value == "auto" or value in ALLOCATION_METHODS["sparsity"]:
        return value
    path = Path(value)
    if (path / "layerif_scores.json").exists():
        from ..influence.scores import LayerInfluenceScores

        return LayerInfluenceScores.from_pretrained(path)
    return str(path)


def run(argv: list[str]) -> int:
    from transformers import HfArgumentParser

    parser = HfArgumentParser((PruneArguments, PruningConfig), prog="hf-layerif prune",
                              description="Prune a model to a global sparsity with per-block ratios. On the command "
                                          "line --allocation defaults to auto: the allocation is chosen among "
                                          "candidates by the pruned model's loss on held-out calibration text "
                                          "(--allocation uniform for one plain prune).")
    argv = list(argv)
    if not any(a == "--allocation" or a.startswith("--allocation=") for a in argv) and not any(
            a in ("2:4", "4:8") or a.startswith("--structure=") and not a.endswith("unstructured") for a in argv):
        argv += ["--allocation", DEFAULT_CLI_ALLOCATION]
    args, config = parser.parse_args_into_dataclasses(args=argv)
    return prune(args, config)


def prune(args: PruneArguments, config: PruningConfig) -> int:
    import torch

    from ..data.loading import check_model_source
    from ..evaluation import zero_shot
    from ..evaluation.perplexity import load_wikitext2_test
    from ..evaluation.zero_shot import PAPER_TASKS
    from ..pruning import LayerIFPruner, perplexity
    from ..utils.io import write_json

    config = dataclasses.replace(config, allocation=_resolve_allocation(config.allocation))  # checked again
    kwargs = {"revision": args.revision, "dtype": "auto" if args.torch_dtype == "auto" else getattr(torch, args.torch_dtype)}
    if args.device_map:
        kwargs["device_map"] = args.device_map
    wanted = [w.strip() for w in args.eval.split(",") if w.strip()] if args.eval else []
    files = dict(item.split("=", 1) for item in args.task_files.split(",")) if args.task_files else {}
    for task, path in files.items():  # a typo in a local path fails now, before the model loads
        if not os.path.exists(path):
            raise SystemExit(f"--task_files: the file for {task!r} does not exist: {path}")
    if args.wikitext2 and not os.path.exists(args.wikitext2):
        raise SystemExit(f"--wikitext2: no such file: {args.wikitext2}")
    check_model_source(args.model)
    pruner = LayerIFPruner.from_pretrained(args.model, **kwargs)
    if not args.device_map:
        pruner.model.to(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    selection_dir = os.path.join(args.output, SELECTION_DIRNAME)
    report = pruner.prune(config, selection_dir=selection_dir)
    print(report.table())
    if "selection" in report.extra:
        from ..pruning.selection import SELECTION_STATE_FILE, selection_table

        print(selection_table(report.extra["selection"]))
    # the pruned model is saved before any evaluation, so an evaluation that fails (offline Hub, a bad task
    # file) never loses it
    os.makedirs(args.output, exist_ok=True)
    if not args.no_save:
        pruner.save_pretrained(args.output, license=args.license, base_model=args.base_model)
    else:
        report.save_pretrained(args.output)
    if "selection" in report.extra:  # the record is in the report now: the resume state is no longer needed
        from ..utils.io import remove_files_and_folder

        remove_files_and_folder(selection_dir, [SELECTION_STATE_FILE])
    print(f"saved to {args.output}")
    results: dict = {"pruning": report.global_sparsity()}
    errors: dict[str, str] = {}

    def save_results() -> None:
        payload = dict(results, **({"errors": errors} if errors else {}))
        write_json(os.path.join(args.output, "eval_results.json"), json.loads(json.dumps(payload, default=float)))

    save_results()
    if "wikitext2" in wanted:
        try:
            text = load_wikitext2_test(args.wikitext2)
            results["wikitext2_ppl"] = perplexity(pruner.model, pruner.tokenizer, text, seqlen=args.eval_seqlen or config.seqlen,
                                                  max_windows=args.eval_max_windows)
            print(f"WikiText-2 perplexity: {results['wikitext2_ppl']:.3f}")
        except Exception as err:  # noqa: BLE001 - reported and kept; the pruned model is already saved
            errors["wikitext2"] = f"{type(err).__name__}: {err}"
        save_results()
    tasks = [t for t in wanted if t not in ("wikitext2", "zero-shot")]
    if "zero-shot" in wanted:
        tasks += [t for t in PAPER_TASKS if t not in tasks]
    for task in tasks:
        try:
            metrics = zero_shot(pruner.model, pruner.tokenizer, {task: files.get(task)}, limit=args.eval_limit)[task]
            results.setdefault("zero_shot", {})[task] = metrics
            print(f"{task:<14} acc {metrics['acc']:.4f}  acc_norm {metrics['acc_norm']:.4f}")
        except Exception as err:  # noqa: BLE001
            errors[task] = f"{type(err).__name__}: {err}"
        save_results()
    if len(results.get("zero_shot", {})) > 1:
        scored = results["zero_shot"]
        results["zero_shot"]["average"] = {k: sum(m[k] for m in scored.values()) / len(scored) for k in ("acc", "acc_norm")}
        save_results()
    card_results = {t: dict(m, **({"subset": f"first {m['n']} items"} if args.eval_limit and "n" in m else {}))
                    for t, m in results.get("zero_shot", {}).items() if t != "average"}
    if "wikitext2_ppl" in results:
        card_results["wikitext2"] = {"perplexity": results["wikitext2_ppl"]}
        if args.eval_max_windows:
            card_results["wikitext2"]["subset"] = (f"first {args.eval_max_windows} windows of "
                                                   f"{args.eval_seqlen or config.seqlen} tokens")
    if card_results and not args.no_save:  # the card gains a model-index; only README.md and the plot are rewritten
        from ..hub import write_hub_folder

        write_hub_folder(pruner.card_allocation(), args.output, model=args.output, eval_results=card_results,
                         license=args.license, base_model=args.base_model)
    if errors:
        for name, message in errors.items():
            print(f"evaluation {name} failed: {message}")
        print(f"The pruned model is saved in {args.output}; evaluation results so far are in eval_results.json.")
        return 1
    return 0
