"""``allocation="auto"`` on SmolLM2-135M-Instruct (30 blocks): what selection costs, and whether its choice holds up
on evaluation data it never saw. Not a test.

Cost (``--cost``): one Wanda prune with uniform ratios against ``allocation="auto"`` over 9 candidates (uniform, OWL,
AlphaPruning, LayerIF ε 0.1/0.2/0.3 in both directions), both on the same 128 × 128-token C4 calibration, each in a
fresh process (alternating pairs), timed around ``prune()``, with the process's peak resident memory.

Generalisation (default): LayerIF scores from two tasks (TinyStories paragraphs; ARC-Easy instruction/answer pairs),
each a LoRA (r 8, all linears) fitted to the task's training samples, DataInf, ``positive``. For each calibration
seed and sparsity, every fixed allocation (uniform, OWL, AlphaPruning, and per task LayerIF ε 0.3 in both
directions) and ``auto`` (per task, with that task's scores) are pruned with Wanda on the same calibration draw and
evaluated on WikiText-2 test perplexity — data the selection split (other C4 documents) never saw. Every auto run is
paired with uniform, OWL and the best fixed allocation of hindsight on the same calibration draw.

Zero-shot (``--zero_shot``): every model auto chose in the grid, and uniform and OWL on the same calibration draw,
pruned again (its WikiText-2 perplexity must reproduce the grid's) and scored by log-likelihood ranking on the first
``--zero_shot_limit`` test items of each ``--zero_shot_tasks`` task; auto paired against uniform and OWL.

    python benchmarks/smollm2.py                                          # fetch and convert the model once
    OMP_NUM_THREADS=1 python benchmarks/auto_selection_smollm2.py --cost
    OMP_NUM_THREADS=1 python benchmarks/auto_selection_smollm2.py --write_results benchmarks/RESULTS.md
    OMP_NUM_THREADS=1 python benchmarks/auto_selection_smollm2.py --zero_shot --write_results benchmarks/RESULTS.md
    OMP_NUM_THREADS=1 python benchmarks/auto_selection_smollm2.py --objective_fidelity --write_results benchmarks/RESULTS.md

Objective fidelity (``--objective_fidelity``): does the selection objective (mean token loss on held-out C4
windows) order OWL and uniform as WikiText-2 perplexity and zero-shot accuracy do, and does a larger selection split
help? For each calibration draw, the Wanda uniform and OWL models of the grid are pruned again (their WikiText-2
perplexity must reproduce the grid's) and their per-window losses recorded on ``--fidelity_windows`` selection
windows for each of ``--fidelity_selection_seeds`` (drawn as ``allocation="auto"`` draws them, from the documents
calibration did not read); the first k windows are the objective of a k-window split.

Rows are appended to ``--jsonl`` as they come (a re-run skips the rows already there); ``--write_results`` rewrites
the marked block of RESULTS.md from them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from auto_selection_tables import (  # noqa: E402
    BLOCK,
    COST_BLOCK,
    FIDELITY_BLOCK,
    GRID_SELECTION_NSAMPLES,
    MARGIN_BLOCK,
    ZERO_SHOT_BLOCK,
    cost_table,
    is_grid_auto,
    margin_table,
    objective_fidelity_table,
    summarize,
    zero_shot_table,
)
from result_rows import ResultRows  # noqa: E402
from results_block import replace_block  # noqa: E402
from smollm2 import load_smollm2  # noqa: E402


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


def current_rss_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


class RssSampler:
    """The largest resident memory of this process while the ``with`` block runs (sampled every 0.1 s)."""

    def __enter__(self):
        import threading

        self.peak = current_rss_mb()
        self._stop = threading.Event()

        def sample():
            while not self._stop.wait(0.1):
                self.peak = max(self.peak, current_rss_mb())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss_mb())


def run_cost_phase(args, c4_file: str) -> None:
    """One measurement in this process (``--cost_phase one|auto``): the prune's seconds and the process's peak
    resident memory, printed as one JSON line."""
    from hf_layerif import LayerInfluenceScores
    from hf_layerif.pruning import LayerIFPruner, PruningConfig

    model, tokenizer = load_smollm2()
    common = {"method": args.cost_method, "sparsity": 0.5, "nsamples": args.cost_nsamples, "seqlen": args.seqlen,
              "calibration": c4_file}
    if args.cost_phase == "auto":
        config = PruningConfig(**common, allocation="auto", scores=LayerInfluenceScores.from_pretrained(args.scores_dir))
    else:
        config = PruningConfig(**common)
    before = current_rss_mb()
    with RssSampler() as rss:
        started = time.time()
        report = LayerIFPruner(model, tokenizer).prune(config, progress=False)
        seconds = time.time() - started
    out = {"phase": args.cost_phase, "seconds": seconds, "rss_mb_before_prune": before,
           "peak_rss_mb_during_prune": rss.peak}
    if "selection" in report.extra:
        record = report.extra["selection"]
        out.update(candidates=len(record["candidates"]), screen_nsamples=record["screen_nsamples"],
                   selection_nsamples=record["split"]["nsamples"], chosen=record["chosen"],
                   finalists=record["finalists"])
    print("COST " + json.dumps(out), flush=True)


def run_cost(args, scores) -> None:
    """``--cost_repeats`` alternating pairs of fresh processes: one uniform prune, then auto over 9 candidates."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        scores.save_pretrained(folder)
        runs: dict[str, list[dict]] = {"one": [], "auto": []}
        for _ in range(args.cost_repeats):
            for phase in ("one", "auto"):
                command = [sys.executable, __file__, "--cost_phase", phase, "--scores_dir", folder,
                           "--cost_method", args.cost_method, "--cost_nsamples", str(args.cost_nsamples),
                           "--seqlen", str(args.seqlen), "--shared", args.shared]
                done = subprocess.run(command, capture_output=True, text=True, check=True)
                line = next(x for x in done.stdout.splitlines() if x.startswith("COST "))
                runs[phase].append(json.loads(line[5:]))
    ratios = [a["seconds"] / b["seconds"] for a, b in zip(runs["auto"], runs["one"])]
    result = {"method": args.cost_method, "nsamples": args.cost_nsamples, "seqlen": args.seqlen,
              "one_prune_s": [r["seconds"] for r in runs["one"]], "auto_s": [r["seconds"] for r in runs["auto"]],
              "ratio": ratios,
              "extra_rss_mb_one_prune": max(r["peak_rss_mb_during_prune"] - r["rss_mb_before_prune"] for r in runs["one"]),
              "extra_rss_mb_auto": max(r["peak_rss_mb_during_prune"] - r["rss_mb_before_prune"] for r in runs["auto"]),
              "rss_mb_model_loaded": max(r["rss_mb_before_prune"] for r in runs["one"]),
              **{k: runs["auto"][-1][k] for k in ("candidates", "screen_nsamples", "selection_nsamples", "chosen",
                                                   "finalists")}}
    print(json.dumps(result, indent=1))
    Path(args.cost_json).write_text(json.dumps(result, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--cost", action="store_true", help="time auto against one prune instead of the grid")
    parser.add_argument("--cost_method", default="wanda")
    parser.add_argument("--cost_nsamples", type=int, default=128)
    parser.add_argument("--cost_repeats", type=int, default=2)
    parser.add_argument("--cost_phase", choices=("one", "auto"), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--scores_dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cost_json", default="benchmarks/figures/auto_selection_cost.json")
    parser.add_argument("--tasks", default="tinystories,arc_easy")
    parser.add_argument("--scoring_seeds", default="0,1,2")
    parser.add_argument("--methods", default="wanda,sparsegpt")
    parser.add_argument("--sparsities", default="0.5,0.6")
    parser.add_argument("--calibration_seeds", default="0,1,2")
    parser.add_argument("--nsamples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=128)
    parser.add_argument("--selection_nsamples", type=int, default=GRID_SELECTION_NSAMPLES,
                        help="selection windows of the auto runs; other than the grid's 8, the auto rows are keyed "
                             "with it and tabled beside the 8-window ones (the fixed rows are shared)")
    parser.add_argument("--screen_fraction", type=float, default=0.25)
    parser.add_argument("--min_margin_se", type=float, default=0.0,
                        help="the auto runs' margin rule; 0 (the grid's) records the lowest-objective choice and its "
                             "margin, from which the tables apply any margin rule")
    parser.add_argument("--eval_windows", type=int, default=16)
    parser.add_argument("--fit_steps", type=int, default=20)
    parser.add_argument("--train_samples", type=int, default=48)
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--jsonl", default="benchmarks/figures/auto_selection_smollm2.jsonl")
    parser.add_argument("--zero_shot", action="store_true",
                        help="zero-shot accuracy of every auto choice and of uniform and OWL on its calibration draw")
    parser.add_argument("--zero_shot_tasks", default="arc_easy,piqa,winogrande")
    parser.add_argument("--zero_shot_limit", type=int, default=200, help="items per zero-shot task (the first ones)")
    parser.add_argument("--zero_shot_methods", default="wanda,sparsegpt")
    parser.add_argument("--zero_shot_jsonl", default="benchmarks/figures/auto_selection_zero_shot_smollm2.jsonl")
    parser.add_argument("--objective_fidelity", action="store_true",
                        help="selection objective against WikiText-2 and zero-shot for Wanda uniform vs OWL")
    parser.add_argument("--fidelity_sparsities", default="0.5")
    parser.add_argument("--fidelity_windows", type=int, default=128)
    parser.add_argument("--fidelity_selection_seeds", default="1,2,3")
    parser.add_argument("--fidelity_jsonl", default="benchmarks/figures/auto_selection_objective_smollm2.jsonl")
    parser.add_argument("--write_results", default=None, nargs="*",
                        help="Markdown files whose marked blocks are rewritten (RESULTS.md, README.md)")
    parser.add_argument("--summarize_only", action="store_true", help="rewrite the marked blocks from the saved rows")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    from hf_layerif.allocation import block_alpha_hill, sparsity_allocation
    from hf_layerif.allocation.owl import layerwise_outlier_distribution
    from hf_layerif.calibration import get_calibration_data
    from hf_layerif.pruning import LayerIFPruner, PruningConfig, perplexity

    shared = Path(args.shared)
    c4_file = str(shared / "text/c4/c4_en_train00000_first1000.jsonl")
    wiki_test = (shared / "text/wikitext2_raw/wikitext2_raw_test_joined.txt").read_text(encoding="utf-8")
    if args.cost_phase:
        run_cost_phase(args, c4_file)
        return
    if args.summarize_only:
        write_blocks(args)
        return
    base, tokenizer = load_smollm2()
    args.scoring_seeds_list = [int(x) for x in args.scoring_seeds.split(",")]

    def evaluate(model, allocation, common: dict, ids) -> dict:
        pruner = LayerIFPruner(model, tokenizer)
        pruner.prune(PruningConfig(**common, allocation=allocation), ids, progress=False)
        return {"wikitext2_ppl": perplexity(pruner.model, tokenizer, wiki_test, seqlen=512,
                                            max_windows=args.eval_windows)}

    original = {k: v.clone() for k, v in base.state_dict().items()}

    def fresh():
        base.load_state_dict(original)
        return base

    tasks = args.tasks.split(",")
    scores: dict[tuple[str, int], object] = {}

    def task_scores(task: str, seed: int):
        if (task, seed) not in scores:
            started = time.time()
            scores[task, seed] = score_task(fresh(), tokenizer, shared, task, seed, args)
            print(f"scores {task} seed {seed}: {time.time() - started:.0f} s; ranking "
                  f"{scores[task, seed].ranking()[:8]}", flush=True)
        return scores[task, seed]

    if args.cost:
        run_cost(args, task_scores(tasks[0], args.scoring_seeds_list[0]))
        return
    if args.zero_shot:
        run_zero_shot(args, fresh, tokenizer, task_scores, c4_file, wiki_test)
        write_blocks(args)
        return
    if args.objective_fidelity:
        run_objective_fidelity(args, fresh, tokenizer, c4_file, wiki_test)
        print(objective_fidelity_table(ResultRows(args.jsonl).rows(), ResultRows(args.fidelity_jsonl).rows(),
                                       ResultRows(args.zero_shot_jsonl).rows()))
        write_blocks(args)
        return

    results = ResultRows(args.jsonl)
    hill = block_alpha_hill(fresh())
    calibration: dict[int, tuple] = {}
    for seed in args.scoring_seeds_list:  # seed 0 of every cell first: an interrupted run still covers the grid
        for method in args.methods.split(","):
            for calib in (int(s) for s in args.calibration_seeds.split(",")):
                if calib not in calibration:
                    ids = get_calibration_data(tokenizer, c4_file, args.nsamples, args.seqlen, calib)
                    calibration[calib] = (ids, layerwise_outlier_distribution(fresh(), ids, progress=False))
                ids, lod = calibration[calib]
                for sparsity in (float(s) for s in args.sparsities.split(",")):
                    common = {"method": method, "sparsity": sparsity, "nsamples": args.nsamples,
                              "seqlen": args.seqlen, "seed": calib, "calibration": c4_file}
                    cell = {"method": method, "sparsity": sparsity, "calibration_seed": calib}
                    fixed = {"uniform": lambda s=sparsity: sparsity_allocation(None, s, model=base, method="uniform"),
                             "owl": lambda s=sparsity, lod=lod: sparsity_allocation(None, s, model=base, method="owl",
                                                                                    outlier_ratios=lod),
                             "alphapruning": lambda s=sparsity: sparsity_allocation(None, s, model=base,
                                                                                    method="alphapruning",
                                                                                    alpha_hill=hill)}
                    for name, make in fixed.items():
                        if not results.has({**cell, "allocation": name}):
                            results.record({**cell, "allocation": name},
                                           evaluate(fresh(), make(), common, ids))
                    for task in tasks:
                        for name, reverse in ((f"layerif_{task}", False), (f"layerif_reversed_{task}", True)):
                            key = {**cell, "allocation": name, "scoring_seed": seed}
                            if not results.has(key):
                                allocation = sparsity_allocation(task_scores(task, seed), sparsity, epsilon=0.3,
                                                                 reverse=reverse)
                                results.record(key, evaluate(fresh(), allocation, common, ids))
                        key = {**cell, "allocation": f"auto_{task}", "scoring_seed": seed}
                        if args.selection_nsamples != GRID_SELECTION_NSAMPLES:
                            key["selection_nsamples"] = args.selection_nsamples
                        if args.min_margin_se:
                            key["min_margin_se"] = args.min_margin_se
                        if results.has(key):
                            continue
                        started = time.time()
                        pruner = LayerIFPruner(fresh(), tokenizer)
                        report = pruner.prune(PruningConfig(**common, allocation="auto", scores=task_scores(task, seed),
                                                            selection_nsamples=args.selection_nsamples,
                                                            screen_fraction=args.screen_fraction,
                                                            min_margin_se=args.min_margin_se), progress=False)
                        record = report.extra["selection"]
                        results.record(key, {"wikitext2_ppl": perplexity(pruner.model, tokenizer, wiki_test, seqlen=512,
                                                                         max_windows=args.eval_windows),
                                             "chosen": record["chosen"], "chosen_loss": record["chosen_loss"],
                                             "uniform_loss": record["uniform_loss"],
                                             "screen_best": min(record["candidates"],
                                                                key=lambda r: r["screen_loss"])["name"],
                                             "min_margin_se": args.min_margin_se,
                                             "lowest_objective": record["lowest_objective"],
                                             "margins": {r["name"]: [r["delta_to_uniform"], r["delta_se"]]
                                                         for r in record["candidates"]
                                                         if r["finalist"] and r["name"] != "uniform"},
                                             "held_out_margins": {r["name"]: [r["held_out_delta"], r["held_out_se"]]
                                                                  for r in record["candidates"]
                                                                  if r["finalist"] and r["name"] != "uniform"},
                                             "seconds": time.time() - started})
    print(summarize(results.rows(), tasks))
    write_blocks(args)


NOT_THE_SAME_MODEL = ("it is not the same model (rows recorded on another machine, another CPU and a fresh install, did "
                      "not reproduce there: re-run the rows this needs on this machine first)")


def zero_shot_models(rows: list[dict], methods: list[str]) -> dict[str, dict]:
    """The pruned models the zero-shot part evaluates, by id: per (method, sparsity, calibration seed) with an auto
    run, uniform, OWL and every allocation auto chose there (a LayerIF choice depends on its scores: task and
    scoring seed are part of its id). Each entry holds the WikiText-2 perplexity the grid recorded for that model,
    which the rebuilt model must reproduce."""
    fixed = {(r["key"]["method"], r["key"]["sparsity"], r["key"]["calibration_seed"], r["key"]["allocation"]):
             r["wikitext2_ppl"] for r in rows if r["key"]["allocation"] in ("uniform", "owl", "alphapruning")}
    models: dict[str, dict] = {}
    for row in rows:
        k = row["key"]
        if not is_grid_auto(k) or k["method"] not in methods:
            continue
        cell = {"method": k["method"], "sparsity": k["sparsity"], "calibration_seed": k["calibration_seed"]}
        for name in ("uniform", "owl", row["chosen"]):
            if name in ("uniform", "owl", "alphapruning"):
                model = {**cell, "candidate": name, "expected_ppl": fixed[(*cell.values(), name)]}
            else:  # a LayerIF map: rebuilt from the same task's scores of the same scoring seed
                model = {**cell, "candidate": name, "task": k["allocation"][len("auto_"):],
                         "scoring_seed": k["scoring_seed"], "expected_ppl": row["wikitext2_ppl"]}
            models.setdefault(json.dumps({x: y for x, y in model.items() if x != "expected_ppl"}, sort_keys=True),
                              model)
    return models


def run_zero_shot(args, fresh, tokenizer, task_scores, c4_file: str, wiki_test: str) -> None:
    """Zero-shot accuracy (acc_norm, the first ``--zero_shot_limit`` items of each task's test file) of the models of
    :func:`zero_shot_models`. Each is pruned again from its candidate on its calibration draw; its WikiText-2
    perplexity must equal the grid's to 1e-4 (relative), which shows it is the model auto chose."""
    from hf_layerif.calibration import get_calibration_data
    from hf_layerif.evaluation import zero_shot
    from hf_layerif.pruning import LayerIFPruner, PruningConfig, perplexity
    from hf_layerif.pruning.candidates import parse_candidate
    from hf_layerif.pruning.selection import candidate_allocations

    shared = Path(args.shared)
    folder = shared / "tasks/llm_adapters/dataset"
    files = {"arc_easy": folder / "ARC-Easy/test.json", "arc_challenge": folder / "ARC-Challenge/test.json",
             "piqa": folder / "piqa/test.json", "winogrande": folder / "winogrande/test.json",
             "openbookqa": folder / "openbookqa/test.json", "hellaswag": shared / "tasks/hellaswag/hellaswag_val_full.txt.bz2"}
    tasks = {name: str(files[name]) for name in args.zero_shot_tasks.split(",")}
    out = ResultRows(args.zero_shot_jsonl)
    setting = {"limit": args.zero_shot_limit, "tasks": sorted(tasks)}

    def accuracy(model) -> dict:
        acc = zero_shot(model, tokenizer, tasks, limit=args.zero_shot_limit, batch_size=16)
        return {"acc_norm": {t: acc[t]["acc_norm"] for t in tasks}, "mean_acc_norm": acc["average"]["acc_norm"]}

    if not out.has({"candidate": "dense", **setting}):
        out.record({"candidate": "dense", **setting}, accuracy(fresh()))
    models = zero_shot_models(ResultRows(args.jsonl).rows(), args.zero_shot_methods.split(","))
    calibration: dict[int, torch.Tensor] = {}
    for model in models.values():
        key = {**{k: v for k, v in model.items() if k != "expected_ppl"}, **setting}
        if out.has(key):
            continue
        started = time.time()
        seed = model["calibration_seed"]
        if seed not in calibration:
            calibration[seed] = get_calibration_data(tokenizer, c4_file, args.nsamples, args.seqlen, seed)
        config = PruningConfig(method=model["method"], sparsity=model["sparsity"], nsamples=args.nsamples,
                               seqlen=args.seqlen, seed=seed, calibration=c4_file)
        pruner = LayerIFPruner(fresh(), tokenizer)
        candidate = parse_candidate(model["candidate"].replace("(", ":").replace(", ", ":").rstrip(")"))
        scores = task_scores(model["task"], model["scoring_seed"]) if "task" in model else None
        allocation = candidate_allocations(pruner, config, [candidate], scores, calibration[seed], False)[candidate.name]
        pruner.prune(dataclasses.replace(config, allocation=allocation), calibration[seed], progress=False)
        ppl = perplexity(pruner.model, tokenizer, wiki_test, seqlen=512, max_windows=args.eval_windows)
        if abs(ppl / model["expected_ppl"] - 1) > 1e-4:
            raise RuntimeError(f"{key}: rebuilt model has WikiText-2 perplexity {ppl:.4f}, the grid recorded "
                               f"{model['expected_ppl']:.4f}; {NOT_THE_SAME_MODEL}")
        out.record(key, {"wikitext2_ppl": ppl, **accuracy(pruner.model), "seconds": time.time() - started})
        print(f"zero-shot {key}: {time.time() - started:.0f} s", flush=True)


def run_objective_fidelity(args, fresh, tokenizer, c4_file: str, wiki_test: str) -> None:
    """Per-window selection losses [windows] of the grid's Wanda uniform and OWL models, per calibration draw and
    selection seed (rows in ``--fidelity_jsonl``)."""
    from hf_layerif.allocation import sparsity_allocation
    from hf_layerif.allocation.owl import layerwise_outlier_distribution
    from hf_layerif.calibration import get_calibration_and_selection_data
    from hf_layerif.pruning import LayerIFPruner, PruningConfig, perplexity

    grid = ResultRows(args.jsonl).rows()
    out = ResultRows(args.fidelity_jsonl)
    selection_seeds = [int(s) for s in args.fidelity_selection_seeds.split(",")]
    for calib in (int(s) for s in args.calibration_seeds.split(",")):
        ids = lod = None
        for sparsity in (float(s) for s in args.fidelity_sparsities.split(",")):
            for allocation in ("uniform", "owl"):
                cell = {"method": "wanda", "sparsity": sparsity, "calibration_seed": calib, "allocation": allocation}
                key = {**cell, "windows": args.fidelity_windows, "selection_seeds": selection_seeds}
                if out.has(key):
                    continue
                expected = [r for r in grid if r["key"] == cell]
                if not expected:
                    continue
                started = time.time()
                splits = {}
                for seed in selection_seeds:
                    ids, splits[seed] = get_calibration_and_selection_data(
                        tokenizer, c4_file, args.nsamples, args.seqlen, calib, args.fidelity_windows, seed)
                if lod is None:
                    lod = layerwise_outlier_distribution(fresh(), ids, progress=False)
                model = fresh()
                ratios = sparsity_allocation(None, sparsity, model=model, method=allocation,
                                             outlier_ratios=lod if allocation == "owl" else None)
                pruner = LayerIFPruner(model, tokenizer)
                pruner.prune(PruningConfig(method="wanda", sparsity=sparsity, nsamples=args.nsamples, seqlen=args.seqlen,
                                           seed=calib, calibration=c4_file, allocation=ratios), ids, progress=False)
                ppl = perplexity(pruner.model, tokenizer, wiki_test, seqlen=512, max_windows=args.eval_windows)
                if abs(ppl / expected[0]["wikitext2_ppl"] - 1) > 1e-4:
                    raise RuntimeError(f"{cell}: rebuilt model has WikiText-2 perplexity {ppl:.4f}, the grid recorded "
                                       f"{expected[0]['wikitext2_ppl']:.4f}; {NOT_THE_SAME_MODEL}")
                losses = {str(seed): window_losses(pruner.model, split) for seed, split in splits.items()}
                out.record(key, {"wikitext2_ppl": ppl, "window_losses": losses, "seconds": time.time() - started})


@torch.no_grad()
def window_losses(model, ids: torch.Tensor, batch_size: int = 8) -> list[float]:
    """Mean next-token cross-entropy (nats/token) of each window of ``ids`` [k, seqlen]: their mean is the selection
    objective of the split (every window has seqlen − 1 targets)."""
    model.eval()
    out = []
    for start in range(0, ids.shape[0], batch_size):
        batch = ids[start:start + batch_size]
        logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
        loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch[:, 1:], reduction="none")
        out.extend(loss.mean(1).double().tolist())
    return out


def write_blocks(args) -> None:
    """Rewrite the generated blocks of ``--write_results`` files: the selection table from ``--jsonl``, the cost
    table from ``--cost_json`` (when present)."""
    for path in args.write_results or []:
        replace_block(path, BLOCK, summarize(ResultRows(args.jsonl).rows(), args.tasks.split(",")))
        if Path(args.cost_json).exists():
            replace_block(path, COST_BLOCK, cost_table(json.loads(Path(args.cost_json).read_text())))
        if Path(args.fidelity_jsonl).exists() and FIDELITY_BLOCK in Path(path).read_text(encoding="utf-8"):
            replace_block(path, FIDELITY_BLOCK, objective_fidelity_table(ResultRows(args.jsonl).rows(),
                                                                         ResultRows(args.fidelity_jsonl).rows(),
                                                                         ResultRows(args.zero_shot_jsonl).rows()))
        if MARGIN_BLOCK in Path(path).read_text(encoding="utf-8"):
            replace_block(path, MARGIN_BLOCK, margin_table(ResultRows(args.jsonl).rows(), args.tasks.split(",")))
        if Path(args.zero_shot_jsonl).exists() and ZERO_SHOT_BLOCK in Path(path).read_text(encoding="utf-8"):
            replace_block(path, ZERO_SHOT_BLOCK, zero_shot_table(ResultRows(args.jsonl).rows(),
                                                                 ResultRows(args.zero_shot_jsonl).rows(),
                                                                 args.tasks.split(",")))


if __name__ == "__main__":
    main()
