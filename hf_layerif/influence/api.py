"""``compute_layer_influence``: the one-call entry point of the influence engine."""

from __future__ import annotations

import os

from torch import nn
from torch.utils.data import DataLoader

from ..data import InfluenceCollator, prepare_examples, validate_examples
from ..models.checks import model_max_length
from ..utils.logging import get_logger
from .arguments import InfluenceArguments
from .checkpoint import data_provenance
from .engine import InfluenceEngine
from .runner import run_influence
from .scores import LayerInfluenceScores

logger = get_logger(__name__)


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
    dataset_names: dict[str, str] | None = None,
    progress: bool = True,
    overwrite: bool = False,
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
        overwrite: compute again even when ``output_dir`` holds the finished scores of this very call (same model,
            weights, data and gradient-phase arguments), which are otherwise loaded with no gradient pass.
        dataset_names: Hub dataset ids of the data, ``{"train": ..., "validation": ...}``, recorded with the scores
            and listed in model cards (``datasets:``); read from Hub-loaded ``datasets.Dataset`` objects when not
            given.

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

    data_fp = data_provenance(train, evals, train_dataset, eval_dataset, dataset_names)
    return run_influence(engine, lambda: loader(train), lambda: loader(evals), len(train), len(evals), data_fp,
                         output_dir=output_dir, cache_dir=cache_dir, overwrite=overwrite)


