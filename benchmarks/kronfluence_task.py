"""A kronfluence ``Task`` with this package's per-sample loss, for side-by-side comparisons (optional).

kronfluence reports positive = helpful (no minus sign) and expects a summed training loss; with the loss below
(the sum of per-sample mean token cross-entropies), its ``identity`` per-module pairwise scores averaged over the
queries and summed per block equal −``tracin`` of this package.
"""

from __future__ import annotations

from torch import nn

from hf_layerif.influence.capture import per_sample_loss


def make_kronfluence_task(model: nn.Module, adapter_suffixes: tuple[str, ...] = ("lora_A.default", "lora_B.default")):
    """A ``kronfluence.task.Task`` tracking the LoRA A/B modules of ``model`` (kronfluence must be installed)."""
    from kronfluence.task import Task

    names = [n for n, _ in model.named_modules() if n.endswith(adapter_suffixes)]

    class LayerIFComparisonTask(Task):
        def compute_train_loss(self, batch, model, sample=False):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            return per_sample_loss(logits, batch["labels"]).sum()

        def compute_measurement(self, batch, model):
            return self.compute_train_loss(batch, model)

        def get_influence_tracked_modules(self):
            return names

        def get_attention_mask(self, batch):
            return batch["attention_mask"]

    return LayerIFComparisonTask()
