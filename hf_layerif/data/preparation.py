"""Turning user datasets into tokenized examples and checking them before any long computation.

Accepted inputs: a ``datasets.Dataset`` (or any sequence of dicts) with ``input_ids`` (and optionally
``attention_mask`` / ``labels``), with a ``text`` column, or with instruction-style columns
(``instruction`` / ``input`` / ``output``, or ``prompt`` / ``completion``); or a list of strings. Text is
tokenized with the model's tokenizer; for instruction data only the output tokens are labels, and ``max_length``
drops prompt tokens from the left so that the answer is kept (text and token ids are cut on the right).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..utils.logging import get_logger

logger = get_logger(__name__)

PROMPT_KEYS = (("instruction", "input", "output"), ("prompt", None, "completion"), ("question", None, "answer"))


def _format_prompt(instruction: str, extra: str | None) -> str:
    if extra:
        return f"{instruction}\n\n{extra}\n\n"
    return f"{instruction}\n\n"


def prepare_examples(dataset: Any, tokenizer=None, max_length: int | None = None, text_column: str | None = None,
                     name: str = "dataset", length_source: str = "max_length") -> list[dict[str, list[int]]]:
    """Tokenize (if needed) and truncate ``dataset``; return a list of examples with int lists.

    Samples longer than ``max_length`` are truncated with one warning that says how many (``length_source`` names
    where the limit came from: ``max_length`` or the model's context).

    Raises:
        ValueError: empty dataset, text without a tokenizer, or unknown columns (naming the expected ones).
    """
    if dataset is None:
        raise ValueError(f"{name} is required")
    try:
        size = len(dataset)
    except TypeError as err:
        raise ValueError(f"{name} must be a sized dataset (a datasets.Dataset, a list of dicts or of strings)") from err
    if size == 0:
        raise ValueError(f"{name} is empty: give at least one sample.")
    first = dataset[0]
    examples: list[dict[str, list[int]]] = []
    truncated = 0
    if isinstance(first, str):
        rows: Sequence = [{"text": t} for t in dataset]
        text_column = "text"
    else:
        rows = dataset
    columns = set(first.keys()) if isinstance(first, dict) else set(rows[0].keys())
    if "input_ids" in columns:
        for row in rows:
            example = {"input_ids": list(row["input_ids"])}
            for key in ("attention_mask", "labels"):
                if row.get(key) is not None:
                    example[key] = list(row[key])
            examples.append(example)
    else:
        if tokenizer is None:
            raise ValueError(f"{name} holds text; pass tokenizer= (the model's tokenizer) to tokenize it.")
        column = text_column or ("text" if "text" in columns else None)
        if column is not None and column in columns:
            for row in rows:
                ids = tokenizer(row[column], add_special_tokens=True)["input_ids"]
                examples.append({"input_ids": list(ids)})
        else:
            spec = next((keys for keys in PROMPT_KEYS if keys[0] in columns and keys[2] in columns), None)
            if spec is None:
                raise ValueError(
                    f"{name} has columns {sorted(columns)}; expected 'input_ids', a text column ('text' or "
                    "text_column=), or instruction data ('instruction'/'input'/'output', 'prompt'/'completion', "
                    "'question'/'answer')."
                )
            first_key, extra_key, out_key = spec
            for row in rows:
                prompt = _format_prompt(str(row[first_key]), row.get(extra_key) if extra_key else None)
                prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
                full_ids = tokenizer(prompt + str(row[out_key]), add_special_tokens=True)["input_ids"]
                if tokenizer.eos_token_id is not None and (not full_ids or full_ids[-1] != tokenizer.eos_token_id):
                    full_ids = list(full_ids) + [tokenizer.eos_token_id]
                n_prompt = len(prompt_ids)
                if full_ids[:n_prompt] != list(prompt_ids):  # tokenization merged across the boundary
                    n_prompt = max(0, n_prompt - 1)
                labels = [-100] * n_prompt + list(full_ids[n_prompt:])
                example = {"input_ids": list(full_ids), "labels": labels}
                if max_length is not None and len(full_ids) > max_length:
                    truncated += 1
                    # keep the answer: drop prompt tokens from the left (after BOS, if any)
                    keep_bos = tokenizer.bos_token_id is not None and full_ids[0] == tokenizer.bos_token_id
                    cut = len(full_ids) - max_length
                    head = 1 if keep_bos else 0
                    example = {k: v[:head] + v[head + cut:] for k, v in example.items()}
                examples.append(example)
    if max_length is not None:
        for example in examples:
            if len(example["input_ids"]) > max_length:
                truncated += 1
            for key in list(example):
                example[key] = example[key][:max_length]
    if truncated:
        logger.warning("%d of %d samples of %s are longer than %d tokens (%s) and were truncated to it (instruction "
                       "data keeps its answer). Set max_length= to choose the limit.", truncated, len(examples), name,
                       max_length, length_source)
    return examples


def validate_examples(examples: list[dict[str, list[int]]], vocab_size: int | None, name: str = "dataset") -> None:
    """Check every example before the influence run; raise ``ValueError`` that names the fix.

    - every example has at least one label token after the causal shift (positions 1.. with label != -100);
    - every token id is below the model's vocabulary size (a tokenizer/model mismatch otherwise).
    """
    no_labels = []
    bad_ids = []
    for i, example in enumerate(examples):
        ids = example["input_ids"]
        if len(ids) == 0:
            no_labels.append(i)
            continue
        labels = example.get("labels") or ids
        mask = example.get("attention_mask")
        if mask is not None:
            labels = [lab if m else -100 for lab, m in zip(labels, mask)]
        if not any(lab != -100 for lab in labels[1:]):
            no_labels.append(i)
        if vocab_size is not None and (max(ids) >= vocab_size or min(ids) < 0):
            bad_ids.append(i)
    if no_labels:
        raise ValueError(
            f"{len(no_labels)} sample(s) of {name} have no label tokens after the next-token shift (indices "
            f"{no_labels[:10]}{'...' if len(no_labels) > 10 else ''}): their loss is undefined. Drop them, raise "
            "max_length, or label at least one token after the first."
        )
    if bad_ids:
        raise ValueError(
            f"{len(bad_ids)} sample(s) of {name} contain token ids outside the model's vocabulary of {vocab_size} "
            f"(indices {bad_ids[:10]}): the tokenizer does not match the model. Tokenize with the model's own "
            "tokenizer (AutoTokenizer.from_pretrained(<model id>))."
        )
