"""Pruning SmolLM2-135M-Instruct (30 blocks) with per-block sparsity: uniform, OWL, AlphaPruning and LayerIF
(ε 0.1 and 0.3, and the reversed map), paired against uniform on the same calibration draw. Not a test.

LayerIF scores: a LoRA (r 8, all linears) fitted to 128 C4 documents (the protocol's default fit), validation
loss on 32 WikiText-2 validation paragraphs, DataInf, aggregation ``positive``; one score set per scoring seed
(adapter draw + fit order). Calibration: C4 documents from the local shard, one draw per calibration seed.
Evaluation: WikiText-2 test perplexity over a fixed prefix of windows, zero-shot accuracy (acc_norm) on local
task files. Every (calibration seed × scoring seed) pair is one paired difference to uniform.

    pip install -e ".[bench]"
    OMP_NUM_THREADS=2 python benchmarks/pruning_smollm2.py --quick            # one paired comparison: 152 s on 2 CPU threads
    OMP_NUM_THREADS=2 python benchmarks/pruning_smollm2.py --json results.json   # the full grid (RESULTS.md: 105 min on one shared core)

Results are appended to ``--jsonl`` as they come (a re-run skips the rows already there).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from result_rows import ResultRows  # noqa: E402
from smollm2 import load_smollm2  # noqa: E402

TASK_FILES = {"arc_easy": "ARC-Easy/test.json", "piqa": "piqa/test.json", "winogrande": "winogrande/test.json"}


def score_blocks(model, tokenizer, train, validation, seed: int, fit_steps: int, max_length: int):
    from peft import LoraConfig, get_peft_model

    from hf_layerif import compute_layer_influence

    torch.manual_seed(seed)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear"))
    scores = compute_layer_influence(peft_model, train, validation, tokenizer=tokenizer, max_length=max_length, seed=seed,
                                     fit_steps=fit_steps, fit_batch_size=4, batch_size=4, repeats=1,
                                     bootstrap_samples=0, progress=False)
    peft_model.unload()
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--quick", action="store_true", help="wanda 50%%, 1 calibration × 1 scoring seed, small eval")
    parser.add_argument("--methods", default="wanda,sparsegpt")
    parser.add_argument("--sparsities", default="0.5,0.6")
    parser.add_argument("--calibration_seeds", default="0,1,2")
    parser.add_argument("--scoring_seeds", default="0,1,2")
    parser.add_argument("--nsamples", type=int, default=64)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--eval_windows", type=int, default=32)
    parser.add_argument("--zero_shot_limit", type=int, default=200)
    parser.add_argument("--fit_steps", type=int, default=100)
    parser.add_argument("--train_samples", type=int, default=128, help="C4 documents scored per scoring seed")
    parser.add_argument("--max_length", type=int, default=256, help="tokens per scored document")
    parser.add_argument("--jsonl", default="pruning_smollm2.jsonl")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.quick:
        args.methods, args.sparsities, args.calibration_seeds, args.scoring_seeds = "wanda", "0.5", "0", "0"
        args.nsamples, args.seqlen, args.eval_windows, args.zero_shot_limit = 16, 128, 4, 20
        args.fit_steps, args.train_samples, args.max_length = 10, 32, 128
    torch.set_num_threads(max(1, torch.get_num_threads()))

    from hf_layerif.allocation import block_alpha_hill, sparsity_allocation
    from hf_layerif.allocation.owl import layerwise_outlier_distribution
    from hf_layerif.calibration import get_calibration_data
    from hf_layerif.evaluation import zero_shot
    from hf_layerif.pruning import LayerIFPruner, PruningConfig, perplexity

    shared = Path(args.shared)
    c4_rows = [json.loads(line)["text"] for line in (shared / "text/c4/c4_en_train00000_first1000.jsonl").open()]
    wiki_val = [json.loads(line)["text"] for line in (shared / "text/wikitext2_raw/validation.jsonl").open()]
    wiki_val = [t.strip() for t in wiki_val if len(t.strip()) > 200]
    wiki_test = (shared / "text/wikitext2_raw/wikitext2_raw_test_joined.txt").read_text(encoding="utf-8")
    tasks = {name: str(shared / "tasks/llm_adapters/dataset" / rel) for name, rel in TASK_FILES.items()}
    c4_file = str(shared / "text/c4/c4_en_train00000_first1000.jsonl")

    results = ResultRows(args.jsonl)
    record = results.record

    started = time.time()
    base, tokenizer = load_smollm2()
    original_state = {k: v.clone() for k, v in base.state_dict().items()}

    def fresh_model():
        base.load_state_dict(original_state)
        return base

    def evaluate(model) -> dict:
        ppl = perplexity(model, tokenizer, wiki_test, seqlen=512, max_windows=args.eval_windows)
        acc = zero_shot(model, tokenizer, tasks, limit=args.zero_shot_limit)
        return {"wikitext2_ppl": ppl, **{f"{t}_acc_norm": acc[t]["acc_norm"] for t in tasks},
                "zero_shot_mean_acc_norm": acc["average"]["acc_norm"]}

    dense_key = {"allocation": "dense"}
    if not results.has(dense_key):
        record(dense_key, evaluate(fresh_model()))
    scores = {}
    for seed in (int(s) for s in args.scoring_seeds.split(",")):
        t0 = time.time()
        n = args.train_samples
        scores[seed] = score_blocks(fresh_model(), tokenizer, c4_rows[seed * n:(seed + 1) * n], wiki_val[:n // 4],
                                    seed, args.fit_steps, args.max_length)
        print(f"scoring seed {seed}: {time.time() - t0:.0f} s; top blocks {scores[seed].ranking()[:6]}", flush=True)
    hill = block_alpha_hill(fresh_model())
    for calib in (int(s) for s in args.calibration_seeds.split(",")):
        ids = get_calibration_data(tokenizer, c4_file, args.nsamples, args.seqlen, calib)
        lod = layerwise_outlier_distribution(fresh_model(), ids, progress=False)
        for sparsity in (float(s) for s in args.sparsities.split(",")):
            allocations = {
                "uniform": sparsity_allocation(None, sparsity, model=base, method="uniform"),
                "owl": sparsity_allocation(None, sparsity, model=base, method="owl", outlier_ratios=lod),
                "alphapruning": sparsity_allocation(None, sparsity, model=base, method="alphapruning", alpha_hill=hill),
            }
            for seed, s in scores.items():
                for eps in (0.1, 0.3):
                    allocations[f"layerif_eps{eps}_s{seed}"] = sparsity_allocation(s, sparsity, epsilon=eps)
                allocations[f"layerif_reversed_eps0.3_s{seed}"] = sparsity_allocation(s, sparsity, epsilon=0.3, reverse=True)
            for method in args.methods.split(","):
                for name, allocation in allocations.items():
                    key = {"method": method, "sparsity": sparsity, "calibration_seed": calib, "allocation": name}
                    if results.has(key):
                        continue
                    t0 = time.time()
                    pruner = LayerIFPruner(fresh_model(), tokenizer)
                    pruner.prune(PruningConfig(method=method, sparsity=sparsity, nsamples=args.nsamples,
                                               seqlen=args.seqlen, seed=calib, allocation=allocation), ids, progress=False)
                    record(key, {**evaluate(pruner.model), "seconds": time.time() - t0})
    print(f"total {time.time() - started:.0f} s")
    summarize(results.path, args.json)


def sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(jsonl: Path, json_out: str | None) -> None:
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    dense = next(r for r in rows if r["key"]["allocation"] == "dense")
    print(f"\ndense: WikiText-2 ppl {dense['wikitext2_ppl']:.2f}, zero-shot acc_norm {dense['zero_shot_mean_acc_norm']:.4f}")
    table = []
    pruned = [r for r in rows if r["key"]["allocation"] != "dense"]
    for method in sorted({r["key"]["method"] for r in pruned}):
        for sparsity in sorted({r["key"]["sparsity"] for r in pruned}):
            group = [r for r in pruned if r["key"]["method"] == method and r["key"]["sparsity"] == sparsity]
            uniform = {r["key"]["calibration_seed"]: r for r in group if r["key"]["allocation"] == "uniform"}
            families: dict[str, list] = {}
            for r in group:
                family = r["key"]["allocation"].rsplit("_s", 1)[0] if r["key"]["allocation"].startswith("layerif") else r["key"]["allocation"]
                families.setdefault(family, []).append(r)
            for family, members in families.items():
                ppl = [m["wikitext2_ppl"] for m in members]
                diffs = [100 * (m["wikitext2_ppl"] / uniform[m["key"]["calibration_seed"]]["wikitext2_ppl"] - 1)
                         for m in members if m["key"]["calibration_seed"] in uniform]
                accs = [m["zero_shot_mean_acc_norm"] for m in members]
                acc_diffs = [100 * (m["zero_shot_mean_acc_norm"] - uniform[m["key"]["calibration_seed"]]["zero_shot_mean_acc_norm"])
                             for m in members if m["key"]["calibration_seed"] in uniform]
                table.append({"method": method, "sparsity": sparsity, "allocation": family, "runs": len(members),
                              "ppl": statistics.mean(ppl), "ppl_std": sd(ppl),
                              "ppl_vs_uniform_pct": statistics.mean(diffs), "ppl_vs_uniform_min": min(diffs),
                              "ppl_vs_uniform_max": max(diffs), "acc_norm": statistics.mean(accs),
                              "acc_vs_uniform_pts": statistics.mean(acc_diffs), "acc_vs_uniform_std": sd(acc_diffs),
                              "better_than_uniform": sum(d < 0 for d in diffs)})
    print("| method | sparsity | allocation | runs | WikiText-2 ppl | ppl vs uniform (paired, %) | zero-shot acc_norm | "
          "acc vs uniform (pts) | ppl better than uniform |")
    print("|---|---|---|---|---|---|---|---|---|")
    for t in table:
        print(f"| {t['method']} | {t['sparsity']:.0%} | {t['allocation']} | {t['runs']} | {t['ppl']:.2f} ± {t['ppl_std']:.2f} | "
              f"{t['ppl_vs_uniform_pct']:+.1f} [{t['ppl_vs_uniform_min']:+.1f}, {t['ppl_vs_uniform_max']:+.1f}] | "
              f"{t['acc_norm']:.4f} | {t['acc_vs_uniform_pts']:+.2f} ± {t['acc_vs_uniform_std']:.2f} | "
              f"{t['better_than_uniform']}/{t['runs']} |")
    if json_out:
        Path(json_out).write_text(json.dumps({"dense": dense, "table": table}, indent=2))


if __name__ == "__main__":
    main()
