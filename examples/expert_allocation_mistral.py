"""The paper's expert-allocation pipeline (Table 1), for a GPU.

LayerIF scores of the base model on a task (DataInf, fresh LoRA r = 8 on all linear modules) → 160 experts over
the blocks → LoRA-MoE fine-tuning for 3 epochs with the MoLA / AlphaLoRA hyper-parameters (r 8, alpha 16,
lr 3e-4, top-2) → accuracy by log-likelihood ranking on the task's test split. ``--allocation`` runs the same
fine-tune with a baseline (uniform, 2468, 5555, 8642, alphalora).

    python examples/expert_allocation_mistral.py examples/configs/expert_allocation_mistral.json
    python examples/expert_allocation_mistral.py --model mistralai/Mistral-7B-v0.1 --task openbookqa \\
        --train_file .../openbookqa/train.json --test_file .../openbookqa/test.json --output runs/obqa
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


@dataclass
class ExpertExampleArguments:
    model: str = field(default="mistralai/Mistral-7B-v0.1", metadata={"help": "Base model."})
    task: str = field(default="openbookqa", metadata={"help": "mrpc, cola, openbookqa, commonsenseqa, scienceqa."})
    train_file: str = field(default="", metadata={"help": "Training split (file or folder)."})
    test_file: str = field(default="", metadata={"help": "Test split (file or folder)."})
    output: str = field(default="runs/expert-allocation", metadata={"help": "Output folder."})
    allocation: str = field(default="layerif", metadata={"help": "layerif, uniform, 2468, 5555, 8642, alphalora."})
    total_experts: int = field(default=160, metadata={"help": "Total experts."})
    alpha: float = field(default=1.0, metadata={"help": "LayerIF power-transform exponent."})
    influence_train_samples: int = field(default=1024, metadata={"help": "Training samples scored."})
    fit_steps: int = field(default=100, metadata={"help": "Steps fitting the scoring adapter before scoring (0: fresh)."})
    influence_validation_samples: int = field(default=64, metadata={"help": "Validation samples (held out from train)."})
    r: int = 8
    lora_alpha: int = 16
    top_k: int = 2
    learning_rate: float = 3e-4
    epochs: float = 3.0
    max_steps: int = -1
    batch_size: int = 4
    gradient_accumulation_steps: int = 4
    max_length: int = 512
    dtype: str = field(default="bfloat16", metadata={"help": "bfloat16 on a GPU; float32 on a CPU."})
    eval_limit: int | None = None
    seed: int = 0


def main(argv: list[str] | None = None) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from task_data import load_finetune_task
    from transformers import AutoModelForCausalLM, AutoTokenizer, HfArgumentParser, TrainingArguments

    from hf_layerif import LayerInfluenceTrainer, compute_layer_influence
    from hf_layerif.allocation import block_alpha_hill, expert_allocation
    from hf_layerif.data import InfluenceCollator, prepare_examples
    from hf_layerif.evaluation import evaluate_multiple_choice

    parser = HfArgumentParser(ExpertExampleArguments)
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 1 and argv[0].endswith(".json"):
        (args,) = parser.parse_json_file(argv[0])
    else:
        (args,) = parser.parse_args_into_dataclasses(args=argv)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    dtype = getattr(torch, args.dtype)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token

    def base():
        device = "cuda" if torch.cuda.is_available() else "cpu"
        return AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).to(device)

    train_rows, _ = load_finetune_task(args.task, args.train_file, "train")
    _, test_items = load_finetune_task(args.task, args.test_file, "test")
    train = prepare_examples(train_rows, tokenizer, args.max_length, name="train")
    n_val = min(args.influence_validation_samples, max(1, len(train) // 10))
    score_train, score_val = train[n_val:n_val + args.influence_train_samples], train[:n_val]

    model = base()
    if args.allocation == "layerif":
        scored = get_peft_model(model, LoraConfig(r=args.r, lora_alpha=args.lora_alpha, lora_dropout=0.0,
                                                  target_modules="all-linear"))
        scores = compute_layer_influence(scored, score_train, score_val, tokenizer=tokenizer, batch_size=args.batch_size,
                                         fit_steps=args.fit_steps, output_dir=out / "scores")
        print(scores.summary_table())
        model = scored.unload()  # the base model again, without the scoring adapter
        allocation = expert_allocation(scores, args.total_experts, alpha=args.alpha)
    elif args.allocation == "alphalora":
        allocation = expert_allocation(None, args.total_experts, model=model, method="alphalora",
                                       alpha_hill=block_alpha_hill(model, progress=True))
    else:
        allocation = expert_allocation(None, args.total_experts, model=model, method=args.allocation)
    allocation.save_pretrained(out)
    print("experts per block:", allocation.values)

    moe = get_peft_model(model, allocation.to_peft_config(r=args.r, lora_alpha=args.lora_alpha, top_k=args.top_k,
                                                         lora_dropout=0.05, task_type="CAUSAL_LM"))
    training_args = TrainingArguments(output_dir=str(out / "trainer"), learning_rate=args.learning_rate,
                                      num_train_epochs=args.epochs, max_steps=args.max_steps,
                                      per_device_train_batch_size=args.batch_size,
                                      gradient_accumulation_steps=args.gradient_accumulation_steps,
                                      bf16=dtype == torch.bfloat16 and torch.cuda.is_available(), logging_steps=10,
                                      save_strategy="no", report_to=[], seed=args.seed,
                                      use_cpu=not torch.cuda.is_available())
    from datasets import Dataset

    trainer = LayerInfluenceTrainer(model=moe, args=training_args, train_dataset=Dataset.from_list(train),
                                    data_collator=InfluenceCollator(tokenizer.pad_token_id))
    trainer.train()
    moe.save_pretrained(out / "adapter")
    items = test_items[: args.eval_limit] if args.eval_limit else test_items
    metrics = evaluate_multiple_choice(moe, tokenizer, items, batch_size=args.batch_size)
    result = {"task": args.task, "allocation": args.allocation, "experts": allocation.values, **metrics}
    (out / "results.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
