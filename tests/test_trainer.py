"""LayerInfluenceTrainer gives the same scores as compute_layer_influence, before and after training."""

import torch
from conftest import random_samples, tiny_llama, with_lora
from datasets import Dataset
from transformers import TrainingArguments

from hf_layerif import LayerInfluenceTrainer, compute_layer_influence
from hf_layerif.data import InfluenceCollator


def _trainer(model, train, val, tmp_path, **kwargs):
    args = TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=3, per_device_train_batch_size=4,
                             num_train_epochs=1, learning_rate=1e-2, report_to=[], use_cpu=True,
                             disable_tqdm=True, save_strategy="no", **kwargs)
    return LayerInfluenceTrainer(model=model, args=args, train_dataset=Dataset.from_list(train),
                                 eval_dataset=Dataset.from_list(val), data_collator=InfluenceCollator(0))


def test_trainer_scores_equal_plain_api_before_and_after_training(tmp_path):
    model = with_lora(tiny_llama(torch.float32), randomize_b=True)
    train, val = random_samples(7, seed=1, prompt_mask=True), random_samples(4, seed=2)
    trainer = _trainer(model, train, val, tmp_path)
    before = trainer.compute_layer_influence(progress=False, bootstrap_samples=0, output_dir=tmp_path / "scores")
    expected = compute_layer_influence(model, train, val, batch_size=5, progress=False, bootstrap_samples=0)
    torch.testing.assert_close(before.influence, expected.influence, rtol=1e-4, atol=1e-5 * expected.influence.abs().max().item())
    assert (tmp_path / "scores" / "influence.safetensors").exists()
    trainer.train()
    after = trainer.compute_layer_influence(progress=False, bootstrap_samples=0)
    expected_after = compute_layer_influence(model, train, val, progress=False, bootstrap_samples=0)
    torch.testing.assert_close(after.influence, expected_after.influence, rtol=1e-4,
                               atol=1e-5 * expected_after.influence.abs().max().item())
    assert not torch.allclose(after.influence, before.influence)
    assert model.training  # the Trainer's model state is restored
