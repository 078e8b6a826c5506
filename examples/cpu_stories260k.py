"""Both paper pipelines at CPU scale on a small local model (stories260K from ``../shared/data`` by default).

1. LayerIF scores on TinyStories (train paragraphs vs held-out paragraphs), with the ranking's bootstrap.
2. Expert allocation → LoRA-MoE fine-tune on OpenBookQA for a few steps → accuracy by log-likelihood ranking,
   LayerIF vs uniform experts.
3. Sparsity allocation → Wanda at 50% under uniform / OWL / AlphaPruning / LayerIF ratios → TinyStories and
   WikiText-2 perplexity.

    OMP_NUM_THREADS=1 python examples/cpu_stories260k.py --data ../shared/data
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--model", default=None, help="default: <data>/models/stories260K")
    parser.add_argument("--output", default="runs/cpu-stories260k")
    parser.add_argument("--score_samples", type=int, default=64)
    parser.add_argument("--fit_steps", type=int, default=100, help="steps fitting the scoring adapter (0: fresh)")
    parser.add_argument("--finetune_steps", type=int, default=30)
    parser.add_argument("--eval_limit", type=int, default=200)
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--eval_windows", type=int, default=40)
    args = parser.parse_args(argv)

    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from task_data import load_finetune_task
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments

    from hf_layerif import LayerInfluenceTrainer, compute_layer_influence
    from hf_layerif.data import InfluenceCollator, prepare_examples
    from hf_layerif.evaluation import evaluate_multiple_choice
    from hf_layerif.evaluation.perplexity import load_wikitext2_test
    from hf_layerif.pruning import LayerIFPruner, PruningConfig, perplexity

    torch.set_num_threads(1)
    data = Path(args.data)
    model_path = args.model or str(data / "models" / "stories260K")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    text = (data / "text" / "tinystories" / "tinystories_val_head.txt").read_text(encoding="utf-8", errors="replace")
    paragraphs = [p.strip() for p in text.split("\n\n") if len(p.strip()) > 80]
    results: dict = {}

    # 1. LayerIF scores
    torch.manual_seed(0)
    scored = get_peft_model(AutoModelForCausalLM.from_pretrained(model_path),
                            LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear"))
    n = args.score_samples
    scores = compute_layer_influence(scored, paragraphs[:n], paragraphs[1000:1000 + max(4, n // 4)], tokenizer=tokenizer,
                                     max_length=128, fit_steps=args.fit_steps, output_dir=out / "scores")
    print(scores.summary_table())
    results["block_scores"] = scores.block_scores().tolist()

    # 2. experts: LoRA-MoE on OpenBookQA, LayerIF vs uniform
    from hf_layerif.allocation import expert_allocation

    obqa = data / "tasks" / "llm_adapters" / "dataset" / "openbookqa"
    train_rows, _ = load_finetune_task("openbookqa", str(obqa / "train.json"))
    _, test_items = load_finetune_task("openbookqa", str(obqa / "test.json"))
    train = prepare_examples(train_rows[: 16 * args.finetune_steps], tokenizer, 256)
    results["experts"] = {}
    for label in ("layerif", "uniform"):
        allocation = expert_allocation(scores if label == "layerif" else None, 4 * scores.num_blocks,
                                       model=None if label == "layerif" else scored.get_base_model(),
                                       method=label)
        torch.manual_seed(0)
        moe = get_peft_model(AutoModelForCausalLM.from_pretrained(model_path),
                             allocation.to_peft_config(r=8, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM"))
        trainer = LayerInfluenceTrainer(
            model=moe, train_dataset=Dataset.from_list(train), data_collator=InfluenceCollator(tokenizer.pad_token_id or 0),
            args=TrainingArguments(output_dir=str(out / f"trainer-{label}"), max_steps=args.finetune_steps,
                                   per_device_train_batch_size=8, learning_rate=3e-3, report_to=[], save_strategy="no",
                                   logging_steps=max(1, args.finetune_steps // 3), use_cpu=True, disable_tqdm=True))
        trainer.train()
        metrics = evaluate_multiple_choice(moe, tokenizer, test_items[: args.eval_limit])
        results["experts"][label] = {"experts": allocation.values, **metrics}
        print(label, allocation.values, metrics)

    # 3. sparsity: Wanda at 50% under four allocations
    c4 = str(data / "text" / "c4" / "c4_en_train00000_first1000.jsonl")
    eval_text = "\n\n".join(paragraphs[2000:2600])
    wikitext = load_wikitext2_test(str(data / "text" / "wikitext2_raw" / "wikitext2_raw_test_joined.txt"))
    results["pruning"] = {}
    for allocation in ("uniform", "owl", "alphapruning", "layerif"):
        pruner = LayerIFPruner.from_pretrained(model_path)
        report = pruner.prune(PruningConfig(method="wanda", sparsity=0.5, nsamples=args.nsamples, seqlen=args.seqlen,
                                            calibration=c4, allocation=scores if allocation == "layerif" else allocation),
                              progress=False)
        row = {"achieved": report.global_sparsity()["achieved"], "block_ratios": report.block_ratios,
               "tinystories_ppl": perplexity(pruner.model, tokenizer, eval_text, seqlen=args.seqlen,
                                             max_windows=args.eval_windows),
               "wikitext2_ppl": perplexity(pruner.model, tokenizer, wikitext, seqlen=args.seqlen,
                                           max_windows=args.eval_windows)}
        results["pruning"][allocation] = row
        print(allocation, row)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
