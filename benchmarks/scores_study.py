"""How each scoring-protocol choice moves the block scores: depth profile, agreement across seeds and with exact.
Not a test.

For every protocol choice (one change from the baseline at a time) and every (task, seed), the scores of one run
(one adapter draw, fitted as the choice says) are summarised by: Spearman of the block scores with the block index
(> 0: scores rise with depth, the shape of the authors' released Mistral-7B / Gemma-7B scores), the rank of block 0
(1 = highest score), the pairwise Spearman of the block rankings across seeds (same task), and, where the exact
estimator runs on the same gradients, Spearman with exact. Tasks chosen to differ: TinyStories paragraphs and
ARC-Easy instruction/answer pairs. The second table is the stability of the full default protocol (fitted adapter,
3 draws) across 4 seeds as the number of training samples grows, with its cost on this CPU.

    OMP_NUM_THREADS=1 python benchmarks/scores_study.py --write_results docs/FIDELITY.md          # stories260K
    OMP_NUM_THREADS=1 python benchmarks/scores_study.py --model smollm2 --write_results docs/FIDELITY.md
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from result_rows import ResultRows  # noqa: E402
from results_block import replace_block  # noqa: E402

# one change from the baseline at a time: name -> (influence options, LoRA target modules)
CHOICES = {
    "baseline (fitted, all-linear, block λ, factor 0.1, datainf, positive)": ({}, "all-linear"),
    "granularity=tensor (DataInf's per-tensor λ)": ({"granularity": "tensor"}, "all-linear"),
    "LoRA on q,v only (DataInf's setting)": ({}, "q_proj,v_proj"),
    "fit_steps=0 (fresh adapter)": ({"fit_steps": 0}, "all-linear"),
    "fit_steps=100": ({"fit_steps": 100}, "all-linear"),
    "fit_steps=300": ({"fit_steps": 300}, "all-linear"),
    "loss_reduction=sum (per-sample NLL)": ({"loss_reduction": "sum"}, "all-linear"),
    "max_length=48 (shorter samples)": ({"max_length": 48}, "all-linear"),
    "damping_factor=1e4 (ρ ≈ d / 10⁴)": ({"damping_factor": 1e4}, "all-linear"),
    "estimator=tracin (no Hessian)": ({"estimator": "tracin"}, "all-linear"),
    "estimator=exact": ({"estimator": "exact"}, "all-linear"),
}
AGGREGATIONS = ("positive", "harmful", "all", "top_fraction")


def task_texts(shared: Path, task: str, seed: int, n_train: int, n_val: int) -> tuple[list[str], list[str]]:
    import random

    if task == "tinystories":
        text = (shared / "text/tinystories/tinystories_val_head.txt").read_text(encoding="utf-8")
        rows = [p.strip() for p in text.split("\n\n") if len(p.strip()) > 100 and "â€" not in p]
    else:
        data = json.loads((shared / "tasks/llm_adapters/dataset/ARC-Easy/train.json").read_text())
        rows = [f"{r['instruction']}\n\n{r['output']}" for r in data]
    rng = random.Random(seed)
    rng.shuffle(rows)
    return rows[:n_train], rows[n_train:n_train + n_val]


def load(name: str, shared: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name == "smollm2":
        from smollm2 import load_smollm2

        return load_smollm2()
    folder = shared / "models" / "stories260K"
    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


def spearman_with_depth(scores: list[float]) -> float:
    from hf_layerif.influence.stability import spearman

    return spearman(scores, list(range(len(scores))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--model", default="stories260k", choices=("stories260k", "smollm2"))
    parser.add_argument("--tasks", default="tinystories,arc_easy")
    parser.add_argument("--seeds", default="0,1,2", help="seeds of the protocol-choice rows ('' for none)")
    parser.add_argument("--train_samples", type=int, default=None,
                        help="training samples per run (default: 64 on stories260K, 48 on SmolLM2)")
    parser.add_argument("--fit_steps", type=int, default=None,
                        help="fit steps of the baseline (default: 30 on stories260K, 20 on SmolLM2)")
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--stability_samples", default="48,96,192")
    parser.add_argument("--stability_seeds", default="0,1,2,3")
    parser.add_argument("--stability_fit_steps", type=int, default=None,
                        help="fit steps of the stability runs (default: the CLI's default, 100)")
    parser.add_argument("--stability_task", default="tinystories", help="task of the stability runs")
    parser.add_argument("--stability_validation", type=int, default=32, help="validation samples per stability run")
    parser.add_argument("--stability_repeats", default="3",
                        help="adapter draws averaged per run in the stability part (3: the CLI's default)")
    parser.add_argument("--choices", default=None,
                        help="';'-separated beginnings of the protocol choices to run (default: all)")
    parser.add_argument("--wanda", action="store_true",
                        help="prune with Wanda 50%% for every recorded protocol-choice row (LayerIF map, ε 0.3) and "
                             "for uniform, all in one block-by-block pass, scored on WikiText-2")
    parser.add_argument("--jsonl", default=None)
    parser.add_argument("--write_results", default=None, nargs="*")
    parser.add_argument("--summarize_only", action="store_true")
    parser.add_argument("--save_scores", default=None,
                        help="also save each stability run's scores (save_pretrained) under this folder, one "
                             "subfolder per run, for analysis after the run")
    args = parser.parse_args()
    # one protocol per model's table: every row of a table was made with these (recorded in each row)
    small = args.model == "stories260k"
    args.train_samples = args.train_samples or (64 if small else 48)
    args.fit_steps = args.fit_steps if args.fit_steps is not None else (30 if small else 20)
    jsonl = args.jsonl or f"benchmarks/figures/scores_study_{args.model}.jsonl"
    if args.wanda:
        run_wanda(args, jsonl)
    elif not args.summarize_only:
        run(args, jsonl)
    rows = ResultRows(jsonl).rows()
    for path in args.write_results or []:
        replace_block(path, f"scores-study-{args.model}", summarize(rows))
        if any(r["key"]["part"] == "stability" for r in rows):
            replace_block(path, f"scores-stability-{args.model}", summarize_stability(rows))
    print(summarize(rows))
    print(summarize_stability(rows))


def run(args, jsonl: str) -> None:
    from peft import LoraConfig, get_peft_model

    from hf_layerif import compute_layer_influence

    torch.set_num_threads(1)
    shared = Path(args.shared)
    results = ResultRows(jsonl)
    base, tokenizer = load(args.model, shared)
    original = {k: v.clone() for k, v in base.state_dict().items()}
    common = dict(tokenizer=tokenizer, max_length=args.max_length, repeats=1, bootstrap_samples=0, progress=False,
                  batch_size=8, fit_batch_size=8)
    # seeds outermost: an interrupted run still has every choice on both tasks for the first seeds
    for seed, task in itertools.product((int(s) for s in args.seeds.split(",") if s), args.tasks.split(",")):
        train, validation = task_texts(shared, task, seed, args.train_samples, args.train_samples // 4)
        for choice, (options, targets) in CHOICES.items():
            if args.choices and not any(choice.startswith(c) for c in args.choices.split(";")):
                continue
            key = {"part": "choices", "choice": choice, "task": task, "seed": seed}
            if results.has(key):
                continue
            base.load_state_dict(original)
            torch.manual_seed(seed)
            model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                                    target_modules=targets.split(",") if "," in targets else targets))
            started = time.time()
            scores = compute_layer_influence(model, train, validation, seed=seed,
                                             **{**common, "fit_steps": args.fit_steps, **options})
            model.unload()
            results.record(key, {"scores": {a: scores.block_scores(a).tolist() for a in AGGREGATIONS},
                                 "train_samples": args.train_samples, "baseline_fit_steps": args.fit_steps,
                                 "max_rho": max(scores.estimator.get("curvature_ratio") or [float("nan")]),
                                 "seconds": time.time() - started})
    for repeats, n, seed in itertools.product((int(r) for r in args.stability_repeats.split(",")),
                                              (int(s) for s in args.stability_samples.split(",") if s),
                                              (int(s) for s in args.stability_seeds.split(","))):
        key = {"part": "stability", "n": n, "seed": seed, "repeats": repeats}
        if args.stability_fit_steps is not None:
            key["fit_steps"] = args.stability_fit_steps
        if args.stability_task != "tinystories":
            key["task"] = args.stability_task
        if args.stability_validation != 32:
            key["validation"] = args.stability_validation
        # rows before it: "validation_halves" (one split of the validation samples into contiguous halves), and
        # before that no validation term; summarize_stability tables one-split and parts rows apart
        key["report"] = "validation_parts"
        if results.has(key):
            continue
        train, validation = task_texts(shared, args.stability_task, seed, n, args.stability_validation)
        base.load_state_dict(original)
        torch.manual_seed(seed)
        model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear"))
        started = time.time()
        # the CLI's defaults (fit 100 steps, bootstrap 200), with ``repeats`` draws averaged
        scores = compute_layer_influence(model, train, validation, tokenizer=tokenizer, max_length=args.max_length,
                                         seed=seed, repeats=repeats, progress=False, batch_size=8,
                                         fit_steps=args.stability_fit_steps)
        seconds = time.time() - started
        model.unload()
        if args.save_scores:
            scores.save_pretrained(Path(args.save_scores) / "_".join(f"{k}-{v}" for k, v in key.items()))
        info = scores.stability()
        results.record(key, {"scores": scores.block_scores().tolist(), "seconds": seconds,
                             "fit_steps": scores.arguments["fit_steps"], "draws": scores.provenance["protocol"]["draws"],
                             "draw_agreement": (info.get("repeats") or {}).get("pairwise_spearman_mean"),
                             "bootstrap_agreement": (info.get("bootstrap") or {}).get("pairwise_spearman_mean"),
                             "validation_split_half": (info.get("validation") or {}).get("split_half_spearman"),
                             "validation_split_range": (info.get("validation") or {}).get("split_half_spearman_range"),
                             "validation_parts": (info.get("validation") or {}).get("parts"),
                             "predicted": (info.get("reproducibility") or {}).get("predicted_spearman"),
                             "called_stable": (info.get("reproducibility") or {}).get("stable")})


def run_wanda(args, jsonl: str) -> None:
    """Wanda 50% with each choice row's allocation (LayerIF's map: more sparsity to a larger ``positive`` score,
    ε 0.3) and with uniform ratios, on one calibration draw (16 × 128 C4 tokens, seed 0), all candidates pruned in
    one block-by-block pass (:func:`~hf_layerif.pruning.inflight.prune_in_flight`, which prunes each exactly as a
    prune on its own would) and scored on the first 16 windows × 512 tokens of WikiText-2 test. Paired: every
    allocation against uniform on the same calibration and the same windows."""
    import math

    from hf_layerif.allocation import sparsity_allocation
    from hf_layerif.calibration import get_calibration_data
    from hf_layerif.models.blocks import find_transformer_blocks
    from hf_layerif.pruning import PruningConfig
    from hf_layerif.pruning.inflight import prune_in_flight
    from hf_layerif.pruning.methods import pruning_method

    torch.set_num_threads(1)
    shared = Path(args.shared)
    results = ResultRows(jsonl)
    model, tokenizer = load(args.model, shared)
    c4 = str(shared / "text/c4/c4_en_train00000_first1000.jsonl")
    config = PruningConfig(method="wanda", sparsity=0.5, nsamples=16, seqlen=128, seed=0, calibration=c4)
    todo = {}
    for row in results.rows():
        key = {**row["key"], "part": "wanda"}
        if row["key"]["part"] == "choices" and not results.has(key):
            todo[json.dumps(key, sort_keys=True)] = sparsity_allocation(
                row["scores"]["positive"], 0.5, model=model, epsilon=0.3).values
    if not todo:
        return
    uniform_key = {"part": "wanda", "choice": "uniform", "calibration_seed": 0, "batch": len(results.rows())}
    wiki = (shared / "text/wikitext2_raw/wikitext2_raw_test_joined.txt").read_text(encoding="utf-8")
    ids = tokenizer(wiki, return_tensors="pt").input_ids.reshape(-1)
    windows = ids[: 16 * 512].view(16, 512)
    calibration = get_calibration_data(tokenizer, c4, 16, 128, 0)
    blocks = find_transformer_blocks(model)
    ratio_sets = [[0.5] * len(blocks)] + list(todo.values())
    started = time.time()
    out = prune_in_flight(model, blocks, pruning_method("wanda"), config, ratio_sets, calibration, windows,
                          progress=True, desc=f"{len(ratio_sets)} allocations")
    print(f"{len(ratio_sets)} allocations in one pass: {time.time() - started:.0f} s", flush=True)
    uniform_ppl = math.exp(out[0].loss)
    results.record(uniform_key, {"wikitext2_ppl": uniform_ppl})
    for key, result in zip(todo, out[1:]):
        results.record(json.loads(key), {"wikitext2_ppl": math.exp(result.loss), "uniform_ppl": uniform_ppl,
                                         "ratios": result.ratios})


def _pairwise(vectors: list[list[float]]) -> list[float]:
    from hf_layerif.influence.stability import spearman

    return [spearman(a, b) for a, b in itertools.combinations(vectors, 2)]


def summarize(rows: list[dict]) -> str:
    from hf_layerif.influence.stability import spearman

    all_rows = rows
    rows = [r for r in rows if r["key"]["part"] == "choices"]
    exact = {(r["key"]["task"], r["key"]["seed"]): r["scores"]["positive"] for r in rows
             if r["key"]["choice"] == "estimator=exact"}
    wanda = {(r["key"]["choice"], r["key"]["task"], r["key"]["seed"]): r["wikitext2_ppl"] / r["uniform_ppl"] - 1
             for r in all_rows if r["key"]["part"] == "wanda" and "uniform_ppl" in r}
    lines = ["| protocol choice | aggregation | Spearman with block index (mean [min, max]) | block-0 rank (mean) | "
             "pairwise Spearman across seeds (mean) | Spearman with exact (mean) | max ρ | "
             "Wanda 50% vs uniform: mean [min, max] (wins/runs) |",
             "|---|---|---|---|---|---|---|---|"]
    for choice in dict.fromkeys(r["key"]["choice"] for r in rows):
        group = [r for r in rows if r["key"]["choice"] == choice]
        for aggregation in (AGGREGATIONS if choice.startswith("baseline") else ("positive",)):
            depth = [spearman_with_depth(r["scores"][aggregation]) for r in group]
            block0 = [1 + sorted(r["scores"][aggregation], reverse=True).index(r["scores"][aggregation][0]) for r in group]
            seeds = []
            for task in dict.fromkeys(r["key"]["task"] for r in group):
                seeds += _pairwise([r["scores"][aggregation] for r in group if r["key"]["task"] == task])
            with_exact = [spearman(r["scores"][aggregation], exact[(r["key"]["task"], r["key"]["seed"])])
                          for r in group if (r["key"]["task"], r["key"]["seed"]) in exact]
            paired = [wanda[k] for k in ((choice, r["key"]["task"], r["key"]["seed"]) for r in group) if k in wanda]
            wanda_text = (f"{100 * statistics.mean(paired):+.1f}% [{100 * min(paired):+.1f}, {100 * max(paired):+.1f}] "
                          f"({sum(p < 0 for p in paired)}/{len(paired)})" if paired and aggregation == "positive" else "-")
            lines.append(f"| {choice} | {aggregation} | {statistics.mean(depth):+.2f} [{min(depth):+.2f}, {max(depth):+.2f}] | "
                         f"{statistics.mean(block0):.1f} | {_mean_text(seeds)} | "
                         f"{_mean_text(with_exact)} | {max(r['max_rho'] for r in group):.3g} | {wanda_text} |")
    return "\n".join(lines)


def _mean_text(values: list[float]) -> str:
    return f"{statistics.mean(values):.2f}" if values else "-"


def _same_validation_prediction(row: dict) -> float | None:
    """What a row's report predicts for runs that share its validation samples (r_k + s − 1), from its figures."""
    from hf_layerif.influence.stability import predicted_reproducibility

    return predicted_reproducibility(row.get("draw_agreement"), row.get("draws") or 1, row.get("bootstrap_agreement"))


def _verdict(row: dict) -> str:
    """The verdict the package's report gives a row's figures (LayerInfluenceScores.stability): "stable",
    "uncertain" (within one standard error of 0.8) or "unstable"."""
    from hf_layerif.influence.stability import (
        predicted_reproducibility,
        reproducibility_standard_error,
        reproducibility_verdict,
    )

    figures = (row.get("draw_agreement"), row.get("draws") or 1, row.get("bootstrap_agreement"),
               row.get("validation_split_half"))
    return reproducibility_verdict(predicted_reproducibility(*figures),
                                   reproducibility_standard_error(*figures, len(row["scores"])))


def summarize_stability(rows: list[dict]) -> str:
    """Per (task, fit steps, draws averaged, training and validation samples): the Spearman between the rankings of
    runs with different seeds (every seed run, whichever report it carries: the scores are the protocol's); what
    each run's own report predicted for runs sharing its validation samples (r_k + s − 1) and, for runs that formed
    the validation halves, for runs with new validation samples (+ u − 1, METHOD §9); how many runs the report calls
    unstable and uncertain (:func:`_verdict`, the package's current rule applied to each row's figures); the cost of
    one run. A seed run both before and with the validation halves counts once (the later row); a run again with the
    validation parts (q averaged over every balanced split) has a line of its own, its report in "q from"."""
    rows = [r for r in rows if r["key"]["part"] == "stability" and "predicted" in r]
    latest: dict[str, dict] = {}
    for r in rows:
        key = {k: v for k, v in r["key"].items() if k != "report"}
        key["report"] = "parts" if r["key"].get("report") == "validation_parts" else "halves"
        latest[json.dumps(key, sort_keys=True)] = r
    rows = list(latest.values())
    lines = ["| task | fit steps | draws averaged | training samples | validation samples | runs | q from | "
             "pairwise Spearman across seeds mean [min] (seeds) | predicted, same validation: mean [min] | "
             "predicted, new validation: mean [min] (runs) | runs called unstable / uncertain | seconds per run (median) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def setting(r: dict) -> tuple:
        return (r["key"].get("task", "tinystories"), r["fit_steps"], r["key"]["repeats"], r["key"]["n"],
                r["key"].get("validation", 32))

    def q_from(group: list[dict]) -> str:
        parts = {r.get("validation_parts") for r in group if r.get("validation_split_half") is not None}
        return "—" if not parts else " / ".join(f"{p} parts" if p else "one split" for p in sorted(parts, key=bool))

    def fmt(values: list[float]) -> str:
        return f"{statistics.mean(values):.2f} [{min(values):.2f}]" if values else "—"

    for cell in sorted({setting(r) for r in rows}):
        runs = [r for r in rows if setting(r) == cell]
        by_seed = {r["key"]["seed"]: r for r in sorted(runs, key=lambda r: bool(r.get("validation_parts")))}
        pairs = _pairwise([r["scores"] for r in by_seed.values()])
        for parts in sorted({r.get("validation_parts") or 0 for r in runs}):
            group = [r for r in runs if (r.get("validation_parts") or 0) == parts]
            same = [p for p in (_same_validation_prediction(r) for r in group) if p is not None]
            new = [r["predicted"] for r in group if r.get("validation_split_half") is not None]
            if pairs and same:
                lines.append(f"| {' | '.join(str(x) for x in cell)} | {len(group)} | {q_from(group)} | "
                             f"{fmt(pairs)} ({len(by_seed)}) | {fmt(same)} | {fmt(new)}{f' ({len(new)})' if new else ''} | "
                             f"{sum(_verdict(r) == 'unstable' for r in group)} / "
                             f"{sum(_verdict(r) == 'uncertain' for r in group)} of {len(group)} | "
                             f"{statistics.median(r['seconds'] for r in group):.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
