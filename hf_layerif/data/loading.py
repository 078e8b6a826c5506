"""Loading datasets for the CLI: local json/jsonl/csv/tsv/txt files, ``save_to_disk`` folders or Hub ids."""

from __future__ import annotations

from pathlib import Path


def load_any_dataset(spec: str, split: str = "train", max_samples: int | None = None, seed: int | None = None):
    """Load ``spec`` as a ``datasets.Dataset``.

    - a ``.json`` / ``.jsonl`` / ``.csv`` / ``.tsv`` file: loaded with the matching ``datasets`` builder;
    - a ``.txt`` file: paragraphs separated by blank lines, one sample each (column ``text``);
    - a folder written by ``save_to_disk`` (a ``DatasetDict`` picks ``split``);
    - anything else: a Hub dataset id (``"name"`` or ``"name:config"``), split ``split``.

    ``max_samples`` keeps the first samples (after a seeded shuffle when ``seed`` is given).
    """
    import datasets

    path = Path(spec)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in (".json", ".jsonl"):
            ds = datasets.load_dataset("json", data_files=str(path), split="train")
        elif suffix == ".csv":
            ds = datasets.load_dataset("csv", data_files=str(path), split="train")
        elif suffix == ".tsv":
            ds = datasets.load_dataset("csv", data_files=str(path), split="train", delimiter="\t")
        elif suffix == ".txt":
            text = path.read_text(encoding="utf-8", errors="replace")
            paragraphs = [p.strip() for p in text.replace("\r\n", "\n").split("\n\n") if p.strip()]
            ds = datasets.Dataset.from_dict({"text": paragraphs})
        else:
            raise ValueError(f"{spec}: unsupported file type {suffix!r}; use .json, .jsonl, .csv, .tsv or .txt.")
    elif path.is_dir():
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ValueError(f"{spec} has splits {list(loaded)}; choose one with the split option.")
            loaded = loaded[split]
        ds = loaded
    else:
        name, _, config = spec.partition(":")
        ds = datasets.load_dataset(name, config or None, split=split)
    if seed is not None:
        ds = ds.shuffle(seed=seed)
    if max_samples is not None:
        ds = ds.select(range(min(max_samples, len(ds))))
    if len(ds) == 0:
        raise ValueError(f"{spec} ({split}) has no samples.")
    return ds
