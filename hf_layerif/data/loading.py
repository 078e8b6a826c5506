"""Loading datasets for the CLI: local json/jsonl/csv/tsv/txt files, ``save_to_disk`` folders or Hub ids."""

from __future__ import annotations

import csv
import re
from pathlib import Path

LOCAL_SUFFIXES = (".json", ".jsonl", ".csv", ".tsv", ".txt")


def looks_local(spec: str) -> bool:
    """A spec written as a path (a known file suffix, or a leading ./ ../ / ~) is never sent to the Hub."""
    return spec.lower().endswith(LOCAL_SUFFIXES) or spec.startswith(("./", "../", "/", "~", ".\\"))


def _read_tsv(path: Path):
    """A tab-separated file with a header row, quoting off (GLUE's convention: MRPC's sentences hold bare quotes)
    and a UTF-8 byte-order mark tolerated; every column is a string."""
    import datasets

    with open(path, encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows:
        raise ValueError(f"{path} is empty.")
    header, body = rows[0], rows[1:]
    bad = [i + 2 for i, row in enumerate(body) if len(row) != len(header)]
    if bad:
        raise ValueError(f"{path}: lines {bad[:5]} have another number of fields than the header ({len(header)}).")
    return datasets.Dataset.from_dict({name: [row[j] for row in body] for j, name in enumerate(header)})


def load_hub_dataset(name: str, config: str | None = None, *, local_option: str, **kwargs):
    """``datasets.load_dataset(name, config, **kwargs)``, with an error that names the local replacement
    (``local_option``, e.g. ``"--calibration path/to/c4.jsonl"``) when the Hub cannot be reached."""
    import datasets

    from ..utils.offline import go_offline, is_connection_error, is_offline

    if is_offline():  # HF_HUB_OFFLINE=1 or an earlier failed connection: a cached copy, else fail at once
        datasets.config.HF_HUB_OFFLINE = True
    try:
        return datasets.load_dataset(name, config, **kwargs)
    except (ConnectionError, OSError, datasets.exceptions.DatasetNotFoundError) as err:
        if is_connection_error(err):
            go_offline(f"{type(err).__name__} loading {name!r}")
        raise ConnectionError(
            f"Could not load {name!r}{f' ({config})' if config else ''} from the Hugging Face Hub ({type(err).__name__}: "
            f"{str(err)[:200]}). Offline, use local files instead: {local_option}."
        ) from err


def check_model_source(spec: str, option: str = "--model") -> str:
    """``spec`` when it can name a model: an existing local folder, or something that is not written as a path (a
    Hub id). A path that does not exist raises at once, naming ``option``, before anything loads or asks the Hub."""
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise FileNotFoundError(f"{option} {spec}: a file, not a model folder; give the folder that holds "
                                    "config.json, or a Hub id (owner/name).")
        return spec
    if spec.startswith(("./", "../", "/", "~", ".\\")) or spec.count("/") > 1 or spec.endswith("/"):
        raise FileNotFoundError(f"{option} {spec}: no such folder (a local path, so the Hub was not asked); give an "
                                "existing model folder or a Hub id (owner/name).")
    return spec


def load_any_dataset(spec: str, split: str = "train", max_samples: int | None = None, seed: int | None = None):
    """Load ``spec`` as a ``datasets.Dataset``.

    - a ``.json`` / ``.jsonl`` / ``.csv`` file: loaded with the matching ``datasets`` builder;
    - a ``.tsv`` file: header row, tab-separated, quoting off (GLUE's format, e.g. MRPC ``train.tsv``);
    - a ``.txt`` file: paragraphs separated by blank lines, one sample each (column ``text``);
    - a folder written by ``save_to_disk`` (a ``DatasetDict`` picks ``split``);
    - anything else: a Hub dataset id (``"name"`` or ``"name:config"``), split ``split``.

    ``max_samples`` keeps the first samples (after a seeded shuffle when ``seed`` is given).
    """
    import datasets

    path = Path(spec).expanduser()
    if not path.exists() and looks_local(spec):
        raise FileNotFoundError(f"{spec}: no such file or folder (a local path, so the Hub was not asked).")
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in (".json", ".jsonl", ".csv") and not path.read_text(encoding="utf-8", errors="replace").strip():
            raise ValueError(f"{spec} is empty: it holds no samples. Give a file with samples (.jsonl: one JSON "
                             "object per line, e.g. {\"text\": ...}).")
        if suffix in (".json", ".jsonl"):
            ds = datasets.load_dataset("json", data_files=str(path), split="train")
        elif suffix == ".csv":
            ds = datasets.load_dataset("csv", data_files=str(path), split="train")
        elif suffix == ".tsv":
            ds = _read_tsv(path)
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
        ds = load_hub_dataset(name, config or None, split=split,
                              local_option="a local .json/.jsonl/.csv/.tsv/.txt file or a save_to_disk folder")
    if seed is not None:
        ds = ds.shuffle(seed=seed)
    if max_samples is not None:
        ds = ds.select(range(min(max_samples, len(ds))))
    if len(ds) == 0:
        raise ValueError(f"{spec} ({split}) has no samples.")
    return ds


def load_texts(source, *, local_option: str, split: str = "train", column: str = "text", **hub_kwargs) -> list[str]:
    """A list of texts from ``source``: a list of strings (kept), a local file or ``save_to_disk`` folder (see
    :func:`load_any_dataset`; column ``column``, else the first column), or a Hub id ``"name"`` /
    ``"name:config"`` loaded with ``hub_kwargs`` (split ``split``). A path that does not exist is reported as a
    missing file; an unreachable Hub names ``local_option``, the local replacement."""
    if isinstance(source, (list, tuple)):
        return [str(t) for t in source]
    spec = str(source)
    if Path(spec).expanduser().exists() or looks_local(spec):
        ds = load_any_dataset(spec, split=split)
    else:
        name, _, config = spec.partition(":")
        ds = load_hub_dataset(name, config or None, split=split, local_option=local_option, **hub_kwargs)
    return [str(t) for t in ds[column if column in ds.column_names else ds.column_names[0]]]


# a Hub dataset's repo id as it appears in the URLs datasets downloads from (its cache folder name is snake-cased,
# "owner___tiny_stories" for "owner/TinyStories", so it is not used)
_HUB_URL = re.compile(r"(?:hf://datasets/|huggingface\.co/datasets/)([\w.-]+/[\w.-]+?)(?:@|/|$)")


def hub_dataset_id(dataset) -> str | None:
    """The Hub repo id (``owner/name``) a ``datasets.Dataset`` was loaded from, read from its download URLs; None
    for local data, lists, or when it cannot be told (then pass the id yourself, e.g. ``dataset_names=``)."""
    info = getattr(dataset, "info", None)
    for url in (getattr(info, "download_checksums", None) or {}):
        found = _HUB_URL.search(str(url))
        if found:
            return found.group(1)
    return None
