"""Right-padding collator producing ``input_ids``, ``attention_mask`` and ``labels`` (-100 on padding)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class InfluenceCollator:
    """Pads a list of examples (dicts of int lists) to the longest one.

    Args:
        pad_token_id: id used to pad ``input_ids`` (padding positions get attention mask 0 and label -100).
    """

    pad_token_id: int = 0

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        length = max(len(e["input_ids"]) for e in examples)
        B = len(examples)
        input_ids = torch.full((B, length), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros((B, length), dtype=torch.long)
        labels = torch.full((B, length), -100, dtype=torch.long)
        for i, example in enumerate(examples):
            ids = list(example["input_ids"])
            T = len(ids)
            input_ids[i, :T] = torch.tensor(ids, dtype=torch.long)
            mask = example.get("attention_mask")
            attention[i, :T] = torch.tensor(mask, dtype=torch.long) if mask is not None else 1
            lab = example.get("labels")
            labels[i, :T] = torch.tensor(lab, dtype=torch.long) if lab is not None else input_ids[i, :T]
            labels[i, :T][attention[i, :T] == 0] = -100
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
