"""Pruning results on stories260K: TinyStories-validation perplexity for {magnitude, wanda, sparsegpt} ×
{uniform, owl, alphapruning, layerif (ε 0.1, 0.3), layerif reversed (ε 0.3)} at 50% and 70%, over calibration
seeds × scoring seeds, each LayerIF run paired against uniform on the same calibration draw (perplexity ratio −1,
in %). LayerIF scores follow the default protocol: a LoRA (r 8, all linears) fitted for 100 steps to 192
TinyStories paragraphs and averaged over 3 draws, validation on 32 later paragraphs, DataInf, ``positive``.
Not a test.

    OMP_NUM_THREADS=1 python benchmarks/pruning_results.py --shared ../shared/data
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

import torch

ALLOCATIONS = ("uniform", "owl", "alphapruning", "layerif_eps0.1", "layerif_eps0.3", "layerif_reversed_eps0.3")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--sparsities", default="0.5,0.7")
    parser.add_argument("--seeds", default="0,1,2", help="calibration seeds")
    parser.add_argument("--scoring_seeds", default="0,1,2")
    parser.add_argument("--fit_steps", type=int, default=100)
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--eval_windows", type=int, default=40)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_layerif import compute_layer_influence
    from hf_layerif.pruning import LayerIFPruner, PruningConfig, perplexity

    shared = Path(args.shared)
    model_path = shared / "models" / "stories260K"
    text = (shared / "text" / "tinystories" / "tinystories_val_head.txt").read_text(encoding="utf-8", errors="replace")
    paragraphs = [p.strip() for p in text.split("\n\n") if len(p.strip()) > 80]
    eval_text = "\n\n".join(paragraphs[2000:2600])
    c4 = str(shared / "text" / "c4" / "c4_en_train00000_first1000.jsonl")

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    all_paragraphs = [p.strip() for p in text.split("\n\n") if p.strip()]
    scores = {}
    for seed in (int(s) for s in args.scoring_seeds.split(",")):
        torch.manual_seed(seed)
        scored = get_peft_model(AutoModelForCausalLM.from_pretrained(model_path),
                                LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear"))
        scores[seed] = compute_layer_influence(scored, all_paragraphs[:192], all_paragraphs[192:224], tokenizer=tokenizer,
                                               fit_steps=args.fit_steps, seed=seed, progress=False)
        print(f"scoring seed {seed}: block scores", [round(v, 4) for v in scores[seed].block_scores().tolist()], flush=True)

    dense = LayerIFPruner.from_pretrained(str(model_path))
    dense_ppl = perplexity(dense.model, tokenizer, eval_text, seqlen=args.seqlen, max_windows=args.eval_windows)
    rows = []
    for sparsity in (float(s) for s in args.sparsities.split(",")):
        for method in ("magnitude", "wanda", "sparsegpt"):
            for calib in (int(s) for s in args.seeds.split(",")):
                runs = [("uniform", None, "uniform", 0.3, False), ("owl", None, "owl", 0.3, False),
                        ("alphapruning", None, "alphapruning", 0.3, False)]
                for seed, s in scores.items():
                    runs += [("layerif_eps0.1", seed, s, 0.1, False), ("layerif_eps0.3", seed, s, 0.3, False),
                             ("layerif_reversed_eps0.3", seed, s, 0.3, True)]
                for name, seed, allocation, eps, reverse in runs:
                    pruner = LayerIFPruner.from_pretrained(str(model_path))
                    config = PruningConfig(method=method, sparsity=sparsity, seed=calib, nsamples=args.nsamples,
                                           seqlen=args.seqlen, calibration=c4, allocation=allocation, epsilon=eps,
                                           reverse=reverse)
                    started = time.perf_counter()
                    pruner.prune(config, progress=False)
                    row = {"sparsity": sparsity, "method": method, "allocation": name, "calibration_seed": calib,
                           "scoring_seed": seed, "seconds": time.perf_counter() - started,
                           "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10,
                           "ppl": perplexity(pruner.model, tokenizer, eval_text, seqlen=args.seqlen, max_windows=args.eval_windows)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    print(f"\ndense perplexity: {dense_ppl:.3f}\n")
    print("| sparsity | method | allocation | runs | perplexity (mean ± std) | vs uniform, paired (%: mean [min, max]) | "
          "better than uniform |")
    print("|---|---|---|---|---|---|---|")
    for sparsity in sorted({r["sparsity"] for r in rows}):
        for method in ("magnitude", "wanda", "sparsegpt"):
            group = [r for r in rows if r["sparsity"] == sparsity and r["method"] == method]
            uniform = {r["calibration_seed"]: r["ppl"] for r in group if r["allocation"] == "uniform"}
            for name in ALLOCATIONS:
                members = [r for r in group if r["allocation"] == name]
                ppl = [r["ppl"] for r in members]
                diffs = [100 * (r["ppl"] / uniform[r["calibration_seed"]] - 1) for r in members]
                spread = statistics.stdev(ppl) if len(ppl) > 1 else 0.0
                paired = "-" if name == "uniform" else f"{statistics.mean(diffs):+.1f} [{min(diffs):+.1f}, {max(diffs):+.1f}]"
                better = "-" if name == "uniform" else f"{sum(d < 0 for d in diffs)}/{len(diffs)}"
                print(f"| {sparsity:.0%} | {method} | {name} | {len(members)} | {statistics.mean(ppl):.2f} ± {spread:.2f} | "
                      f"{paired} | {better} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"dense_ppl": dense_ppl, "rows": rows,
                                               "layerif_scores": {k: v.block_scores().tolist() for k, v in scores.items()}},
                                              indent=2))


if __name__ == "__main__":
    main()
