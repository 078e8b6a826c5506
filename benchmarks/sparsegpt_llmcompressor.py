"""SparseGPT: ``LayerIFPruner`` against llm-compressor's ``SparseGPTModifier`` on the same model, calibration ids
and settings (50% unstructured, block size 128, dampening 0.01), timed in one process, alternating. Not a test.

llm-compressor pins transformers <= 5.17 while this package needs >= 5.20; its SparseGPT path imports and runs with
5.23, so it is installed without its pins into a venv that sees this environment:

    python -m venv --system-site-packages /tmp/llmc && /tmp/llmc/bin/pip install --no-deps llmcompressor \\
        compressed-tensors==0.19.0 loguru nvidia-ml-py
    OMP_NUM_THREADS=1 /tmp/llmc/bin/python benchmarks/sparsegpt_llmcompressor.py --hidden 512

Reported: the median wall time of each over ``--repeats`` runs on fresh copies of the model, the ratio, and how
far the two pruned models are from each other (mask overlap, relative output difference on held-out ids).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

VOCAB = 512  # stories260K's tokenizer (llm-compressor's oneshot wants a processor even for tokenized data)


def build_model(hidden: int, layers: int, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=int(hidden * 2.6875) // 32 * 32,
                         num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
                         num_key_value_heads=max(1, hidden // 64), max_position_embeddings=1024)
    return LlamaForCausalLM(config).eval()


def prune_ours(model, ids, sparsity: float, tokenizer=None) -> float:
    from hf_layerif.pruning import LayerIFPruner, PruningConfig

    started = time.perf_counter()
    LayerIFPruner(model).prune(PruningConfig(method="sparsegpt", sparsity=sparsity, blocksize=128, percdamp=0.01,
                                             nsamples=ids.shape[0], seqlen=ids.shape[1]), ids, progress=False)
    return time.perf_counter() - started


def prune_llmcompressor(model, ids, sparsity: float, tokenizer=None) -> float:
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import SparseGPTModifier

    data = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
    recipe = SparseGPTModifier(sparsity=sparsity, block_size=128, dampening_frac=0.01, mask_structure="0:0",
                               targets=["Linear"], ignore=["lm_head"])
    started = time.perf_counter()
    oneshot(model=model, dataset=data, recipe=recipe, num_calibration_samples=ids.shape[0],
            max_seq_length=ids.shape[1], pad_to_max_length=False, processor=tokenizer)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0, help="draw of the model weights and calibration ids")
    parser.add_argument("--tokenizer", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "models"
                                                    / "stories260K"), help="any tokenizer with a 512-token vocabulary")
    args = parser.parse_args()
    base = build_model(args.hidden, args.layers, args.seed)
    scratch = tempfile.TemporaryDirectory()
    base.save_pretrained(scratch.name)  # llm-compressor re-reads the config from the model's path
    base.config._name_or_path = scratch.name
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    ids = torch.randint(3, VOCAB, (args.nsamples, args.seqlen), generator=torch.Generator().manual_seed(1000 * args.seed + 1))
    held_out = torch.randint(3, VOCAB, (4, args.seqlen), generator=torch.Generator().manual_seed(1000 * args.seed + 2))
    times = {"hf_layerif": [], "llmcompressor": []}
    models = {}
    for _ in range(args.repeats):
        for name, prune in (("hf_layerif", prune_ours), ("llmcompressor", prune_llmcompressor)):
            model = copy.deepcopy(base)
            times[name].append(prune(model, ids, args.sparsity, tokenizer))
            models[name] = model
    ours, theirs = models["hf_layerif"], models["llmcompressor"]
    overlap, zeros = [], []
    for (name, a), (_, b) in zip(ours.named_parameters(), theirs.named_parameters()):
        if a.dim() == 2 and ".layers." in name:
            overlap.append(float(((a == 0) == (b == 0)).float().mean()))
            zeros.append((float((a == 0).float().mean()), float((b == 0).float().mean())))
    with torch.no_grad():
        dense = base(input_ids=held_out).logits
        out_a, out_b = ours(input_ids=held_out).logits, theirs(input_ids=held_out).logits
    result = {
        "setting": vars(args),
        "seconds": {k: statistics.median(v) for k, v in times.items()},
        "all_seconds": times,
        "ratio_llmcompressor_over_ours": statistics.median(times["llmcompressor"]) / statistics.median(times["hf_layerif"]),
        "mask_agreement_mean": statistics.mean(overlap),
        "sparsity_ours_theirs": [statistics.mean(z[0] for z in zeros), statistics.mean(z[1] for z in zeros)],
        "output_change_vs_dense": {"hf_layerif": float((out_a - dense).norm() / dense.norm()),
                                   "llmcompressor": float((out_b - dense).norm() / dense.norm())},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
