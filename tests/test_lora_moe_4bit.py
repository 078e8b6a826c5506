"""QLoRA-MoE: a LayerIF adapter on a bitsandbytes 4-bit (and 8-bit) base, on the CPU (skipped without
bitsandbytes)."""

import pytest
import torch
from conftest import tiny_llama

pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed (extra: hf-layerif[quantization])")
pytestmark = pytest.mark.optional

# Shapes every bitsandbytes CPU path accepts: its AVX512-BF16 4-bit kernel repacks weights in blocks of 32 output
# rows (q: 64, k/v: 32, o: 64, gate/up: 64, down: 64 outputs), so the tests pass on any x86-64 CPU.
SHAPES = dict(hidden=64, intermediate=64)


def test_four_bit_base_trains_saves_and_reloads(tmp_path):
    from peft import PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from hf_layerif import LayerIFConfig
    from hf_layerif.tuners import Linear as MoELinear

    tiny_llama(layers=2, **SHAPES).save_pretrained(tmp_path / "base")
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32)

    def load():
        return AutoModelForCausalLM.from_pretrained(tmp_path / "base", quantization_config=quant, device_map="cpu")

    base = load()
    assert type(base.model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    ids = torch.randint(3, 50, (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # the inference path (AVX512-BF16 CPUs repack and compute in bf16 there), as below
        base_logits = base(input_ids=ids).logits.clone()
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
        torch.testing.assert_close(model(input_ids=ids).logits, base_logits, rtol=1e-5, atol=1e-6)
    expected = model(input_ids=ids).logits
    model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(load(), tmp_path / "adapter").eval()
    torch.testing.assert_close(reloaded(input_ids=ids).logits, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(expected, base_logits, atol=1e-3)  # the adapter really changes the output


def test_eight_bit_base_trains(tmp_path):
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from hf_layerif import LayerIFConfig
    from hf_layerif.tuners import Linear as MoELinear

    tiny_llama(layers=2, **SHAPES).save_pretrained(tmp_path / "base")
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


def test_four_bit_shapes_the_cpu_kernel_rejects_get_a_clear_error(tmp_path, monkeypatch):
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from hf_layerif import LayerIFConfig
    from hf_layerif.models import checks

    tiny_llama(layers=2).save_pretrained(tmp_path / "base")  # k/v: 8 outputs, gate/up: 24
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base", device_map="cpu", quantization_config=BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32))
    monkeypatch.setattr(checks, "_bnb_cpu_packing_active", lambda: True)  # as on an AVX512-BF16 CPU
    with pytest.raises(ValueError, match=r"out_features divisible by 32.*k_proj \(out_features=8"):
        get_peft_model(base, LayerIFConfig(experts_per_layer=[2, 3], task_type="CAUSAL_LM"))
    monkeypatch.setattr(checks, "_bnb_cpu_packing_active", lambda: False)  # other CPUs: any shape runs
    get_peft_model(base, LayerIFConfig(experts_per_layer=[2, 3], task_type="CAUSAL_LM"))
