"""The paper's pruning pipeline, for a GPU: 50% sparsity with Magnitude / Wanda / SparseGPT under uniform, OWL,
AlphaPruning and LayerIF ratios; the seven zero-shot tasks and WikiText-2 perplexity for each.

LayerIF scores come from ``--scores`` (a folder written by ``hf-layerif score``) or are computed here on
``--score_train`` / ``--score_validation`` data. Task files: ``--task_dir`` holding the LLM-Adapters ``dataset/``
folders, GLUE ``RTE/dev.tsv`` and HellaSwag's text; without it the tasks come from the Hub.

    python examples/sparsity_allocation_mistral.py --model mistralai/Mistral-7B-v0.1 --scores runs/scores \\
        --output runs/pruning
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class SparsityExampleArguments:
    model: str = field(default="mistralai/Mistral-7B-v0.1", metadata={"help": "Model to prune."})
    output: str = field(default="runs/sparsity-allocation", metadata={"help": "Output folder."})
    sparsity: float = 0.5
    methods: str = "magnitude,wanda,sparsegpt"
    allocations: str = "uniform,owl,alphapruning,layerif"
    epsilon: float = 0.3
    scores: str | None = field(default=None, metadata={"help": "LayerIF scores folder (else computed from the next two)."})
    score_train: str | None = None
    score_validation: str | None = None
    score_samples: int = 512
    fit_steps: int = 100  # steps fitting the scoring adapter before scoring (0: score it fresh)
    calibration: str = "c4"
    nsamples: int = 128
    seqlen: int = 2048
    tasks: str = "boolq,rte,hellaswag,winogrande,arc_easy,arc_challenge,openbookqa"
    task_dir: str | None = field(default=None, metadata={"help": "Folder with local task files (../shared/data/tasks)."})
    wikitext2: str | None = field(default=None, metadata={"help": "Local WikiText-2 test file (else the Hub)."})
    eval_limit: int | None = None
    eval_max_windows: int | None = None
    dtype: str = "bfloat16"
    batch_size: int = 8


LOCAL_TASK_FILES = {
    "boolq": "llm_adapters/dataset/boolq/test.json", "winogrande": "llm_adapters/dataset/winogrande/test.json",
    "arc_easy": "llm_adapters/dataset/ARC-Easy/test.json", "arc_challenge": "llm_adapters/dataset/ARC-Challenge/test.json",
    "openbookqa": "llm_adapters/dataset/openbookqa/test.json", "rte": "glue/RTE/dev.tsv",
    "hellaswag": "hellaswag/hellaswag_val_full.txt.bz2", "piqa": "llm_adapters/dataset/piqa/test.json",
}


def main(argv: list[str] | None = None) -> list[dict]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, HfArgumentParser

    from hf_layerif import LayerInfluenceScores, compute_layer_influence
    from hf_layerif.data.loading import load_any_dataset
    from hf_layerif.evaluation import zero_shot
    from hf_layerif.evaluation.perplexity import load_wikitext2_test
    from hf_layerif.pruning import LayerIFPruner, PruningConfig, perplexity

    (args,) = HfArgumentParser(SparsityExampleArguments).parse_args_into_dataclasses(
        args=sys.argv[1:] if argv is None else argv)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, args.dtype)
    tokenizer = AutoTokenizer.from_pretrained(args.model)

    def load():
        return AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).to(device).eval()

    scores = None
    if "layerif" in args.allocations:
        if args.scores:
            scores = LayerInfluenceScores.from_pretrained(args.scores)
        else:
            from peft import LoraConfig, get_peft_model

            train = load_any_dataset(args.score_train, max_samples=args.score_samples)
            validation = load_any_dataset(args.score_validation, "validation", max_samples=max(8, args.score_samples // 8))
            torch.manual_seed(0)
            scored = get_peft_model(load(), LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear"))
            scores = compute_layer_influence(scored, train, validation, tokenizer=tokenizer, max_length=512,
                                             fit_steps=args.fit_steps, output_dir=out / "scores")
        print(scores.summary_table())
    tasks = {t: (str(Path(args.task_dir) / LOCAL_TASK_FILES[t]) if args.task_dir else None)
             for t in args.tasks.split(",") if t}
    text = load_wikitext2_test(args.wikitext2)
    rows = []
    for method in args.methods.split(","):
        for allocation in args.allocations.split(","):
            pruner = LayerIFPruner(load(), tokenizer)
            config = PruningConfig(method=method, sparsity=args.sparsity, epsilon=args.epsilon, calibration=args.calibration,
                                   nsamples=args.nsamples, seqlen=args.seqlen,
                                   allocation=scores if allocation == "layerif" else allocation)
            report = pruner.prune(config)
            row = {"method": method, "allocation": allocation, "achieved": report.global_sparsity()["achieved"],
                   "seconds": report.seconds,
                   "wikitext2_ppl": perplexity(pruner.model, tokenizer, text, seqlen=args.seqlen,
                                               max_windows=args.eval_max_windows)}
            if tasks:
                results = zero_shot(pruner.model, tokenizer, tasks, limit=args.eval_limit, batch_size=args.batch_size)
                row.update({task: m["acc"] for task, m in results.items() if task != "average"})
                row["average_acc"] = results["average"]["acc"]
            rows.append(row)
            print(json.dumps(row))
            del pruner
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    header = ["method", "allocation", "wikitext2_ppl", *tasks, "average_acc"] if tasks else ["method", "allocation", "wikitext2_ppl"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(f"{row[h]:.4f}" if isinstance(row[h], float) else str(row[h]) for h in header) + " |")
    return rows


if __name__ == "__main__":
    main()
