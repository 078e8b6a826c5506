"""Perplexity the way SparseGPT / Wanda compute it: the test text joined with ``"\\n\\n"`` and tokenized once,
then non-overlapping windows of ``seqlen`` tokens; ppl = exp(Σ window NLL · seqlen / (windows · seqlen))."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..data.loading import load_texts


def load_wikitext2_test(source: str | None = None) -> str:
    """WikiText-2-raw test text joined with ``"\\n\\n"``: from a local ``.txt`` file (already joined, read as is),
    another local file with a ``text`` column (``.jsonl`` rows ``{"text": ...}``, ...), or the Hub
    (``wikitext``, ``wikitext-2-raw-v1``)."""
    if source is not None and not Path(source).exists():
        raise FileNotFoundError(f"WikiText-2 file {source} does not exist.")
    if source is not None and Path(source).suffix.lower() == ".txt":
        return Path(source).read_text(encoding="utf-8")
    rows = load_texts(source or "wikitext:wikitext-2-raw-v1", split="train" if source else "test",
                      local_option="--wikitext2 path/to/test.jsonl (rows {'text': ...}) or the joined test text")
    return "\n\n".join(rows)


@torch.no_grad()
def perplexity(model, tokenizer, text: str | None = None, seqlen: int = 2048, input_ids: torch.Tensor | None = None,
               max_windows: int | None = None, batch_size: int = 1) -> float:
    """Perplexity over non-overlapping ``seqlen`` windows of the tokenized ``text`` (or given ``input_ids`` [1, T])."""
    from ..models.checks import check_sequence_length

    seqlen = check_sequence_length(seqlen, model, "perplexity seqlen")
    if input_ids is None:
        if text is None:
            raise ValueError("pass text= or input_ids=")
        input_ids = tokenizer(text, return_tensors="pt").input_ids
    windows = input_ids.numel() // seqlen
    if max_windows is not None:
        windows = min(windows, max_windows)
    if windows == 0:
        raise ValueError(f"the text has {input_ids.numel()} tokens, fewer than seqlen={seqlen}.")
    ids = input_ids.reshape(-1)[: windows * seqlen].view(windows, seqlen)
    device = next(p for p in model.parameters() if p.device.type != "meta").device
    was_training = model.training
    model.eval()
    total = 0.0
    for start in range(0, windows, batch_size):
        batch = ids[start:start + batch_size].to(device)
        logits = model(input_ids=batch, use_cache=False).logits.float()
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1),
                                                 reduction="none").view(batch.shape[0], -1).mean(1)
        total += float(loss.sum()) * seqlen
    model.train(was_training)
    return math.exp(total / (windows * seqlen))
