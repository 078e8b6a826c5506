"""Speed of compute_layer_influence against the physical floor and a batch-size-1 loop.

All timings come from one process with threads pinned; ratios are against baselines run in the same process:

- floor: one plain batched forward + backward (``model(**batch).loss.backward()``) over the same n + m samples
  with the same batch size — the cost any gradient-based influence method must pay at least;
- per-sample loop: DataInf's reference approach (one autograd pass per sample at batch size 1, LoRA gradients
  read from ``param.grad``, then the DataInf formula).

CPU (default): a small Llama built from its config. GPU (``--preset mistral-7b --device cuda``): a
Mistral-7B-shaped model from its config with random bf16 weights (no download), LoRA r = 8 on all linear modules,
1024 training and 64 validation samples of 512 tokens.

    OMP_NUM_THREADS=1 python benchmarks/influence_speed.py --n 64 --m 16 --seq 64
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import torch


def build_model(preset: str, device: str, dtype: torch.dtype, layers: int = 6, fitted: bool = False):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    if preset == "mistral-7b":
        config = MistralConfig(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                               num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=4096,
                               attn_implementation="sdpa")
        with torch.device(device):
            model = MistralForCausalLM(config).to(dtype)
    else:
        config = LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=344, num_hidden_layers=layers,
                             num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=512)
        model = LlamaForCausalLM(config).to(device=device, dtype=dtype)
    model.eval()
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear"))
    if fitted:  # stands in for a fitted adapter: B non-zero, so every A and B gradient is formed
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_B" in name:
                    p.copy_((torch.randn(p.shape, generator=gen) * 0.02).to(p.device, p.dtype))
    return peft_model


def make_samples(count: int, seq: int, vocab: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(3, vocab, (seq,), generator=gen).tolist()} for _ in range(count)]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_floor(model, samples, batch_size, device):
    from hf_layerif.data import InfluenceCollator

    collate = InfluenceCollator(0)
    sync(device)
    start = time.perf_counter()
    for i in range(0, len(samples), batch_size):
        batch = {k: v.to(device) for k, v in collate(samples[i:i + batch_size]).items()}
        model(**batch).loss.backward()
    sync(device)
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def time_per_sample_loop(model, train, val, device):
    """DataInf's reference approach: batch size 1 autograd, flattened LoRA grads per block, DataInf formula."""
    from hf_layerif.influence.estimators import DataInfEstimator, damping_from_gram
    from hf_layerif.models.blocks import find_transformer_blocks, tracked_modules

    tracked = tracked_modules(find_transformer_blocks(model), "lora")
    sync(device)
    start = time.perf_counter()

    def grads(sample):
        ids = torch.tensor([sample["input_ids"]], device=device)
        model.zero_grad(set_to_none=True)
        model(input_ids=ids, labels=ids).loss.backward()
        return [torch.cat([m.module.weight.grad.flatten().float() for m in mods]) for mods in tracked]

    v = None
    for sample in val:
        g = grads(sample)
        v = g if v is None else [a + b for a, b in zip(v, g)]
    v = [x / len(val) for x in v]
    G = [[] for _ in tracked]
    for sample in train:
        for l, g in enumerate(grads(sample)):
            G[l].append(g)
    G = [torch.stack(rows) for rows in G]
    a = torch.stack([g @ vl for g, vl in zip(G, v)]).cpu()
    K = torch.stack([g @ g.T for g in G]).cpu()
    dims = torch.tensor([g.shape[1] for g in G])
    DataInfEstimator()(a, K, damping_from_gram(torch.diagonal(K, dim1=1, dim2=2), dims))
    sync(device)
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def time_kronfluence(model, train, val, batch_size, device, strategies=("identity", "ekfac")):
    """Fit + pairwise per-module scores with kronfluence (optional; install it in a separate environment)."""
    import tempfile

    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.utils.dataset import DataLoaderKwargs
    from kronfluence_task import make_kronfluence_task  # benchmarks/, beside this script

    from hf_layerif.data import InfluenceCollator

    task = make_kronfluence_task(model)
    prepared = prepare_model(model, task)
    timings = {}
    with tempfile.TemporaryDirectory() as out:
        analyzer = Analyzer(analysis_name="bench", model=prepared, task=task, output_dir=out, disable_tqdm=True,
                            cpu=not device.startswith("cuda"))
        analyzer.set_dataloader_kwargs(DataLoaderKwargs(collate_fn=InfluenceCollator(0)))
        for strategy in strategies:
            sync(device)
            start = time.perf_counter()
            analyzer.fit_all_factors(factors_name=strategy, dataset=train, per_device_batch_size=batch_size,
                                     factor_args=FactorArguments(strategy=strategy), overwrite_output_dir=True)
            analyzer.compute_pairwise_scores(scores_name=f"scores_{strategy}", factors_name=strategy, query_dataset=val,
                                             train_dataset=train, per_device_query_batch_size=batch_size,
                                             per_device_train_batch_size=batch_size, overwrite_output_dir=True,
                                             score_args=ScoreArguments(compute_per_module_scores=True))
            sync(device)
            timings[strategy] = time.perf_counter() - start
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small-llama", choices=["small-llama", "mistral-7b"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (GPU default)")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--m", type=int, default=16)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--skip_loop", action="store_true", help="skip the batch-size-1 loop (slow at 7B)")
    parser.add_argument("--kronfluence", action="store_true", help="also time kronfluence identity/ekfac (if installed)")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    parser.add_argument("--layers", type=int, default=6, help="blocks of the small Llama")
    parser.add_argument("--repeats", type=int, default=3, help="timings per figure (medians are reported)")
    parser.add_argument("--fitted", action="store_true", help="score an adapter with non-zero B (as after fitting)")
    parser.add_argument("--estimator", default="datainf")
    parser.add_argument("--parts_overhead", action="store_true",
                        help="also time each run without the validation parts (validation_split_half=False), "
                             "alternating, and report the ratio")
    parser.add_argument("--target", default="lora", choices=["lora", "full"])
    parser.add_argument("--projection_dim", type=int, default=None)
    parser.add_argument("--n_sweep", default=None, help="comma-separated n: one fresh process per n, then a table and "
                                                        "a plot (--plot) of time over the floor and peak memory against n")
    parser.add_argument("--plot", default=None, help="PNG of the sweep")
    args = parser.parse_args()
    if args.n_sweep:
        return sweep(args)
    if args.device == "cpu":
        torch.set_num_threads(1)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if args.device.startswith("cuda") else torch.float32)

    from hf_layerif import compute_layer_influence

    model = build_model(args.preset, args.device, dtype, args.layers, args.fitted)
    vocab = model.get_input_embeddings().num_embeddings
    train, val = make_samples(args.n, args.seq, vocab, 1), make_samples(args.m, args.seq, vocab, 2)

    # warm-up (allocator, kernels), not timed
    compute_layer_influence(model, train[:2], val[:1], batch_size=2, progress=False, bootstrap_samples=0, repeats=1,
                            target=args.target, projection_dim=args.projection_dim)
    time_floor(model, train[:2], 2, args.device)

    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    options = dict(estimator=args.estimator, target=args.target, projection_dim=args.projection_dim, repeats=1)
    floors, times, without_parts = [], [], []
    for _ in range(args.repeats):  # alternate floor and ours, so that drifts of the machine hit both alike
        floors.append(time_floor(model, train + val, args.batch_size, args.device))
        sync(args.device)
        start = time.perf_counter()
        scores = compute_layer_influence(model, train, val, batch_size=args.batch_size, progress=False,
                                         bootstrap_samples=0, gradient_memory_gb=64.0, **options)
        sync(args.device)
        times.append(time.perf_counter() - start)
        if args.parts_overhead:
            start = time.perf_counter()
            compute_layer_influence(model, train, val, batch_size=args.batch_size, progress=False, bootstrap_samples=0,
                                    gradient_memory_gb=64.0, validation_split_half=False, **options)
            sync(args.device)
            without_parts.append(time.perf_counter() - start)
    floor, ours = statistics.median(floors), statistics.median(times)
    peak_gpu = torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else None
    loop = None if args.skip_loop else time_per_sample_loop(model, train, val, args.device)
    kron = time_kronfluence(model, train, val, args.batch_size, args.device) if args.kronfluence else {}
    figures = {
        "preset": args.preset, "device": args.device, "estimator": args.estimator, "target": args.target,
        "projection_dim": args.projection_dim, "fitted": args.fitted, "dtype": str(dtype), "n": args.n, "m": args.m, "seq": args.seq,
        "batch_size": args.batch_size, "num_blocks": scores.num_blocks, "repeats": args.repeats,
        "compute_layer_influence_s": round(ours, 3), "floor_forward_backward_s": round(floor, 3),
        "ratio_to_floor": round(ours / floor, 3),
        "validation_parts": (scores.validation_part_influence.shape[0]
                             if scores.validation_part_influence is not None else None),
        **({"without_validation_parts_s": round(statistics.median(without_parts), 3),
            "validation_parts_overhead": round(statistics.median(t / w for t, w in zip(times, without_parts)), 3)}
           if without_parts else {}),
        "per_sample_loop_s": None if loop is None else round(loop, 3),
        "speedup_vs_per_sample_loop": None if loop is None else round(loop / ours, 2),
        **{f"kronfluence_{k}_fit_score_s": round(v, 3) for k, v in kron.items()},
        **{f"speedup_vs_kronfluence_{k}": round(v / ours, 2) for k, v in kron.items()},
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "peak_gpu_gb": None if peak_gpu is None else round(peak_gpu, 2),
        "torch": torch.__version__,
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(figures, handle, indent=2)


def sweep(args) -> None:
    """One fresh process per n (clean peak memory), then a table and an optional plot."""
    import os
    import subprocess
    import sys
    import tempfile

    rows = []
    passthrough = ["--repeats", str(args.repeats), "--m", str(args.m), "--seq", str(args.seq), "--batch_size", str(args.batch_size), "--layers",
                   str(args.layers), "--estimator", args.estimator, "--target", args.target, "--skip_loop",
                   "--device", args.device, "--preset", args.preset]
    if args.projection_dim:
        passthrough += ["--projection_dim", str(args.projection_dim)]
    if args.fitted:
        passthrough.append("--fitted")
    for n in (int(x) for x in args.n_sweep.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "figures.json")
            subprocess.run([sys.executable, __file__, "--n", str(n), "--json", out, *passthrough], check=True,
                           stdout=subprocess.DEVNULL)
            with open(out) as handle:
                rows.append(json.load(handle))
        print(f"n={n}: {rows[-1]['compute_layer_influence_s']:.2f} s, floor {rows[-1]['floor_forward_backward_s']:.2f} s, "
              f"ratio {rows[-1]['ratio_to_floor']:.2f}, peak RSS {rows[-1]['peak_rss_gb']:.2f} GB", flush=True)
    print("| n | influence (s) | floor (s) | time over the floor | peak RSS (GB) |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['n']} | {r['compute_layer_influence_s']:.2f} | {r['floor_forward_backward_s']:.2f} | "
              f"{r['ratio_to_floor']:.2f} | {r['peak_rss_gb']:.2f} |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
        ns = [r["n"] for r in rows]
        left.plot(ns, [r["ratio_to_floor"] for r in rows], marker="o")
        left.axhline(1.0, color="gray", lw=0.8)
        left.set_xscale("log", base=2)
        left.set_xlabel("training samples n")
        left.set_ylabel("time / forward+backward floor")
        right.plot(ns, [r["peak_rss_gb"] for r in rows], marker="o")
        right.set_xscale("log", base=2)
        right.set_xlabel("training samples n")
        right.set_ylabel("peak RSS (GB)")
        fig.suptitle(f"{args.estimator}, target {args.target}, {'fitted' if args.fitted else 'fresh'} adapter")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=100)


if __name__ == "__main__":
    main()
