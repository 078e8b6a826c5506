"""Fine-tuning tasks of the paper's expert-allocation experiments, as instruction data plus multiple-choice items.

Training rows are ``{"instruction", "input", "output"}`` (only the output tokens are labels); evaluation items
score each candidate output after the same prompt (accuracy by log-likelihood ranking). Local files as shipped
by the original datasets: MRPC (GLUE TSV), CoLA (raw TSV), OpenBookQA / ARC-Easy / ARC-Challenge (LLM-Adapters JSON), CommonsenseQA
(JSONL), ScienceQA (MoLA's ``save_to_disk`` folder).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from hf_layerif.evaluation import MultipleChoiceItem

TASKS = ("mrpc", "cola", "openbookqa", "arc_easy", "arc_challenge", "commonsenseqa", "scienceqa")


def _prompt(instruction: str, extra: str = "") -> str:
    return f"{instruction}\n\n{extra}\n\n" if extra else f"{instruction}\n\n"


def _rows_and_items(records: list[tuple[str, list[str], int]]) -> tuple[list[dict], list[MultipleChoiceItem]]:
    rows = [{"instruction": instruction, "input": "", "output": options[gold]} for instruction, options, gold in records]
    items = [MultipleChoiceItem(_prompt(instruction), options, gold) for instruction, options, gold in records]
    return rows, items


def _mrpc(path: Path) -> list[tuple[str, list[str], int]]:
    with open(path, encoding="utf-8-sig") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(reader)
        return [(f"Are these two sentences semantically equivalent? Sentence 1: {r[3]} Sentence 2: {r[4]} "
                 "Answer yes or no.", ["no", "yes"], int(r[0])) for r in reader if len(r) >= 5]


def _cola(path: Path) -> list[tuple[str, list[str], int]]:
    with open(path, encoding="utf-8") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        return [(f"Is the following sentence grammatically acceptable? {r[3]} Answer yes or no.", ["no", "yes"],
                 int(r[1])) for r in reader if len(r) >= 4]


def _llm_adapters(path: Path) -> list[tuple[str, list[str], int]]:
    records = []
    for row in json.loads(path.read_text(encoding="utf-8")):
        count = row["instruction"].count("Answer") - row["instruction"].count("Answer format")
        options = [f"the correct answer is answer{k}" for k in range(1, max(count, 2) + 1)]
        records.append((row["instruction"], options, int(row["answer"].replace("answer", "")) - 1))
    return records


def _commonsenseqa(path: Path) -> list[tuple[str, list[str], int]]:
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        labels, texts = row["choices"]["label"], row["choices"]["text"]
        listing = " ".join(f"Answer{k + 1}: {t}" for k, t in enumerate(texts))
        instruction = f"Please choose the correct answer to the question: {row['question']}\n\n{listing}"
        records.append((instruction, [f"the correct answer is answer{k + 1}" for k in range(len(texts))],
                        labels.index(row["answerKey"])))
    return records


def _scienceqa(path: Path, split: str) -> list[tuple[str, list[str], int]]:
    import datasets

    ds = datasets.load_from_disk(str(path))[split]
    letters = "ABCDEFGH"
    return [(row["instruction"].strip(), [f"Answer: The answer is {letters[k]}." for k in range(len(row["choices"]))],
             letters.index(row["answer"])) for row in ds]


def load_finetune_task(task: str, path: str, split: str = "train") -> tuple[list[dict], list[MultipleChoiceItem]]:
    """(training rows, multiple-choice items) of ``task`` from ``path`` (``split`` for ScienceQA's folder)."""
    loaders = {"mrpc": _mrpc, "cola": _cola, "openbookqa": _llm_adapters, "arc_easy": _llm_adapters,
               "arc_challenge": _llm_adapters, "commonsenseqa": _commonsenseqa}
    if task == "scienceqa":
        return _rows_and_items(_scienceqa(Path(path), split))
    if task not in loaders:
        raise ValueError(f"unknown task {task!r}; choose from {TASKS}")
    return _rows_and_items(loaders[task](Path(path)))
