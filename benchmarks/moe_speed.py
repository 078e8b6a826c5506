"""Forward + backward time and memory of a LayerIF LoRA-MoE stack against PEFT LoRA of the same rank.

Same model, same inputs, same process; the ratio is MoE time / LoRA time (target ≤ 2 at E = 8, top-2), for the
default ``auto`` dispatch and for the ``sparse`` and ``gated`` paths forced. Peak memory is reported on CUDA
(``torch.cuda.max_memory_allocated``); on the CPU only the time is measured.

    OMP_NUM_THREADS=1 python benchmarks/moe_speed.py --experts 8 --top_k 2
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def build(kind: str, args, device):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from hf_layerif import LayerIFConfig

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=512, hidden_size=args.hidden, intermediate_size=int(args.hidden * 2.6875),
                         num_hidden_layers=args.layers, num_attention_heads=8, num_key_value_heads=4,
                         max_position_embeddings=2048)
    model = LlamaForCausalLM(config).to(device)
    if kind == "lora":
        peft_config = LoraConfig(r=args.r, lora_alpha=2 * args.r, lora_dropout=0.0, target_modules="all-linear",
                                 task_type="CAUSAL_LM")
    else:
        peft_config = LayerIFConfig(r=args.r, lora_alpha=2 * args.r, lora_dropout=0.0, num_experts=args.experts,
                                    top_k=args.top_k, task_type="CAUSAL_LM")
    model = get_peft_model(model, peft_config)
    model.train()
    return model


def time_steps(model, ids, steps, device):
    for _ in range(2):  # warm-up
        model(input_ids=ids, labels=ids).loss.backward()
    model.zero_grad(set_to_none=True)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        model(input_ids=ids, labels=ids).loss.backward()
        model.zero_grad(set_to_none=True)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    elapsed = (time.perf_counter() - start) / steps
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None
    return elapsed, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--top_k", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(1)
    ids = torch.randint(3, 512, (args.batch, args.seq), generator=torch.Generator().manual_seed(0)).to(args.device)
    from hf_layerif.tuners import Linear as MoELinear

    results = {}
    for kind, dispatch in (("lora", None), ("moe", "auto"), ("moe", "sparse"), ("moe", "gated")):
        model = build(kind, args, args.device)
        modes = set()
        for module in model.modules():
            if isinstance(module, MoELinear):
                module.dispatch = {name: dispatch for name in module.dispatch}
                modes.add(module.resolve_dispatch("default"))
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        seconds, peak = time_steps(model, ids, args.steps, args.device)
        name = kind if dispatch is None else f"moe_{dispatch}"
        results[name] = {"seconds_per_step": round(seconds, 4), "trainable_params": trainable,
                         "peak_gpu_mib": None if peak is None else round(peak, 1)}
        if modes:
            results[name]["paths"] = sorted(modes)
        if name != "lora":
            results[name]["ratio_to_lora"] = round(seconds / results["lora"]["seconds_per_step"], 3)
        del model
    results["setting"] = vars(args)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
