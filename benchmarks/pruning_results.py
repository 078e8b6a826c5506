"""Pruning results on stories260K: TinyStories-validation perplexity for {magnitude, wanda, sparsegpt} ×
{uniform, owl, alphapruning, layerif, layerif with the reversed direction} at 50% and 70%, over 3 calibration seeds (mean ± std), with wall time and
peak memory per method. LayerIF scores come from TinyStories train / validation samples (LoRA r = 8 on all
linear modules, DataInf). Not a test.

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

ALLOCATIONS = ("uniform", "owl", "alphapruning", "layerif", "layerif_reversed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--sparsities", default="0.5,0.7")
    parser.add_argument("--seeds", default="0,1,2")
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
    torch.manual_seed(0)
    scored = get_peft_model(AutoModelForCausalLM.from_pretrained(model_path),
                            LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear"))
    scores = compute_layer_influence(scored, paragraphs[:64], paragraphs[1000:1016], tokenizer=tokenizer,
                                     max_length=128, progress=False)
    print("LayerIF block scores:", [round(v, 4) for v in scores.block_scores().tolist()])

    dense = LayerIFPruner.from_pretrained(str(model_path))
    dense_ppl = perplexity(dense.model, tokenizer, eval_text, seqlen=args.seqlen, max_windows=args.eval_windows)
    rows = []
    for sparsity in (float(s) for s in args.sparsities.split(",")):
        for method in ("magnitude", "wanda", "sparsegpt"):
            for allocation in ALLOCATIONS:
                ppls, seconds, peaks = [], [], []
                for seed in (int(s) for s in args.seeds.split(",")):
                    pruner = LayerIFPruner.from_pretrained(str(model_path))
                    config = PruningConfig(method=method, sparsity=sparsity, seed=seed, nsamples=args.nsamples,
                                           seqlen=args.seqlen, calibration=c4,
                                           allocation=scores if allocation.startswith("layerif") else allocation,
                                           reverse=allocation == "layerif_reversed")
                    started = time.perf_counter()
                    pruner.prune(config, progress=False)
                    seconds.append(time.perf_counter() - started)
                    peaks.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10)
                    ppls.append(perplexity(pruner.model, tokenizer, eval_text, seqlen=args.seqlen, max_windows=args.eval_windows))
                    if method == "magnitude" and allocation != "owl":
                        break  # no calibration data involved: the seeds give identical results
                row = {"sparsity": sparsity, "method": method, "allocation": allocation,
                       "ppl_mean": statistics.mean(ppls), "ppl_std": statistics.stdev(ppls) if len(ppls) > 1 else 0.0,
                       "seeds": len(ppls), "seconds": statistics.mean(seconds), "peak_rss_mib": max(peaks)}
                rows.append(row)
                print(json.dumps(row))
    print(f"\ndense perplexity: {dense_ppl:.3f}\n")
    print("| sparsity | method | " + " | ".join(ALLOCATIONS) + " |")
    print("|---|---|" + "---|" * len(ALLOCATIONS))
    for sparsity in sorted({r["sparsity"] for r in rows}):
        for method in ("magnitude", "wanda", "sparsegpt"):
            cells = []
            for allocation in ALLOCATIONS:
                r = next(x for x in rows if x["sparsity"] == sparsity and x["method"] == method and x["allocation"] == allocation)
                cells.append(f"{r['ppl_mean']:.2f} ± {r['ppl_std']:.2f}")
            print(f"| {sparsity:.0%} | {method} | " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({"dense_ppl": dense_ppl, "rows": rows,
                                               "layerif_scores": scores.block_scores().tolist()}, indent=2))


if __name__ == "__main__":
    main()
