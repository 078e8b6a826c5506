"""Zero-shot multiple-choice accuracy by log-likelihood ranking (lm-evaluation-harness style).

Each item is a context and its candidate continuations; the model scores log p(continuation | context) summed
over the continuation's tokens. The pair is tokenized as one string and split after the context's tokens (as
lm-eval does); the context starts with the tokenizer's special tokens (BOS for Llama / Mistral). ``acc`` picks the highest sum, ``acc_norm`` the highest sum divided by the
continuation's length in characters (lm-eval's length normalisation). Prompts follow lm-eval's tasks (BoolQ,
RTE, HellaSwag, WinoGrande with partial scoring, ARC-Easy/Challenge, OpenBookQA, PIQA). Items come from local
files (LLM-Adapters JSON, GLUE TSV, HellaSwag's 6-line text) or the Hub; metrics are computed here (no Hub
metric modules).
"""

from __future__ import annotations

import bz2
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class MultipleChoiceItem:
    context: str | list[str]  # one context, or one per choice (WinoGrande)
    choices: list[str]
    gold: int


# --- parsing the LLM-Adapters instruction format ---------------------------------------------------------------
def _question_and_options(instruction: str, label: str) -> tuple[str, list[str]]:
    head, _, rest = instruction.partition("\n\n")
    question = head.split(": ", 1)[1] if ": " in head else head
    parts = re.split(rf"{label}\d+: ", rest)
    options = [p.strip() for p in parts[1:]]
    if options:
        options[-1] = re.split(r"\n\n|Answer format:", options[-1])[0].strip()
    return question.strip(), options


def _answer_index(answer: str) -> int:
    return int(re.findall(r"\d+", answer)[-1]) - 1


def _llm_adapters_items(path: Path, task: str) -> list[MultipleChoiceItem]:
    rows = json.loads(path.read_text(encoding="utf-8"))
    items = []
    for row in rows:
        text = row["instruction"]
        if task == "boolq":
            question = text.split("question: ", 1)[1].split("\n\nAnswer format")[0].strip()
            items.append(MultipleChoiceItem(f"Question: {question.rstrip('?')}?\nAnswer:", [" no", " yes"],
                                            int(row["answer"].strip().lower() == "true")))
        elif task == "winogrande":
            sentence, options = _question_and_options(text, "Option")
            items.append(_winogrande_item(sentence, options[:2], _answer_index(row["answer"])))
        elif task == "piqa":
            goal, options = _question_and_options(text, "Solution")
            items.append(MultipleChoiceItem(f"Question: {goal}\nAnswer:", [f" {o}" for o in options],
                                            _answer_index(row["answer"])))
        else:  # ARC-Easy, ARC-Challenge, OpenBookQA
            question, options = _question_and_options(text, "Answer")
            context = question if task == "openbookqa" else f"Question: {question}\nAnswer:"
            items.append(MultipleChoiceItem(context, [f" {o}" for o in options], _answer_index(row["answer"])))
    return items


def _winogrande_item(sentence: str, options: list[str], gold: int) -> MultipleChoiceItem:
    """lm-eval's partial evaluation: the blank filled with each option is the context; the rest is scored."""
    index = sentence.index("_")
    continuation = " " + sentence[index + 1:].strip()
    contexts = [sentence[:index] + option for option in options]
    return MultipleChoiceItem(contexts, [continuation] * len(options), gold)


def _rte_items(path: Path) -> list[MultipleChoiceItem]:
    items = []
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    header = lines[0].split("\t")
    for line in lines[1:]:
        row = dict(zip(header, line.split("\t")))
        label = row["label"]
        gold = 0 if label in ("entailment", "0") else 1
        items.append(MultipleChoiceItem(f"{row['sentence1']}\nQuestion: {row['sentence2']} True or False?\nAnswer:",
                                        [" True", " False"], gold))
    return items


def _hellaswag_items(path: Path) -> list[MultipleChoiceItem]:
    opener = bz2.open if path.suffix == ".bz2" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    items = []
    for start in range(0, len(lines) - 5, 6):
        context, gold, endings = lines[start], int(lines[start + 1]), lines[start + 2:start + 6]
        items.append(MultipleChoiceItem(_hellaswag_clean(context), [" " + _hellaswag_clean(e) for e in endings], gold))
    return items


def _hellaswag_clean(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _hub_items(task: str, split: str | None) -> list[MultipleChoiceItem]:
    from ..data.loading import load_hub_dataset

    offline = (f"--task_files {task}=path/to/file (task_files= in zero_shot): LLM-Adapters JSON for "
               "boolq/winogrande/piqa/arc/openbookqa, GLUE dev.tsv for rte, HellaSwag's 6-line text for hellaswag")

    def load(name: str, config: str | None = None, **kwargs):
        return load_hub_dataset(name, config, local_option=offline, **kwargs)

    if task == "boolq":
        ds = load("google/boolq", split=split or "validation")
        return [MultipleChoiceItem(f"{r['passage']}\nQuestion: {r['question']}?\nAnswer:", [" no", " yes"], int(r["answer"]))
                for r in ds]
    if task == "rte":
        ds = load("nyu-mll/glue", "rte", split=split or "validation")
        return [MultipleChoiceItem(f"{r['sentence1']}\nQuestion: {r['sentence2']} True or False?\nAnswer:",
                                   [" True", " False"], int(r["label"])) for r in ds]
    if task == "hellaswag":
        ds = load("Rowan/hellaswag", split=split or "validation")
        return [MultipleChoiceItem(_hellaswag_clean(f"{r['activity_label']}: {r['ctx_a']} {r['ctx_b'].capitalize()}"),
                                   [" " + _hellaswag_clean(e) for e in r["endings"]], int(r["label"])) for r in ds]
    if task == "winogrande":
        ds = load("allenai/winogrande", "winogrande_xl", split=split or "validation")
        return [_winogrande_item(r["sentence"], [r["option1"], r["option2"]], int(r["answer"]) - 1) for r in ds]
    if task in ("arc_easy", "arc_challenge"):
        ds = load("allenai/ai2_arc", "ARC-Easy" if task == "arc_easy" else "ARC-Challenge",
                                   split=split or "test")
        return [MultipleChoiceItem(f"Question: {r['question']}\nAnswer:", [f" {t}" for t in r["choices"]["text"]],
                                   r["choices"]["label"].index(r["answerKey"])) for r in ds]
    if task == "openbookqa":
        ds = load("allenai/openbookqa", "main", split=split or "test")
        return [MultipleChoiceItem(r["question_stem"], [f" {t}" for t in r["choices"]["text"]],
                                   r["choices"]["label"].index(r["answerKey"])) for r in ds]
    if task == "piqa":
        ds = load("ybisk/piqa", split=split or "validation")
        return [MultipleChoiceItem(f"Question: {r['goal']}\nAnswer:", [f" {r['sol1']}", f" {r['sol2']}"], int(r["label"]))
                for r in ds]
    raise ValueError(f"unknown task {task!r}")


TASK_LOADERS: dict[str, Callable[[Path], list[MultipleChoiceItem]]] = {
    "boolq": lambda p: _llm_adapters_items(p, "boolq"),
    "winogrande": lambda p: _llm_adapters_items(p, "winogrande"),
    "piqa": lambda p: _llm_adapters_items(p, "piqa"),
    "arc_easy": lambda p: _llm_adapters_items(p, "arc"),
    "arc_challenge": lambda p: _llm_adapters_items(p, "arc"),
    "openbookqa": lambda p: _llm_adapters_items(p, "openbookqa"),
    "rte": _rte_items,
    "hellaswag": _hellaswag_items,
}
PAPER_TASKS = ("boolq", "rte", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")


def load_task(task: str, path: str | None = None, split: str | None = None, limit: int | None = None) -> list[MultipleChoiceItem]:
    """Items of ``task`` from a local file (LLM-Adapters JSON; GLUE TSV for RTE; HellaSwag's 6-line text[.bz2]) or
    from the Hub when ``path`` is None."""
    if task not in TASK_LOADERS:
        raise ValueError(f"unknown task {task!r}; choose from {sorted(TASK_LOADERS)}")
    if path is not None and not Path(path).exists():
        raise FileNotFoundError(f"task file for {task!r} not found: {path}")
    items = TASK_LOADERS[task](Path(path)) if path is not None else _hub_items(task, split)
    return items[:limit] if limit is not None else items


@torch.no_grad()
def _loglikelihoods(model, tokenizer, requests: list[tuple[str, str]], batch_size: int, device) -> list[float]:
    encoded = []
    for context, continuation in requests:
        # as lm-eval: trailing context whitespace moves to the continuation, the pair is tokenized as one string
        # (how the text is really tokenized) and split where the context's own tokens end
        stripped = context.rstrip()
        continuation = context[len(stripped):] + continuation
        ctx = tokenizer(stripped, add_special_tokens=True)["input_ids"]
        whole = tokenizer(stripped + continuation, add_special_tokens=True)["input_ids"]
        cont = whole[len(ctx):]
        if not cont:
            raise ValueError(f"empty continuation after tokenization: {continuation!r}")
        encoded.append((ctx, cont))
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if limit is not None:  # keep the end of over-long contexts (lm-eval truncates on the left)
        encoded = [(ctx[max(0, len(ctx) + len(cont) - limit):], cont[-limit:]) for ctx, cont in encoded]
    order = sorted(range(len(encoded)), key=lambda i: -(len(encoded[i][0]) + len(encoded[i][1])))
    scores = [0.0] * len(encoded)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        seqs = [encoded[i][0] + encoded[i][1] for i in chunk]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, seq in enumerate(seqs):
            ids[row, :len(seq)] = torch.tensor(seq)
            mask[row, :len(seq)] = 1
        logprobs = torch.log_softmax(model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float(), -1)
        for row, i in enumerate(chunk):
            ctx, cont = encoded[i]
            positions = torch.arange(max(len(ctx), 1) - 1, len(ctx) + len(cont) - 1)[-len(cont):]
            targets = torch.tensor(cont)
            scores[i] = float(logprobs[row, positions, targets.to(logprobs.device)].sum())
    return scores


def evaluate_multiple_choice(model, tokenizer, items: list[MultipleChoiceItem], batch_size: int = 8) -> dict[str, float]:
    """``acc`` and ``acc_norm`` (character-length normalised) over ``items``."""
    if not items:
        raise ValueError("no items to evaluate")
    device = next(p for p in model.parameters() if p.device.type != "meta").device
    requests, owners = [], []
    for index, item in enumerate(items):
        contexts = item.context if isinstance(item.context, list) else [item.context] * len(item.choices)
        for context, choice in zip(contexts, item.choices):
            requests.append((context, choice))
            owners.append(index)
    was_training = model.training
    model.eval()
    scores = _loglikelihoods(model, tokenizer, requests, batch_size, device)
    model.train(was_training)
    correct = correct_norm = 0
    cursor = 0
    for item in items:
        k = len(item.choices)
        s = scores[cursor:cursor + k]
        norm = [v / max(1, len(c)) for v, c in zip(s, item.choices)]
        correct += int(max(range(k), key=lambda j: (s[j], -j)) == item.gold)
        correct_norm += int(max(range(k), key=lambda j: (norm[j], -j)) == item.gold)
        cursor += k
    return {"acc": correct / len(items), "acc_norm": correct_norm / len(items), "n": len(items)}


def zero_shot(model, tokenizer, tasks: dict[str, str | None], limit: int | None = None, batch_size: int = 8) -> dict[str, dict]:
    """``{task: {"acc", "acc_norm", "n"}}`` for ``tasks`` = {name: local path or None (Hub)}, plus ``"average"``."""
    results = {name: evaluate_multiple_choice(model, tokenizer, load_task(name, path, limit=limit), batch_size)
               for name, path in tasks.items()}
    if results:
        results["average"] = {"acc": sum(r["acc"] for r in results.values()) / len(results),
                              "acc_norm": sum(r["acc_norm"] for r in results.values()) / len(results)}
    return results
