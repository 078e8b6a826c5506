"""LoRA-MoE expert allocation on SmolLM2-135M-Instruct (30 blocks): uniform, MoLA-2468, AlphaLoRA and LayerIF at
equal total experts, fine-tuned on tasks from the shared data, paired per seed. Not a test.

Total experts: MoLA's "2468" pattern on 30 blocks (groups of 7, 7, 7 and 9 blocks: 156 experts); every other
allocation spreads the same 156. Per seed s: LayerIF scores from a LoRA (r 8, all linears) fitted ``--fit_steps``
to the task's training rows with seed s, DataInf, aggregation ``positive``; then each allocation's LoRA-MoE (r 8,
alpha 16, top-2, dropout 0.05) is fine-tuned from the same seed s (router and expert initialisation, data order)
with ``LayerInfluenceTrainer``, and scored on the first ``--eval_items`` test items by log-likelihood ranking of
the candidate answers (acc). Paired: each allocation against uniform with the same seed.

    pip install -e ".[bench]"
    OMP_NUM_THREADS=1 python benchmarks/experts_smollm2.py --quick      # one task, one seed: 6 min on one core
    OMP_NUM_THREADS=1 python benchmarks/experts_smollm2.py --jsonl experts.jsonl   # RESULTS.md: 98 min, one core

Results are appended to ``--jsonl`` as they come (a re-run skips the rows already there).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "examples"))
from result_rows import ResultRows  # noqa: E402
from smollm2 import load_smollm2  # noqa: E402
from task_data import load_finetune_task  # noqa: E402

# task -> (training file, test file), relative to the shared data folder
TASK_FILES = {
    "cola": ("tasks/glue/CoLA/raw/in_domain_train.tsv", "tasks/glue/CoLA/raw/in_domain_dev.tsv"),
    "mrpc": ("tasks/glue/MRPC/train.tsv", "tasks/glue/MRPC/dev.tsv"),
    "openbookqa": ("tasks/llm_adapters/dataset/openbookqa/train.json", "tasks/llm_adapters/dataset/openbookqa/test.json"),
    "arc_easy": ("tasks/llm_adapters/dataset/ARC-Easy/train.json", "tasks/llm_adapters/dataset/ARC-Easy/test.json"),
}
ALLOCATIONS = ("uniform", "2468", "alphalora", "layerif")


def layerif_scores(model, tokenizer, train, validation, seed: int, fit_steps: int, batch_size: int):
    from peft import LoraConfig, get_peft_model

    from hf_layerif import compute_layer_influence

    torch.manual_seed(seed)
    scored = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear"))
    scores = compute_layer_influence(scored, train, validation, tokenizer=tokenizer, seed=seed, fit_steps=fit_steps,
                                     fit_batch_size=batch_size, batch_size=batch_size, repeats=1,
                                     bootstrap_samples=0, progress=False)
    scored.unload()
    return scores


def finetune_and_score(model, tokenizer, allocation, train, items, seed: int, args) -> dict:
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import TrainingArguments

    from hf_layerif import LayerInfluenceTrainer
    from hf_layerif.data import InfluenceCollator
    from hf_layerif.evaluation import evaluate_multiple_choice

    torch.manual_seed(seed)
    moe = get_peft_model(model, allocation.to_peft_config(r=8, lora_alpha=16, top_k=2, lora_dropout=0.05,
                                                         task_type="CAUSAL_LM"))
    with tempfile.TemporaryDirectory() as scratch:
        training_args = TrainingArguments(output_dir=scratch, learning_rate=args.learning_rate, max_steps=args.steps,
                                          per_device_train_batch_size=args.batch_size, warmup_steps=args.steps // 10,
                                          logging_steps=max(1, args.steps // 4), save_strategy="no", report_to=[],
                                          seed=seed, use_cpu=True, disable_tqdm=True)
        trainer = LayerInfluenceTrainer(model=moe, args=training_args, train_dataset=Dataset.from_list(train),
                                        data_collator=InfluenceCollator(tokenizer.pad_token_id))
        t0 = time.time()
        train_loss = trainer.train().training_loss
        seconds = time.time() - t0
    metrics = evaluate_multiple_choice(moe, tokenizer, items, batch_size=16)
    moe.unload()  # the base weights were never changed; the adapter goes
    return {"acc": metrics["acc"], "acc_norm": metrics["acc_norm"], "n": metrics["n"], "train_loss": train_loss,
            "train_seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", default=str(HERE.parents[1] / "shared" / "data"))
    parser.add_argument("--quick", action="store_true", help="arc_easy, seed 0, 10 steps, 40 test items")
    parser.add_argument("--tasks", default="arc_easy,openbookqa")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--allocations", default=",".join(ALLOCATIONS))
    parser.add_argument("--train_rows", type=int, default=320, help="training rows per task (a fixed prefix)")
    parser.add_argument("--steps", type=int, default=40, help="fine-tuning steps per LoRA-MoE")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--fit_steps", type=int, default=20, help="steps fitting the scoring LoRA before scoring")
    parser.add_argument("--score_train", type=int, default=64, help="training rows scored")
    parser.add_argument("--score_validation", type=int, default=16, help="validation rows (held out of the scored ones)")
    parser.add_argument("--eval_items", type=int, default=100)
    parser.add_argument("--jsonl", default="experts_smollm2.jsonl")
    parser.add_argument("--plots", default=str(HERE / "figures"))
    args = parser.parse_args()
    if args.quick:
        args.tasks, args.seeds, args.steps, args.eval_items = "arc_easy", "0", 10, 40
        args.fit_steps, args.score_train, args.score_validation, args.train_rows = 4, 16, 8, 80

    from hf_layerif.allocation import block_alpha_hill, expert_allocation, plot_allocations
    from hf_layerif.data import prepare_examples

    shared = Path(args.shared)
    results = ResultRows(args.jsonl)
    record = results.record

    started = time.time()
    base, tokenizer = load_smollm2()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    total = sum(expert_allocation(None, None, model=base, method="2468").values)
    hill = block_alpha_hill(base)
    for task in args.tasks.split(","):
        train_file, test_file = (str(shared / rel) for rel in TASK_FILES[task])
        rows, _ = load_finetune_task(task, train_file)
        _, items = load_finetune_task(task, test_file)
        items = items[: args.eval_items]
        train = prepare_examples(rows[: args.train_rows], tokenizer, args.max_length, name=f"{task} train")
        majority = max(sum(i.gold == k for i in items) for k in range(max(len(i.choices) for i in items))) / len(items)
        key = {"task": task, "allocation": "base (no fine-tune)"}
        if not results.has(key):
            from hf_layerif.evaluation import evaluate_multiple_choice

            record(key, {**evaluate_multiple_choice(base, tokenizer, items, batch_size=16), "majority_class": majority})
        for seed in (int(s) for s in args.seeds.split(",")):
            wanted = [a for a in args.allocations.split(",")
                      if not results.has({"task": task, "seed": seed, "allocation": a})]
            if not wanted:
                continue
            allocations = {"uniform": expert_allocation(None, total, model=base, method="uniform"),
                           "2468": expert_allocation(None, total, model=base, method="2468"),
                           "alphalora": expert_allocation(None, total, model=base, method="alphalora", alpha_hill=hill)}
            if "layerif" in wanted:
                t0 = time.time()
                validation = train[: args.score_validation]
                scored = train[args.score_validation: args.score_validation + args.score_train]
                scores = layerif_scores(base, tokenizer, scored, validation, seed, args.fit_steps, args.batch_size)
                allocations["layerif"] = expert_allocation(scores, total)
                print(f"{task} seed {seed}: scored in {time.time() - t0:.0f} s; experts {allocations['layerif'].values}",
                      flush=True)
                if seed == 0 and args.plots:
                    names = list(ALLOCATIONS)
                    plot_allocations([allocations[n] for n in names], Path(args.plots) / f"experts_smollm2_{task}.png",
                                     labels=names, title=f"SmolLM2-135M experts per block ({task}, {total} experts)")
            for name in wanted:
                t0 = time.time()
                result = finetune_and_score(base, tokenizer, allocations[name], train, items, seed, args)
                record({"task": task, "seed": seed, "allocation": name},
                       {**result, "experts": allocations[name].values, "seconds": time.time() - t0})
    print(f"total {time.time() - started:.0f} s")
    summarize(results.path)


def summarize(jsonl: Path) -> None:
    """Markdown table: accuracy per task and allocation, and the paired difference to uniform (same seed)."""
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    print("| task | allocation | seeds | acc (mean ± sd) | acc vs uniform (paired, pts) | better / worse than uniform |")
    print("|---|---|---|---|---|---|")
    for task in dict.fromkeys(r["key"]["task"] for r in rows):
        base = next((r for r in rows if r["key"] == {"task": task, "allocation": "base (no fine-tune)"}), None)
        if base:
            print(f"| {task} | base, no fine-tune (majority class {base['majority_class']:.3f}) | – | {base['acc']:.3f} | – | – |")
        runs = [r for r in rows if r["key"]["task"] == task and "seed" in r["key"]]
        uniform = {r["key"]["seed"]: r["acc"] for r in runs if r["key"]["allocation"] == "uniform"}
        for name in dict.fromkeys(r["key"]["allocation"] for r in runs):
            members = [r for r in runs if r["key"]["allocation"] == name]
            accs = [m["acc"] for m in members]
            diffs = [100 * (m["acc"] - uniform[m["key"]["seed"]]) for m in members if m["key"]["seed"] in uniform]
            spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
            diff = (f"{statistics.mean(diffs):+.2f} [{min(diffs):+.2f}, {max(diffs):+.2f}]" if diffs else "–")
            print(f"| {task} | {name} | {len(members)} | {statistics.mean(accs):.3f} ± {spread:.3f} | {diff} | "
                  f"{sum(d > 0 for d in diffs)} / {sum(d < 0 for d in diffs)} |")


if __name__ == "__main__":
    main()
