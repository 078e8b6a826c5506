"""``allocation="auto"`` on SmolLM2-135M-Instruct (30 blocks): what selection costs, and whether its choice holds up
on evaluation data it never saw. Not a test.

Cost (``--cost``): one Wanda prune with uniform ratios against ``allocation="auto"`` over 9 candidates (uniform, OWL,
AlphaPruning, LayerIF ε 0.1/0.2/0.3 in both directions), both on the same 128 × 128-token C4 calibration, timed in one
process, alternating, with the process's peak resident memory.

Generalisation (default): LayerIF scores from two tasks (TinyStories paragraphs; ARC-Easy instruction/answer pairs),
each a LoRA (r 8, all linears) fitted to the task's training samples, DataInf, ``positive``. For each calibration
seed and sparsity, every fixed allocation (uniform, OWL, AlphaPruning, and per task LayerIF ε 0.3 in both
directions) and ``auto`` (per task, with that task's scores) are pruned with Wanda on the same calibration draw and
evaluated on WikiText-2 test perplexity — data the selection split (other C4 documents) never saw. Every auto run is
paired with uniform, OWL and the best fixed allocation of hindsight on the same calibration draw.

    python benchmarks/smollm2.py                                          # fetch and convert the model once
    OMP_NUM_THREADS=1 python benchmarks/auto_selection_smollm2.py --cost
    OMP_NUM_THREADS=1 python benchmarks/auto_selection_smollm2.py --write_results benchmarks/RESULTS.md

Rows are appended to ``--jsonl`` as they come (a re-run skips the rows already there); ``--write_results`` rewrites
the marked block of RESULTS.md from them.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from result_rows import ResultRows  # noqa: E402
from results_block import replace_block  # noqa: E402
from smollm2 import load_smollm2  # noqa: E402

BLOCK = "auto-selection"


def task_texts(shared: Path, task: str, seed: int, n_train: int, n_val: int) -> tuple[list[str], list[str]]:
    """Training and validation samples of a scoring task (disjoint, drawn with ``seed``)."""
    import random

    if task == "tinystories":
        text = (shared / "text/tinystories/tinystories_val_head.txt").read_text(encoding="utf-8")
        rows = [p.strip() for p in text.split("\n\n") if len(p.strip()) > 200 and "â€" not in p]
    elif task == "arc_easy":
        data = json.loads((shared / "tasks/llm_adapters/dataset/ARC-Easy/train.json").read_text())
        rows = [f"{r['instruction']}\n\n{r['output']}" for r in data]
    else:
        raise ValueError(task)
    rng = random.Random(seed)
    rng.shuffle(rows)
    return rows[:n_train], rows[n_train:n_train + n_val]


def score_task(model, tokenizer, shared: Path, task: str, seed: int, args):
    from peft import LoraConfig, get_peft_model

    from hf_layerif import compute_layer_influence

    train, validation = task_texts(shared, task, seed, args.train_samples, args.train_samples // 4)
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear"))
    scores = compute_layer_influence(peft_model, train, validation, tokenizer=tokenizer, max_length=args.max_length,
                                     seed=seed, fit_steps=args.fit_steps, fit_batch_size=4, batch_size=4, repeats=1,
                                     bootstrap_samples=0, progress=False)
    peft_model.unload()
    return scores


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_cost(args, model, tokenizer, scores, c4_file: str) -> None:
    from hf_layerif.pruning import LayerIFPruner, PruningConfig

    state = {k: v.clone() for k, v in model.state_dict().items()}
    common = {"method": args.cost_method, "sparsity": 0.5, "nsamples": args.cost_nsamples, "seqlen": args.seqlen,
              "calibration": c4_file}
    times: dict[str, list[float]] = {"one_prune": [], "auto": []}
    rss = {}
    record = None
    for _ in range(args.cost_repeats):
        for name, config in (("one_prune", PruningConfig(**common)),
                             ("auto", PruningConfig(**common, allocation="auto", scores=scores))):
            model.load_state_dict(state)
            started = time.time()
            report = LayerIFPruner(model, tokenizer).prune(config, progress=False)
            times[name].append(time.time() - started)
            rss[name] = peak_rss_mb()
            if name == "auto":
                record = report.extra["selection"]
    ratios = [a / b for a, b in zip(times["auto"], times["one_prune"])]
    result = {"method": args.cost_method, "nsamples": args.cost_nsamples, "seqlen": args.seqlen,
              "candidates": len(record["candidates"]), "screen_nsamples": record["screen_nsamples"],
              "selection_nsamples": record["split"]["nsamples"], "one_prune_s": times["one_prune"],
              "auto_s": times["auto"], "ratio": ratios, "peak_rss_mb_after_one_prune": rss["one_prune"],
              "peak_rss_mb_after_auto": rss["auto"], "chosen": record["chosen"]}
    print(json.dumps(result, indent=1))
    Path(args.cost_json).write_text(json.dumps(result, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--cost", action="store_true", help="time auto against one prune instead of the grid")
    parser.add_argument("--cost_method", default="wanda")
    parser.add_argument("--cost_nsamples", type=int, default=128)
    parser.add_argument("--cost_repeats", type=int, default=2)
    parser.add_argument("--cost_json", default="benchmarks/figures/auto_selection_cost.json")
    parser.add_argument("--tasks", default="tinystories,arc_easy")
    parser.add_argument("--scoring_seed", type=int, default=0)
    parser.add_argument("--methods", default="wanda")
    parser.add_argument("--sparsities", default="0.5,0.6")
    parser.add_argument("--calibration_seeds", default="0,1,2")
    parser.add_argument("--nsamples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=128)
    parser.add_argument("--selection_nsamples", type=int, default=8)
    parser.add_argument("--screen_fraction", type=float, default=0.25)
    parser.add_argument("--eval_windows", type=int, default=16)
    parser.add_argument("--fit_steps", type=int, default=20)
    parser.add_argument("--train_samples", type=int, default=48)
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--jsonl", default="benchmarks/figures/auto_selection_smollm2.jsonl")
    parser.add_argument("--write_results", default=None, help="RESULTS.md whose marked block is rewritten")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    from hf_layerif.allocation import block_alpha_hill, sparsity_allocation
    from hf_layerif.allocation.owl import layerwise_outlier_distribution
    from hf_layerif.calibration import get_calibration_data
    from hf_layerif.pruning import LayerIFPruner, PruningConfig, perplexity

    shared = Path(args.shared)
    c4_file = str(shared / "text/c4/c4_en_train00000_first1000.jsonl")
    wiki_test = (shared / "text/wikitext2_raw/wikitext2_raw_test_joined.txt").read_text(encoding="utf-8")
    base, tokenizer = load_smollm2()
    original = {k: v.clone() for k, v in base.state_dict().items()}

    def fresh():
        base.load_state_dict(original)
        return base

    tasks = args.tasks.split(",")
    scores = {}
    for task in tasks:
        started = time.time()
        scores[task] = score_task(fresh(), tokenizer, shared, task, args.scoring_seed, args)
        print(f"scores {task}: {time.time() - started:.0f} s; ranking {scores[task].ranking()[:8]}", flush=True)
    if args.cost:
        run_cost(args, fresh(), tokenizer, scores[tasks[0]], c4_file)
        return

    results = ResultRows(args.jsonl)
    hill = block_alpha_hill(fresh())
    for calib in (int(s) for s in args.calibration_seeds.split(",")):
        ids = get_calibration_data(tokenizer, c4_file, args.nsamples, args.seqlen, calib)
        lod = layerwise_outlier_distribution(fresh(), ids, progress=False)
        for sparsity in (float(s) for s in args.sparsities.split(",")):
            fixed = {"uniform": sparsity_allocation(None, sparsity, model=base, method="uniform"),
                     "owl": sparsity_allocation(None, sparsity, model=base, method="owl", outlier_ratios=lod),
                     "alphapruning": sparsity_allocation(None, sparsity, model=base, method="alphapruning",
                                                         alpha_hill=hill)}
            for task in tasks:
                fixed[f"layerif_{task}"] = sparsity_allocation(scores[task], sparsity, epsilon=0.3)
                fixed[f"layerif_reversed_{task}"] = sparsity_allocation(scores[task], sparsity, epsilon=0.3, reverse=True)
            for method in args.methods.split(","):
                common = {"method": method, "sparsity": sparsity, "nsamples": args.nsamples, "seqlen": args.seqlen,
                          "seed": calib, "calibration": c4_file}
                for name, allocation in fixed.items():
                    key = {"method": method, "sparsity": sparsity, "calibration_seed": calib, "allocation": name}
                    if results.has(key):
                        continue
                    pruner = LayerIFPruner(fresh(), tokenizer)
                    pruner.prune(PruningConfig(**common, allocation=allocation), ids, progress=False)
                    results.record(key, {"wikitext2_ppl": perplexity(pruner.model, tokenizer, wiki_test, seqlen=512,
                                                                     max_windows=args.eval_windows)})
                for task in tasks:
                    key = {"method": method, "sparsity": sparsity, "calibration_seed": calib, "allocation": f"auto_{task}"}
                    if results.has(key):
                        continue
                    started = time.time()
                    pruner = LayerIFPruner(fresh(), tokenizer)
                    report = pruner.prune(PruningConfig(**common, allocation="auto", scores=scores[task],
                                                        selection_nsamples=args.selection_nsamples,
                                                        screen_fraction=args.screen_fraction), progress=False)
                    record = report.extra["selection"]
                    results.record(key, {"wikitext2_ppl": perplexity(pruner.model, tokenizer, wiki_test, seqlen=512,
                                                                     max_windows=args.eval_windows),
                                         "chosen": record["chosen"], "chosen_loss": record["chosen_loss"],
                                         "uniform_loss": record["uniform_loss"], "seconds": time.time() - started})
    table = summarize(results.rows(), tasks)
    print(table)
    if args.write_results:
        replace_block(args.write_results, BLOCK, table)


def summarize(rows: list[dict], tasks: list[str]) -> str:
    """Markdown: per (method, sparsity), auto's WikiText-2 perplexity paired against uniform, OWL and the best fixed
    allocation of hindsight on the same calibration draw (mean % difference, range, wins)."""
    lines = ["| method | sparsity | scores from | runs | auto chose | auto ppl | vs uniform (%, paired) | "
             "vs OWL (%) | vs best fixed of hindsight (%) | auto ≤ uniform |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    cells = sorted({(r["key"]["method"], r["key"]["sparsity"]) for r in rows})
    for method, sparsity in cells:
        group = [r for r in rows if r["key"]["method"] == method and r["key"]["sparsity"] == sparsity]
        by_seed: dict[int, dict[str, dict]] = {}
        for r in group:
            by_seed.setdefault(r["key"]["calibration_seed"], {})[r["key"]["allocation"]] = r
        for task in tasks:
            diffs = {"uniform": [], "owl": [], "best": []}
            chosen, ppl = [], []
            for _, runs in sorted(by_seed.items()):
                auto = runs.get(f"auto_{task}")
                if auto is None or "uniform" not in runs or "owl" not in runs:
                    continue
                fixed = {k: v["wikitext2_ppl"] for k, v in runs.items() if not k.startswith("auto_")}
                ppl.append(auto["wikitext2_ppl"])
                chosen.append(auto["chosen"])
                diffs["uniform"].append(100 * (auto["wikitext2_ppl"] / fixed["uniform"] - 1))
                diffs["owl"].append(100 * (auto["wikitext2_ppl"] / fixed["owl"] - 1))
                diffs["best"].append(100 * (auto["wikitext2_ppl"] / min(fixed.values()) - 1))
            if not ppl:
                continue

            def fmt(values: list[float]) -> str:
                return f"{statistics.mean(values):+.1f} [{min(values):+.1f}, {max(values):+.1f}]"

            picks = ", ".join(f"{c} ×{chosen.count(c)}" for c in dict.fromkeys(chosen))
            lines.append(f"| {method} | {sparsity:.0%} | {task} | {len(ppl)} | {picks} | {statistics.mean(ppl):.2f} | "
                         f"{fmt(diffs['uniform'])} | {fmt(diffs['owl'])} | {fmt(diffs['best'])} | "
                         f"{sum(d <= 0 for d in diffs['uniform'])}/{len(ppl)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
