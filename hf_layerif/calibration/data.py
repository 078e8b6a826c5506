"""Calibration sequences the way the pruning papers draw them (SparseGPT / Wanda / OWL).

``nsamples`` windows of ``seqlen`` tokens: with ``random.seed(seed)``, pick a random document whose tokenization
is longer than ``seqlen`` and a random window inside it. The length is never derived from the model's
``max_position_embeddings`` (32768 for Mistral would be a 32 GiB buffer).
"""

from __future__ import annotations

import random

import torch

from ..data.loading import load_texts

C4_HUB_ID = "allenai/c4"
C4_FIRST_SHARD = "en/c4-train.00000-of-01024.json.gz"


def _load_texts(source) -> list[str]:
    offline = ("--calibration (calibration= in PruningConfig) set to a local json/jsonl/txt file with a 'text' "
               "column, e.g. the first C4 shard's documents as jsonl")
    if source in ("c4", C4_HUB_ID):  # the papers' draw: the first shard of C4's English training split
        return load_texts(C4_HUB_ID, local_option=offline, data_files={"train": C4_FIRST_SHARD})
    return load_texts(source, local_option=offline)


def get_calibration_data(tokenizer, source="c4", nsamples: int = 128, seqlen: int = 2048, seed: int = 0,
                         max_tries: int = 100_000) -> torch.Tensor:
    """Calibration token ids, shape [nsamples, seqlen] (long).

    Args:
        tokenizer: the model's tokenizer.
        source: ``"c4"`` (the shard the papers use, from the Hub), a local json/jsonl/txt/csv file or
            ``save_to_disk`` folder (column ``text``), a Hub dataset id, or a list of strings.
        nsamples, seqlen, seed: as in the papers (128 × 2048, seed 0).
    Raises:
        ValueError: when no document is longer than ``seqlen`` tokens (lower ``seqlen`` or use other data).
    """
    if nsamples < 1 or seqlen < 2:
        raise ValueError("nsamples must be >= 1 and seqlen >= 2.")
    texts = load_calibration_texts(source)
    return draw_windows(tokenizer, texts, nsamples, seqlen, seed, max_tries=max_tries)[0]


def get_calibration_and_selection_data(tokenizer, source, nsamples: int, seqlen: int, seed: int,
                                       selection_nsamples: int, selection_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Calibration windows (exactly those of :func:`get_calibration_data` with the same arguments) and a selection
    split of ``selection_nsamples`` windows drawn with ``selection_seed`` from the *other* documents of the same
    source, so no selection token comes from a document that calibration read. Both [n, seqlen] long."""
    texts = load_calibration_texts(source)
    calibration, used = draw_windows(tokenizer, texts, nsamples, seqlen, seed)
    if len(used) >= len(texts):
        raise ValueError(f"the calibration source has {len(texts)} documents and calibration used all of them, so no "
                         "disjoint selection split is left; give more calibration text, lower nsamples, or pass "
                         "selection token ids (selection_dataset=).")
    selection, _ = draw_windows(tokenizer, texts, selection_nsamples, seqlen, selection_seed, exclude=used,
                                what="selection")
    return calibration, selection


def load_calibration_texts(source) -> list[str]:
    """The documents of a calibration source (see :func:`get_calibration_data`); raises when there are none."""
    texts = _load_texts(source)
    if not texts:
        raise ValueError(f"calibration source {source!r} has no text.")
    return texts


def draw_windows(tokenizer, texts: list[str], nsamples: int, seqlen: int, seed: int, exclude: set[int] | None = None,
                 max_tries: int = 100_000, what: str = "calibration") -> tuple[torch.Tensor, set[int]]:
    """``nsamples`` windows of ``seqlen`` tokens as the papers draw them: with ``random.Random(seed)`` pick a random
    document longer than ``seqlen`` tokens (documents in ``exclude`` are skipped) and a random window inside it.

    Returns:
        (token ids [nsamples, seqlen] long, indices of the documents the windows came from).
    """
    if nsamples < 1 or seqlen < 2:
        raise ValueError("nsamples must be >= 1 and seqlen >= 2.")
    exclude = exclude or set()
    rng = random.Random(seed)
    lengths: dict[int, list[int]] = {}
    samples = []
    used: set[int] = set()
    tries = 0
    while len(samples) < nsamples:
        tries += 1
        if tries > max_tries:
            longest = max((len(v) for v in lengths.values()), default=0)
            raise ValueError(f"no {what} document is longer than seqlen={seqlen} tokens (longest seen: {longest}"
                             f"{f', {len(exclude)} documents reserved for calibration' if exclude else ''}); lower "
                             "seqlen or give longer texts.")
        i = rng.randint(0, len(texts) - 1)
        if i in exclude:
            continue
        if i not in lengths:
            lengths[i] = list(tokenizer(texts[i])["input_ids"])
        ids = lengths[i]
        if len(ids) <= seqlen:
            continue
        start = rng.randint(0, len(ids) - seqlen - 1)
        samples.append(ids[start:start + seqlen])
        used.add(i)
    return torch.tensor(samples, dtype=torch.long), used
