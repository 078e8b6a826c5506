import os
import tempfile
from pathlib import Path

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
# keep caches (demo model, PL_Alpha_Hill) of the test run out of the user's cache folder
os.environ["HF_LAYERIF_CACHE"] = tempfile.mkdtemp(prefix="hf-layerif-test-cache-")
torch.set_num_threads(1)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SHARED_DATA = SHARED / "data"
STORIES260K = SHARED_DATA / "models" / "stories260K"
TINYSTORIES_VAL = SHARED_DATA / "text" / "tinystories" / "tinystories_val_head.txt"


def require_shared():
    if not STORIES260K.exists():
        pytest.skip(f"real model/data not available: {STORIES260K} is absent")


def tiny_llama(dtype=torch.float32, layers=3, seed=0, vocab=50, hidden=16, intermediate=24):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         attn_implementation="eager")
    return LlamaForCausalLM(config).to(dtype).eval()


def with_lora(model, r=4, seed=1, randomize_b=False):
    """A LoRA adapter on all linear modules. ``randomize_b`` gives B non-zero values (test-only, so that A
    gradients are non-zero too; never done behind a user's back)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=8, lora_dropout=0.1, target_modules="all-linear"))
    if randomize_b:
        gen = torch.Generator().manual_seed(seed + 100)
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                with torch.no_grad():
                    p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype) * 0.3)
    return peft_model


def random_samples(n, vocab=50, min_len=4, max_len=9, seed=0, prompt_mask=False):
    gen = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(n):
        T = int(torch.randint(min_len, max_len + 1, (1,), generator=gen))
        ids = torch.randint(3, vocab, (T,), generator=gen).tolist()
        example = {"input_ids": ids}
        if prompt_mask:
            cut = int(torch.randint(1, T - 1, (1,), generator=gen))
            example["labels"] = [-100] * cut + ids[cut:]
        samples.append(example)
    return samples
