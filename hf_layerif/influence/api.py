"""``compute_layer_influence``: the one-call entry point of the influence engine."""

from __future__ import annotations

import contextlib
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..data import InfluenceCollator, prepare_examples, validate_examples
from ..models.checks import model_max_length
from ..utils.io import read_json, read_safetensors, write_json, write_safetensors
from ..utils.locking import folder_lock
from ..utils.logging import get_logger
from ..version import __version__
from .arguments import InfluenceArguments
from .checkpoint import check_resumable, model_weights_fingerprint, resume_key
from .engine import CHECKPOINT_DIRNAME, InfluenceEngine, fingerprint_examples, lora_is_fresh
from .fitting import adapter_parameters, fit_adapter, redraw_adapter, restore, snapshot
from .scores import SCORES_JSON, LayerInfluenceScores, aggregate_block_scores

FITTED_ADAPTER_FILE = "fitted_adapter.safetensors"
FITTED_ADAPTER_META = "fitted_adapter.json"


def average_draws(draws: list[torch.Tensor], aggregation: str, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Average the influence matrices [L, n] of several adapter draws, each divided by its mean |I| first (so every
    draw weighs the same whatever its scale), then multiplied by the mean of those scales (the result keeps the
    draws' units). Returns (averaged influence [L, n], per-draw block scores [draws, L] of the normalised draws)."""
    stacked = torch.stack([d.to(torch.float64) for d in draws])
    scales = stacked.abs().mean(dim=(1, 2)).clamp_min(torch.finfo(torch.float64).tiny)
    normalised = stacked / scales[:, None, None] * scales.mean()
    per_draw = torch.stack([aggregate_block_scores(d, aggregation, fraction) for d in normalised])
    return normalised.mean(0), per_draw

logger = get_logger(__name__)


def library_versions() -> dict[str, str]:
    import accelerate
    import peft
    import transformers

    return {"hf_layerif": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "accelerate": accelerate.__version__, "python": platform.python_version()}


def model_provenance(model: nn.Module) -> dict[str, Any]:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    info: dict[str, Any] = {"class": type(base).__name__}
    if config is not None:
        info["model_id"] = getattr(config, "_name_or_path", "") or ""
        info["revision"] = getattr(config, "_commit_hash", None)
        info["architectures"] = getattr(config, "architectures", None)
        info["model_type"] = getattr(config, "model_type", None)
    peft_config = getattr(model, "peft_config", None)
    if isinstance(peft_config, dict):
        info["adapters"] = {name: cfg.to_dict() for name, cfg in peft_config.items()}
        for cfg in info["adapters"].values():
            for key, value in list(cfg.items()):
                if isinstance(value, set):
                    cfg[key] = sorted(value)
    return info


def _json_safe(value):
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_json_safe(v) for v in (sorted(value) if isinstance(value, set) else value)]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def effective_max_length(model: nn.Module, max_length: int | None) -> tuple[int | None, str]:
    """The truncation length for samples and where it comes from: ``max_length``, capped at the model's context
    (positions beyond it either crash or are silently meaningless, depending on the position encoding)."""
    limit = model_max_length(model)
    if limit is None:
        return max_length, "max_length"
    if max_length is None:
        return limit, "the model's context (max_position_embeddings)"
    if max_length > limit:
        logger.warning("max_length=%d exceeds the model's context of %d positions; truncating to %d.", max_length, limit, limit)
        return limit, "the model's context (max_position_embeddings)"
    return max_length, "max_length"


def _vocab_size(model: nn.Module) -> int | None:
    embeddings = model.get_input_embeddings()
    return getattr(embeddings, "num_embeddings", None)


def compute_layer_influence(
    model: nn.Module,
    train_dataset,
    eval_dataset,
    *,
    tokenizer=None,
    args: InfluenceArguments | None = None,
    output_dir: str | os.PathLike | None = None,
    accelerator=None,
    cache_dir: str | os.PathLike | None = None,
    text_column: str | None = None,
    progress: bool = True,
    **options,
) -> LayerInfluenceScores:
    """Per-block influence of each training sample on the mean validation loss (LayerIF, METHOD §1–3, §9–10).

    Args:
        model: a causal LM (``PreTrainedModel``) or a ``PeftModel`` with a LoRA adapter (``target="lora"``).
        train_dataset, eval_dataset: tokenized datasets (``input_ids`` [+ ``labels``]), text datasets (with
            ``tokenizer``), instruction datasets, or lists of strings. Order is preserved: column i of the result
            is training sample i.
        tokenizer: the model's tokenizer (needed for text; its pad id is used for padding).
        args: :class:`InfluenceArguments`; keyword ``options`` override its fields (``estimator="exact"``, ...).
        output_dir: when given, results are saved there (``save_pretrained``) and the run checkpoints into
            ``output_dir/influence_checkpoint`` so that re-running the same call resumes.
        accelerator: an ``accelerate.Accelerator`` to shard the samples over processes (scores are identical).
        cache_dir: where per-sample gradients spill when they exceed ``gradient_memory_gb`` and no
            ``output_dir`` is given (default: the system's temporary folder).

    Returns:
        :class:`LayerInfluenceScores` with ``influence`` [num_blocks, num_train] float32 in the Koh & Liang sign
        convention (negative = the sample lowers the validation loss through that block).
    """
    args = (args or InfluenceArguments()).replace(**options) if options else (args or InfluenceArguments())
    max_length, source = effective_max_length(model, args.max_length)
    train = prepare_examples(train_dataset, tokenizer, max_length, text_column, name="train_dataset", length_source=source)
    evals = prepare_examples(eval_dataset, tokenizer, max_length, text_column, name="eval_dataset", length_source=source)
    vocab = _vocab_size(model)
    validate_examples(train, vocab, "train_dataset")
    validate_examples(evals, vocab, "eval_dataset")
    engine = InfluenceEngine(model, args, accelerator=accelerator, progress=progress)
    pad_id = 0
    if tokenizer is not None and tokenizer.pad_token_id is not None:
        pad_id = tokenizer.pad_token_id
    collator = InfluenceCollator(pad_id)

    def loader(examples):
        dl = DataLoader(examples, batch_size=args.batch_size, shuffle=False, collate_fn=collator)
        return accelerator.prepare_data_loader(dl) if accelerator is not None else dl

    data_fp = {"train": fingerprint_examples(train), "validation": fingerprint_examples(evals),
               "num_train": len(train), "num_validation": len(evals)}
    return run_influence(engine, lambda: loader(train), lambda: loader(evals), len(train), len(evals), data_fp,
                         output_dir=output_dir, cache_dir=cache_dir)


def run_influence(engine: InfluenceEngine, train_loader, eval_loader, num_train: int, num_eval: int,
                  data_fingerprint: dict, output_dir: str | os.PathLike | None = None,
                  cache_dir: str | os.PathLike | None = None) -> LayerInfluenceScores:
    """Run ``engine`` over loaders (factories returning a fresh iterable each call) and assemble the scores.

    Shared by :func:`compute_layer_influence` and :class:`hf_layerif.LayerInfluenceTrainer`: checkpointing
    into ``output_dir/influence_checkpoint``, repeated adapter initialisations, provenance and saving.
    """
    args = engine.args
    model = engine.model
    accelerator = engine.accelerator
    fresh = args.target == "lora" and lora_is_fresh(engine.tracked)
    if args.target == "lora" and not fresh:
        if args.fit_steps:
            raise ValueError("fit_steps fits a fresh adapter, but this adapter is already trained (its B matrices are "
                             "non-zero). Score it as trained with fit_steps=0, or attach a fresh adapter.")
        if (args.repeats or 1) > 1:
            raise ValueError("repeats > 1 re-draws the LoRA initialisation, which would overwrite a trained adapter. "
                             "Use repeats=1 for a trained adapter, or score a freshly initialised one.")
    if args.fit_steps and accelerator is not None and accelerator.num_processes > 1:
        raise ValueError("fit_steps fits the adapter in one process; with several processes train it first "
                         "(LayerInfluenceTrainer.train()) and score it with fit_steps=0.")
    checkpoint_dir = Path(output_dir) / CHECKPOINT_DIRNAME if (output_dir is not None and args.checkpoint_every) else None
    data_fp = data_fingerprint
    processes = 1 if accelerator is None else accelerator.num_processes
    rank = 0 if accelerator is None else accelerator.process_index
    key = None
    if checkpoint_dir is not None:
        key = resume_key(args, data_fp, model_provenance(model).get("model_id", ""),
                         model_weights_fingerprint(model, engine.tracked), list(engine.blocks.names),
                         engine.dims_per_block, processes)
    with contextlib.ExitStack() as stack:
        if output_dir is not None:
            # one run per output folder: a second one would overwrite the first one's checkpoint and spill files
            stack.enter_context(folder_lock(output_dir, f".hf-layerif-rank{rank}.lock"))
            if (Path(output_dir) / SCORES_JSON).exists() and (accelerator is None or accelerator.is_main_process):
                logger.warning("%s holds finished scores; they will be replaced when this run finishes.", output_dir)
        if checkpoint_dir is not None:
            own_dir = checkpoint_dir / f"rank{rank}" if processes > 1 else checkpoint_dir
            steps_done = check_resumable(own_dir, key, num_train, args.batch_size, processes)
            if steps_done is not None:
                total = math.ceil(num_train / (args.batch_size * processes))
                logger.warning("Resuming the influence run in %s from step %d of %d%s.", checkpoint_dir, steps_done, total,
                               " (validation pass done)" if steps_done == 0 else "")
        return _run_and_save(engine, train_loader, eval_loader, num_train, num_eval, data_fp, output_dir, cache_dir,
                             checkpoint_dir, key)


def draw_seed(seed: int, draw: int) -> int:
    """Seed of adapter draw ``draw`` > 0 of a run with ``seed``: runs with nearby seeds share no draw."""
    return seed + draw * 1_000_003


# padding values of the collated keys when samples of differently padded batches are re-batched
_PAD_VALUES = {"attention_mask": 0, "labels": -100}


def _rebatch(train_loader, size: int):
    """A factory of the training samples in batches of ``size`` (for a fit with its own batch size). Samples keep
    their real tokens; each new batch is right-padded to its longest sample (mask 0, label -100)."""

    def batches():
        rows = [{k: v[i] for k, v in b.items()} for b in train_loader() for i in range(b["input_ids"].shape[0])]
        out = []
        for j in range(0, len(rows), size):
            group = rows[j:j + size]
            batch = {}
            for key in group[0]:
                batch[key] = torch.nn.utils.rnn.pad_sequence([r[key] for r in group], batch_first=True,
                                                             padding_value=_PAD_VALUES.get(key, 0))
            out.append(batch)
        return out

    return batches


def _run_and_save(engine: InfluenceEngine, train_loader, eval_loader, num_train: int, num_eval: int, data_fp: dict,
                  output_dir, cache_dir, checkpoint_dir: Path | None, resume_key: dict | None) -> LayerInfluenceScores:
    args = engine.args
    model = engine.model
    accelerator = engine.accelerator
    started = time.time()
    fresh = args.target == "lora" and lora_is_fresh(engine.tracked)
    repeats = args.repeats if args.repeats is not None else (3 if fresh else 1)
    params = adapter_parameters(engine.tracked)
    size = args.fit_batch_size or args.batch_size
    fit_batches = train_loader if size == args.batch_size else _rebatch(train_loader, size)

    def fit(seed: int) -> dict | None:
        if not args.fit_steps:
            return None
        return fit_adapter(model, params, fit_batches, args.fit_steps, args.fit_learning_rate, seed, engine._to_device,
                           engine.autocast, engine.progress)

    fitted_file = checkpoint_dir / FITTED_ADAPTER_FILE if checkpoint_dir is not None else None
    original = snapshot(params) if repeats > 1 or args.fit_steps else None
    keep = original  # what the model holds afterwards: the adapter of draw 0 (fitted when fit_steps > 0)
    fits = []
    try:
        saved_fit = None
        if args.fit_steps and fitted_file is not None and fitted_file.exists():
            meta = read_json(checkpoint_dir / FITTED_ADAPTER_META)
            saved_fit = meta if meta.get("key") == resume_key else None
        if saved_fit is not None:
            saved = read_safetensors(fitted_file)
            restore(params, [saved[f"p{i}"].to(p.device, p.dtype) for i, p in enumerate(params)])
            fits.append(saved_fit["fit"])
            logger.info("Loaded the fitted scoring adapter of the checkpoint in %s.", checkpoint_dir)
        elif args.fit_steps:
            fits.append(fit(args.seed))
            if fitted_file is not None and (accelerator is None or accelerator.is_main_process):
                write_safetensors(fitted_file, {f"p{i}": p for i, p in enumerate(params)})
                write_json(checkpoint_dir / FITTED_ADAPTER_META, {"key": resume_key, "fit": fits[0]})
        if original is not None:
            keep = snapshot(params)
        engine.configure_capture()
        influence, damping, est_settings, losses = engine.run(train_loader(), eval_loader(), num_train, num_eval,
                                                              checkpoint_dir, resume_key, cache_dir)
        repeat_scores = None
        if repeats > 1:
            draws = [influence]
            for r in range(1, repeats):
                redraw_adapter(engine.tracked, draw_seed(args.seed, r))
                fits.append(fit(draw_seed(args.seed, r)))
                engine.configure_capture()
                draws.append(engine.run(train_loader(), eval_loader(), num_train, num_eval, None, None, cache_dir)[0])
            influence, repeat_scores = average_draws(draws, args.aggregation, args.fraction)
    finally:
        if original is not None:
            restore(params, keep)
            engine.configure_capture()
    if fitted_file is not None:
        fitted_file.unlink(missing_ok=True)
        (checkpoint_dir / FITTED_ADAPTER_META).unlink(missing_ok=True)
    protocol = {"adapter": "fitted" if args.fit_steps else ("fresh" if fresh else "trained"), "draws": repeats,
                "draw_seeds": [args.seed] + [draw_seed(args.seed, r) for r in range(1, repeats)],
                "normalisation": "each draw divided by its mean |I|, then averaged" if repeats > 1 else None,
                "fits": fits or None}
    provenance = {
        "protocol": protocol,
        "model": model_provenance(model),
        "data": data_fp,
        "blocks": {"names": engine.blocks.names, "source": engine.blocks.source, "class": engine.blocks.block_class,
                   "pattern": engine.blocks.name_pattern(), "tracked_dims": engine.dims_per_block,
                   "params_per_block": engine.blocks.linear_params_per_block(),
                   "tracked_modules": [[m.name for m in ms] for ms in engine.tracked]},
        "versions": library_versions(),
        "num_processes": 1 if accelerator is None else accelerator.num_processes,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(time.time() - started, 3),
    }
    scores = LayerInfluenceScores(
        influence=influence.to(torch.float32),
        block_names=list(engine.blocks.names),
        damping=damping,
        group_to_block=engine.layout.group_to_block().tolist(),
        arguments=_json_safe(args.to_dict()),
        estimator=_json_safe(est_settings),
        provenance=_json_safe(provenance),
        train_losses=losses.to(torch.float32),
        repeat_block_scores=repeat_scores,
    )
    scores.warn_if_unstable()
    if output_dir is not None:
        if accelerator is None or accelerator.is_main_process:
            scores.save_pretrained(output_dir)
        if checkpoint_dir is not None:
            engine.cleanup_checkpoint()
        if accelerator is not None:
            accelerator.wait_for_everyone()
        if checkpoint_dir is not None and (accelerator is None or accelerator.is_main_process):
            with contextlib.suppress(OSError):
                checkpoint_dir.rmdir()
    return scores
