"""``hf-layerif demo``: the whole pipeline offline on the embedded demo model (or on --model and data)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DemoArguments:
    """Without --model: the package's tiny Llama and generated tasks (copy, reverse, sort, modadd)."""

    output: str = field(default="layerif-demo", metadata={"help": "Output folder."})
    tasks: str = field(default="reverse,sort", metadata={"help": "Demo: two validation tasks (the first drives allocations)."})
    train_samples: int = field(default=64, metadata={"help": "Demo: mixed-task training samples."})
    validation_samples: int = field(default=16, metadata={"help": "Demo: samples per validation task."})
    model: str | None = field(default=None, metadata={"help": "A real model (path or Hub id) instead of the demo model."})
    train: str | None = field(default=None, metadata={"help": "With --model: training data file / folder / Hub id."})
    validation: str | None = field(default=None, metadata={"help": "With --model: validation data; several comma-separated."})
    max_length: int = field(default=256, metadata={"help": "With --model: truncate samples to this many tokens."})
    max_samples: int = field(default=256, metadata={"help": "With --model: at most this many samples per dataset."})
    sparsity: float = field(default=0.5, metadata={"help": "Global sparsity for the pruning comparison."})
    total_experts: int | None = field(default=None, metadata={"help": "Total experts (default: 4 per block)."})
    finetune_steps: int = field(default=40, metadata={"help": "LoRA-MoE fine-tuning steps per variant."})


def run(argv: list[str]) -> int:
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(DemoArguments, prog="hf-layerif demo").parse_args_into_dataclasses(args=argv)
    return demo(args)


def demo(args: DemoArguments) -> int:
    from ..demo.pipeline import PipelineSettings, format_summary, run_pipeline

    settings = PipelineSettings(sparsity=args.sparsity, total_experts=args.total_experts, finetune_steps=args.finetune_steps)
    if args.model is None:
        from ..demo import TASKS, load_demo_model, make_task_samples

        tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
        if not tasks or any(t not in TASKS for t in tasks):
            raise SystemExit(f"--tasks must name tasks from {TASKS}")
        model, tokenizer = load_demo_model()
        train = make_task_samples(list(TASKS), args.train_samples, seed=1)
        validation = {t: make_task_samples(t, args.validation_samples, seed=2) for t in tasks}
    else:
        if not (args.train and args.validation):
            raise SystemExit("--model needs --train and --validation.")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ..data import prepare_examples
        from ..data.loading import check_model_source, load_any_dataset

        check_model_source(args.model)
        tokenizer = AutoTokenizer.from_pretrained(args.model)
        model = AutoModelForCausalLM.from_pretrained(args.model).eval()
        train = prepare_examples(load_any_dataset(args.train, max_samples=args.max_samples), tokenizer, args.max_length)
        validation = {}
        for spec in args.validation.split(","):
            ds = load_any_dataset(spec, "validation", max_samples=args.max_samples)
            validation[spec.rstrip("/").split("/")[-1]] = prepare_examples(ds, tokenizer, args.max_length)
    summary = run_pipeline(model, tokenizer, train, validation, args.output, settings)
    print(format_summary(summary))
    print(f"plots, allocations, cards and summary.json in {args.output}")
    return 0
