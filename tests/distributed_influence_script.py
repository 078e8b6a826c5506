"""Run by tests/test_distributed.py under `accelerate launch --num_processes 2` (CPU, gloo)."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(1)

from accelerate import Accelerator  # noqa: E402
from conftest import random_samples, tiny_llama, with_lora  # noqa: E402

from hf_layerif import compute_layer_influence  # noqa: E402


def main(output: str) -> None:
    from hf_layerif.influence.streaming import StreamingStatistics

    stored_rows = []
    original_store = StreamingStatistics.store

    def counting_store(self, grads, indices):
        stored_rows.extend(indices.tolist())
        return original_store(self, grads, indices)

    StreamingStatistics.store = counting_store
    accelerator = Accelerator(cpu=True)
    model = with_lora(tiny_llama(torch.float64), randomize_b=True)
    train, val = random_samples(11, seed=21, prompt_mask=True), random_samples(5, seed=22)
    scores = compute_layer_influence(model, train, val, batch_size=2, accelerator=accelerator, progress=False,
                                     bootstrap_samples=0, output_dir=output, checkpoint_every=2)
    assert scores.num_train == 11, scores.num_train
    # DataInf keeps each sample's gradient on exactly one process
    from accelerate.utils import gather_object

    everyone = gather_object(stored_rows)
    assert sorted(everyone) == list(range(11)), everyone
    assert len(stored_rows) < 11, stored_rows
    StreamingStatistics.store = original_store
    if accelerator.is_main_process:
        print(f"processes={accelerator.num_processes}")

    # the same through the Trainer: its accelerator, collator and per-process sharded loaders
    from datasets import Dataset
    from transformers import TrainingArguments

    from hf_layerif import LayerInfluenceTrainer
    from hf_layerif.data import InfluenceCollator

    args = TrainingArguments(output_dir=output + "-trainer-run", per_device_eval_batch_size=2, report_to=[],
                             use_cpu=True, disable_tqdm=True)
    trainer = LayerInfluenceTrainer(model=model, args=args, train_dataset=Dataset.from_list(train),
                                    eval_dataset=Dataset.from_list(val), data_collator=InfluenceCollator(0))
    trainer.compute_layer_influence(progress=False, bootstrap_samples=0, output_dir=output + "-trainer")


if __name__ == "__main__":
    main(sys.argv[1])
