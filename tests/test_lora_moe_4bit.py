"""QLoRA-MoE: a LayerIF adapter on a bitsandbytes 4-bit (and 8-bit) base, on the CPU (skipped without
bitsandbytes)."""

import pytest
import torch
from conftest import tiny_llama

pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed (extra: hf-layerif[quantization])")
pytestmark = pytest.mark.optional


def test_four_bit_base_trains_saves_and_reloads(tmp_path):
    from peft import PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from hf_layerif import LayerIFConfig
    from hf_layerif.tuners import Linear as MoELinear

    tiny_llama(layers=2).save_pretrained(tmp_path / "base")
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32)

    def load():
        return AutoModelForCausalLM.from_pretrained(tmp_path / "base", quantization_config=quant, device_map="cpu")

    base = load()
    assert type(base.model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    ids = torch.randint(3, 50, (2, 6), generator=torch.Generator().manual_seed(0))
    base_logits = base(input_ids=ids).logits.detach().clone()
    model = get_peft_model(base, LayerIFConfig(experts_per_layer=[2, 3], task_type="CAUSAL_LM", lora_dropout=0.0))
    layer = next(m for m in model.modules() if isinstance(m, MoELinear))
    assert layer.layerif_A["default"].dtype == torch.float32
    model.train()
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    assert layer.layerif_router["default"].weight.grad is not None
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "layerif_B" in n:
                p.normal_(std=0.1)
    model.eval()
    with model.disable_adapter():
        assert torch.equal(model(input_ids=ids).logits, base_logits)
    expected = model(input_ids=ids).logits
    model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(load(), tmp_path / "adapter").eval()
    assert torch.equal(reloaded(input_ids=ids).logits, expected)


def test_eight_bit_base_trains(tmp_path):
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from hf_layerif import LayerIFConfig
    from hf_layerif.tuners import Linear as MoELinear

    tiny_llama(layers=2).save_pretrained(tmp_path / "base")
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base", device_map="cpu",
                                                quantization_config=BitsAndBytesConfig(load_in_8bit=True))
    assert type(base.model.layers[0].self_attn.q_proj).__name__ == "Linear8bitLt"
    model = get_peft_model(base, LayerIFConfig(experts_per_layer=[2, 3], task_type="CAUSAL_LM", lora_dropout=0.0))
    model.train()
    ids = torch.randint(3, 50, (2, 6), generator=torch.Generator().manual_seed(0))
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    layer = next(m for m in model.modules() if isinstance(m, MoELinear))
    assert torch.isfinite(out.loss) and layer.layerif_router["default"].weight.grad is not None
