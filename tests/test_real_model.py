"""The real stories260K model with LoRA on all linear modules, scored on TinyStories (../shared/data)."""

import torch
from conftest import STORIES260K, TINYSTORIES_VAL, require_shared

from hf_layerif import LayerInfluenceScores, compute_layer_influence


def _paragraphs(count, skip=0):
    text = TINYSTORIES_VAL.read_text(encoding="utf-8", errors="replace")
    paragraphs = [p.strip() for p in text.split("\n\n") if len(p.strip()) > 40]
    return paragraphs[skip:skip + count]


def test_stories260k_scores_all_blocks(tmp_path):
    require_shared()
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(STORIES260K)
    model = AutoModelForCausalLM.from_pretrained(STORIES260K, dtype=torch.float32)
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    train, validation = _paragraphs(24), _paragraphs(8, skip=100)
    scores = compute_layer_influence(model, train, validation, tokenizer=tokenizer, max_length=128, batch_size=8,
                                     output_dir=tmp_path, progress=False, bootstrap_samples=50, fit_steps=0)
    assert scores.num_blocks == 5 and scores.num_train == 24
    assert scores.block_names == [f"model.layers.{i}" for i in range(5)]
    assert torch.isfinite(scores.influence).all()
    assert scores.influence.abs().sum() > 0
    assert (scores.block_scores() >= 0).all()
    # a fresh adapter (B = 0) has only B gradients: 7 modules x out x r per block
    assert scores.provenance["blocks"]["tracked_dims"][0] > 0
    loaded = LayerInfluenceScores.from_pretrained(tmp_path)
    assert torch.equal(loaded.influence, scores.influence)
    assert loaded.plot(tmp_path / "scores.png").stat().st_size > 10_000
    # the per-sample training losses are the model's own losses (NLL around 1.3-2 on TinyStories)
    assert 0.5 < float(scores.train_losses.mean()) < 3.0
