"""``hf-layerif score``: LayerIF scores for a model and task; without ``--model``, the embedded demo."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..influence.arguments import InfluenceArguments


@dataclass
class ScoreArguments:
    """What to score. Without ``--model`` the package's tiny demo Llama is trained (once, cached) on its
    generated task corpus and scored with ``--demo_validation_task`` as the validation task."""

    model: str | None = field(default=None, metadata={"help": "Model path or Hub id (default: the embedded demo model)."})
    revision: str | None = field(default=None, metadata={"help": "Model revision on the Hub."})
    train: str | None = field(default=None, metadata={"help": "Training data: json/jsonl/csv file, tsv with a header (GLUE), txt (one sample per paragraph: blank lines separate samples), save_to_disk folder or Hub id."})
    validation: str | None = field(default=None, metadata={"help": "Validation data (same forms as --train)."})
    train_split: str = field(default="train", metadata={"help": "Split of --train for folders / Hub ids."})
    validation_split: str = field(default="validation", metadata={"help": "Split of --validation for folders / Hub ids."})
    text_column: str | None = field(default=None, metadata={"help": "Text column (default: 'text' or instruction/output columns)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep at most this many training samples."})
    max_validation_samples: int | None = field(default=None, metadata={"help": "Keep at most this many validation samples."})
    output: str = field(default="layerif-scores", metadata={"help": "Output folder (scores, plot; checkpoints while running)."})
    adapter: str | None = field(default=None, metadata={"help": "Existing PEFT LoRA adapter to score (path or Hub id)."})
    lora_r: int = field(default=8, metadata={"help": "Rank of the fresh LoRA adapter when --adapter is not given."})
    lora_alpha: int = field(default=16, metadata={"help": "lora_alpha of the fresh adapter."})
    lora_seed: int = field(default=0, metadata={"help": "Seed of the fresh adapter's initialisation."})
    target_modules: str = field(default="all-linear", metadata={"help": "LoRA target modules (comma-separated or all-linear)."})
    torch_dtype: str = field(default="auto", metadata={"help": "Model dtype: auto, float32, bfloat16, float16."})
    device: str | None = field(default=None, metadata={"help": "Device (default: cuda if available, else cpu)."})
    demo_validation_task: str = field(default="reverse", metadata={"help": "Demo only: validation task (copy, reverse, sort, modadd)."})
    demo_train_samples: int = field(default=64, metadata={"help": "Demo only: training samples (mixed tasks)."})
    demo_validation_samples: int = field(default=16, metadata={"help": "Demo only: validation samples."})
    no_plot: bool = field(default=False, metadata={"help": "Do not write scores.png."})
    overwrite: bool = field(default=False, metadata={
        "help": "Compute again even when --output holds the finished scores of this very call (otherwise loaded)."})


def load_model_for_scoring(args: ScoreArguments, target: str):
    """(model, tokenizer) wrapped with the requested LoRA adapter when ``target == 'lora'``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = "auto" if args.torch_dtype == "auto" else getattr(torch, args.torch_dtype)
    model = AutoModelForCausalLM.from_pretrained(args.model, revision=args.revision, dtype=dtype).to(device)
    tokenizer = AutoTokenizer.from_pretrained(args.model, revision=args.revision)
    return attach_adapter(model, args, target), tokenizer


def attach_adapter(model, args: ScoreArguments, target: str):
    import torch

    if target != "lora":
        return model
    from peft import LoraConfig, PeftModel, get_peft_model

    if args.adapter:
        return PeftModel.from_pretrained(model, args.adapter, is_trainable=True)
    import warnings

    targets = args.target_modules if args.target_modules == "all-linear" else [t.strip() for t in args.target_modules.split(",")]
    torch.manual_seed(args.lora_seed)
    with warnings.catch_warnings():  # peft 0.21 calls a transformers 5.2x method that warns of its own rename
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        return get_peft_model(model, LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=0.0,
                                                target_modules=targets))


def run(argv: list[str]) -> int:
    from transformers import HfArgumentParser

    parser = HfArgumentParser((ScoreArguments, InfluenceArguments), prog="hf-layerif score")
    score_args, influence_args = parser.parse_args_into_dataclasses(args=argv)
    influence_args.validate()
    return score(score_args, influence_args)


def score(score_args: ScoreArguments, influence_args: InfluenceArguments) -> int:
    from ..influence.api import compute_layer_influence

    names = None
    if score_args.model is None:
        if score_args.train or score_args.validation:
            raise SystemExit("--train/--validation need --model (without --model the embedded demo runs).")
        from ..demo import TASKS, load_demo_model, make_task_samples

        if score_args.demo_validation_task not in TASKS:
            raise SystemExit(f"--demo_validation_task must be one of {TASKS}")
        model, tokenizer = load_demo_model()
        model = attach_adapter(model, score_args, influence_args.target)
        train = make_task_samples(list(TASKS), score_args.demo_train_samples, seed=1)
        validation = make_task_samples(score_args.demo_validation_task, score_args.demo_validation_samples, seed=2)
        print(f"Embedded demo: tiny Llama trained on {TASKS}; {len(train)} mixed training samples, validation task "
              f"{score_args.demo_validation_task!r} ({len(validation)} samples).")
    else:
        if not (score_args.train and score_args.validation):
            raise SystemExit("--model needs --train and --validation data.")
        from ..data.loading import check_model_source, load_any_dataset, looks_local

        check_model_source(score_args.model)
        from ..utils.io import is_local_path

        train = load_any_dataset(score_args.train, score_args.train_split, score_args.max_train_samples)
        validation = load_any_dataset(score_args.validation, score_args.validation_split, score_args.max_validation_samples)
        model, tokenizer = load_model_for_scoring(score_args, influence_args.target)
        # Hub ids (name or name:config) are recorded for model cards; local files are not dataset ids
        names = {key: spec.partition(":")[0] for key, spec in (("train", score_args.train),
                                                               ("validation", score_args.validation))
                 if not is_local_path(spec) and not looks_local(spec)}
    scores = compute_layer_influence(model, train, validation, tokenizer=tokenizer, args=influence_args,
                                     output_dir=score_args.output, text_column=score_args.text_column,
                                     dataset_names=names, overwrite=score_args.overwrite)
    print(scores.summary_table())
    if not score_args.no_plot:
        png = scores.plot(os.path.join(score_args.output, "scores.png"))
        print(f"plot: {png}")
    print(f"scores saved to {score_args.output} (sign: negative influence = the sample lowers the validation loss)")
    return 0
