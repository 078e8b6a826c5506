"""A generated corpus of small algorithmic tasks (character level), deterministic from a seed.

Each sample is ``"<t>:<input>=<answer>"`` with task letter ``t``:

- ``copy``    ``c:dbca=dbca``
- ``reverse`` ``r:dbca=acbd``
- ``sort``    ``s:dbca=abcd``
- ``modadd``  ``m:372+581=853`` (digit-wise addition modulo 10)

Only the answer characters and the end-of-sequence token are labels (the prompt is context), so the loss
measures whether the model solves the task.
"""

from __future__ import annotations

import random

LETTERS = "abcdefgh"
DIGITS = "0123456789"
SPECIALS = ["<pad>", "<bos>", "<eos>"]
CHARS = list(dict.fromkeys(LETTERS + DIGITS + "crsm:=+"))  # unique, in order
VOCAB = SPECIALS + CHARS
TASKS = ("copy", "reverse", "sort", "modadd")


def _sample(task: str, rng: random.Random) -> tuple[str, str]:
    length = rng.randint(3, 6)
    if task == "modadd":
        x = "".join(rng.choice(DIGITS) for _ in range(length))
        y = "".join(rng.choice(DIGITS) for _ in range(length))
        answer = "".join(str((int(a) + int(b)) % 10) for a, b in zip(x, y))
        return f"m:{x}+{y}=", answer
    word = "".join(rng.choice(LETTERS) for _ in range(length))
    if task == "copy":
        return f"c:{word}=", word
    if task == "reverse":
        return f"r:{word}=", word[::-1]
    if task == "sort":
        return f"s:{word}=", "".join(sorted(word))
    raise ValueError(f"unknown task {task!r}; choose from {TASKS}")


def encode(text: str) -> list[int]:
    index = {ch: i for i, ch in enumerate(VOCAB)}
    return [index[ch] for ch in text]


def make_task_samples(task: str | list[str], num_samples: int, seed: int = 0) -> list[dict[str, list[int]]]:
    """Tokenized samples (``input_ids`` with BOS and EOS, ``labels`` on the answer and EOS only).

    ``task`` may be a list: samples then cycle through the tasks in order.
    """
    tasks = [task] if isinstance(task, str) else list(task)
    for name in tasks:
        if name not in TASKS:
            raise ValueError(f"unknown task {name!r}; choose from {TASKS}")
    rng = random.Random(f"{seed}-{'-'.join(tasks)}")
    out = []
    for i in range(num_samples):
        prompt, answer = _sample(tasks[i % len(tasks)], rng)
        prompt_ids = [VOCAB.index("<bos>")] + encode(prompt)
        answer_ids = encode(answer) + [VOCAB.index("<eos>")]
        out.append({"input_ids": prompt_ids + answer_ids, "labels": [-100] * len(prompt_ids) + answer_ids})
    return out


def build_tokenizer():
    """A character-level ``PreTrainedTokenizerFast`` over :data:`VOCAB` (adds BOS, pads with ``<pad>``)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(VOCAB)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<pad>")
