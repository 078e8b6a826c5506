"""Transformer block discovery across architectures and wrappers."""

import pytest
import torch
from torch import nn
from transformers import (
    BertConfig,
    BertModel,
    GemmaConfig,
    GemmaForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    OPTConfig,
    OPTForCausalLM,
    PhiConfig,
    PhiForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from hf_layerif.models.blocks import find_transformer_blocks, normalize_module_name, tracked_modules

SMALL = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=4)

CASES = [
    (lambda: MistralForCausalLM(MistralConfig(**SMALL, num_key_value_heads=2)), "model.layers", "MistralDecoderLayer"),
    (lambda: GemmaForCausalLM(GemmaConfig(**SMALL, num_key_value_heads=2, head_dim=4)), "model.layers", "GemmaDecoderLayer"),
    (lambda: Qwen2ForCausalLM(Qwen2Config(**SMALL, num_key_value_heads=2)), "model.layers", "Qwen2DecoderLayer"),
    (lambda: GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=3, n_head=2)), "transformer.h", "GPT2Block"),
    (lambda: GPTNeoXForCausalLM(GPTNeoXConfig(**SMALL)), "gpt_neox.layers", "GPTNeoXLayer"),
    (lambda: OPTForCausalLM(OPTConfig(vocab_size=64, hidden_size=16, ffn_dim=32, num_hidden_layers=3,
                                      num_attention_heads=4, word_embed_proj_dim=16)), "model.decoder.layers", "OPTDecoderLayer"),
    (lambda: PhiForCausalLM(PhiConfig(**SMALL)), "model.layers", "PhiDecoderLayer"),
    (lambda: BertModel(BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=3, num_attention_heads=4,
                                  intermediate_size=32)), "encoder.layer", "BertLayer"),
]


@pytest.mark.parametrize("build,prefix,cls", CASES)
def test_blocks_found_from_model_structure(build, prefix, cls):
    model = build()
    blocks = find_transformer_blocks(model)
    assert blocks.names == [f"{prefix}.{i}" for i in range(3)]
    assert blocks.block_class == cls
    assert all(len(mods) > 0 for mods in tracked_modules(blocks, "full"))


def test_peft_and_wrapper_prefixes_are_normalised():
    from peft import LoraConfig, get_peft_model

    model = MistralForCausalLM(MistralConfig(**SMALL, num_key_value_heads=2))
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules="all-linear"))
    assert find_transformer_blocks(peft_model).names == [f"model.layers.{i}" for i in range(3)]
    lora = tracked_modules(find_transformer_blocks(peft_model), "lora")
    assert len(lora[0]) == 14  # A and B of 7 linears
    assert all(".lora_" not in m.name for m in tracked_modules(find_transformer_blocks(peft_model), "full")[0])
    assert normalize_module_name("_fsdp_wrapped_module.model._orig_mod.layers.0._checkpoint_wrapped_module.mlp") == "model.layers.0.mlp"


def test_compiled_wrapper_and_fsdp_like_children():
    class Wrapper(nn.Module):  # what FSDP / checkpoint wrappers look like from outside
        def __init__(self, inner):
            super().__init__()
            self._fsdp_wrapped_module = inner

    model = MistralForCausalLM(MistralConfig(**SMALL, num_key_value_heads=2))
    model.model.layers = nn.ModuleList([Wrapper(layer) for layer in model.model.layers])
    blocks = find_transformer_blocks(model)
    assert blocks.names == [f"model.layers.{i}" for i in range(3)]
    assert blocks.block_class == "MistralDecoderLayer"
    compiled = torch.compile(MistralForCausalLM(MistralConfig(**SMALL, num_key_value_heads=2)))
    assert find_transformer_blocks(compiled).names == [f"model.layers.{i}" for i in range(3)]


def test_block_pattern_override_and_clear_error():
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=3, n_head=2))
    blocks = find_transformer_blocks(model, block_pattern=r"transformer\.h\.[02]")
    assert blocks.names == ["transformer.h.0", "transformer.h.2"]
    with pytest.raises(ValueError, match="block_pattern"):
        find_transformer_blocks(model, block_pattern=r"nothing\.\d+")

    class NoBlocks(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(3, 3)

    with pytest.raises(ValueError, match="block_pattern"):
        find_transformer_blocks(NoBlocks())


def test_linear_params_per_block_excludes_adapters():
    from peft import LoraConfig, get_peft_model

    model = MistralForCausalLM(MistralConfig(**SMALL, num_key_value_heads=2))
    expected = 16 * 16 * 2 + 8 * 16 * 2 + 32 * 16 * 3  # q, o; k, v (2 KV heads of 4); gate, up, down
    assert find_transformer_blocks(model).linear_params_per_block() == [expected] * 3
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules="all-linear"))
    assert find_transformer_blocks(peft_model).linear_params_per_block() == [expected] * 3
