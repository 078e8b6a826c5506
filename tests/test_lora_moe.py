"""The LayerIF LoRA-MoE tuner: registration, layer math, PEFT round trips, Trainer integration."""

import json
import subprocess
import sys

import pytest
import torch
from peft import LoraConfig, PeftModel, PeftType, get_peft_model
from transformers import (
    GemmaConfig,
    GemmaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from hf_layerif import LayerIFConfig, load_model
from hf_layerif.tuners import Linear as MoELinear

SMALL = dict(vocab_size=50, hidden_size=16, intermediate_size=24, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2)
BUILDERS = {
    "llama": lambda: __import__("conftest").tiny_llama(layers=4),
    "mistral": lambda: MistralForCausalLM(MistralConfig(**SMALL)),
    "gemma": lambda: GemmaForCausalLM(GemmaConfig(**SMALL, head_dim=4)),
    "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(**SMALL)),
}


def _moe(name="llama", experts=(1, 2, 3, 4), seed=0, **kwargs):
    torch.manual_seed(seed)
    model = BUILDERS[name]().eval()
    options = dict(r=4, lora_alpha=8, lora_dropout=0.0, top_k=2)
    options.update(kwargs)
    peft_model = get_peft_model(model, LayerIFConfig(experts_per_layer=list(experts), task_type="CAUSAL_LM", **options))
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "layerif_B" in n:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return peft_model


def _ids(B=3, T=6, seed=0):
    return torch.randint(3, 50, (B, T), generator=torch.Generator().manual_seed(seed))


def test_peft_type_registered_as_enum_member():
    assert PeftType.LAYERIF.value == "LAYERIF" and PeftType("LAYERIF") is PeftType.LAYERIF
    assert isinstance(PeftType.LAYERIF, PeftType) and "LAYERIF" in [m.value for m in PeftType]
    from hf_layerif.tuners import register
    from hf_layerif.tuners.peft_type import ensure_peft_type

    register()  # idempotent
    assert ensure_peft_type() is PeftType.LAYERIF


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_sparse_dispatch_equals_dense_reference_and_gradients_flow(name):
    model = _moe(name)
    layers = [m for m in model.modules() if isinstance(m, MoELinear)]
    counts = sorted({m.num_experts["default"] for m in layers})
    assert counts == [1, 2, 3, 4]
    ids = _ids()
    outputs = {}
    for mode in ("dense", "sparse", "gated", "auto"):
        for m in layers:
            m.dispatch["default"] = mode
        outputs[mode] = model(input_ids=ids).logits
    for mode in ("sparse", "gated", "auto"):
        torch.testing.assert_close(outputs[mode], outputs["dense"], rtol=1e-5, atol=1e-6)
    for m in layers:
        m.dispatch["default"] = "sparse"
    model.train()
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    for m in layers:
        E = m.num_experts["default"]
        grad_b = m.layerif_B["default"].grad
        if E == 1:
            assert grad_b.abs().sum() > 0
            continue
        used = m.router_state["default"].counts > 0
        assert bool((grad_b.flatten(1).abs().sum(1)[used] > 0).all()), "every expert that got tokens gets gradient"
        assert m.layerif_router["default"].weight.grad.abs().sum() > 0


def test_gated_and_sparse_paths_give_the_same_gradients():
    grads = {}
    for mode in ("sparse", "gated"):
        model = _moe(router_z_loss_coef=0.1)
        for m in model.modules():
            if isinstance(m, MoELinear):
                m.dispatch["default"] = mode
        model.train()
        ids = _ids(seed=5)
        model(input_ids=ids, labels=ids).loss.backward()
        grads[mode] = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    for name, grad in grads["sparse"].items():
        torch.testing.assert_close(grads["gated"][name], grad, rtol=1e-4, atol=1e-6)


def test_one_expert_blocks_equal_plain_lora():
    torch.manual_seed(0)
    base = BUILDERS["llama"]().eval()
    lora = get_peft_model(BUILDERS["llama"]().eval(), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear"))
    lora.base_model.model.load_state_dict(base.state_dict(), strict=False)
    moe = get_peft_model(base, LayerIFConfig(num_experts=1, r=4, lora_alpha=8, lora_dropout=0.0))
    gen = torch.Generator().manual_seed(3)
    lora_modules = dict(lora.named_modules())
    for name, module in moe.named_modules():
        if isinstance(module, MoELinear):
            target = lora_modules[name]
            assert "default" not in module.layerif_router
            with torch.no_grad():
                target.lora_B["default"].weight.copy_(torch.randn(target.lora_B["default"].weight.shape, generator=gen))
                module.layerif_A["default"][0].copy_(target.lora_A["default"].weight.T)
                module.layerif_B["default"][0].copy_(target.lora_B["default"].weight.T)
    ids = _ids()
    torch.testing.assert_close(moe(input_ids=ids).logits, lora(input_ids=ids).logits, rtol=1e-6, atol=1e-6)


def test_disable_adapter_gives_base_and_merge_is_refused():
    torch.manual_seed(0)
    base = BUILDERS["llama"]().eval()
    ids = _ids()
    expected = base(input_ids=ids).logits.detach().clone()
    model = _moe()
    with model.disable_adapter():
        assert torch.equal(model(input_ids=ids).logits, expected)
    assert not torch.allclose(model(input_ids=ids).logits, expected)
    with pytest.raises(ValueError, match="cannot be merged"):
        model.merge_and_unload()


def test_router_loss_is_one_for_uniform_routing_and_added_in_training():
    from hf_layerif.tuners.layer import LayerIFLayer

    E, N = 4, 8
    probs = torch.full((N, E), 1.0 / E)
    top_i = torch.tensor([[e % E, (e + 1) % E] for e in range(N)])
    assert float(LayerIFLayer.load_balancing_loss(top_i, probs, E)) == pytest.approx(1.0)
    model = _moe(router_aux_loss_coef=0.5)
    ids = _ids()
    model.eval()
    eval_loss = model(input_ids=ids, labels=ids).loss
    model.train()
    train_loss = model(input_ids=ids, labels=ids).loss
    router = model.base_model.router_loss()
    torch.testing.assert_close(train_loss, eval_loss + router)
    assert 0.5 * 0.9 < float(router.detach()) < 0.5 * 4  # coefficient × a loss near 1 for a fresh router


def test_config_validation_before_injection(caplog):
    with pytest.raises(ValueError, match="4 Transformer blocks"):
        get_peft_model(BUILDERS["llama"](), LayerIFConfig(experts_per_layer=[2, 2, 2]))
    with pytest.raises(ValueError, match=">= 1"):
        LayerIFConfig(experts_per_layer=[2, 0, 1, 1])
    model = get_peft_model(BUILDERS["llama"](), LayerIFConfig(experts_per_layer=[1, 2, 3, 4], top_k=3,
                                                             experts_pattern={"q_proj": 5}))
    layers = {n: m for n, m in model.named_modules() if isinstance(m, MoELinear)}
    assert layers["base_model.model.model.layers.1.mlp.up_proj"].top_k["default"] == 2  # clamped to E_l
    assert layers["base_model.model.model.layers.0.self_attn.q_proj"].num_experts["default"] == 5  # pattern wins


def test_refuses_meta_offloaded_weights():
    from accelerate import cpu_offload

    model = cpu_offload(BUILDERS["llama"](), execution_device=torch.device("cpu"))
    with pytest.raises(ValueError, match="meta"):
        get_peft_model(model, LayerIFConfig(num_experts=2))


def test_bf16_base_keeps_adapter_and_router_in_fp32():
    torch.manual_seed(0)
    model = get_peft_model(BUILDERS["llama"]().to(torch.bfloat16), LayerIFConfig(num_experts=3, task_type="CAUSAL_LM"))
    layer = next(m for m in model.modules() if isinstance(m, MoELinear))
    assert layer.layerif_A["default"].dtype == torch.float32
    assert layer.layerif_router["default"].weight.dtype == torch.float32
    out = model(input_ids=_ids()).logits
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_save_reload_bit_exact_and_config_records_experts(tmp_path):
    from peft import AutoPeftModelForCausalLM

    model = _moe()
    ids = _ids()
    expected = model(input_ids=ids).logits
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LAYERIF" and config["experts_per_layer"] == [1, 2, 3, 4]
    torch.manual_seed(0)
    reloaded = PeftModel.from_pretrained(BUILDERS["llama"]().eval(), tmp_path)
    assert torch.equal(reloaded(input_ids=ids).logits, expected)
    torch.manual_seed(0)
    assert torch.equal(load_model(BUILDERS["llama"]().eval(), tmp_path)(input_ids=ids).logits, expected)
    # AutoPeftModel reloads the base model from base_model_name_or_path: save a base model to point at
    torch.manual_seed(0)
    base = BUILDERS["llama"]()
    base.save_pretrained(tmp_path / "base")
    config["base_model_name_or_path"] = str(tmp_path / "base")
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    auto = AutoPeftModelForCausalLM.from_pretrained(tmp_path).eval()
    # the reloaded base may pick another attention kernel (sdpa vs eager): equal to float32 round-off
    torch.testing.assert_close(auto(input_ids=ids).logits, expected, rtol=1e-5, atol=1e-6)
    auto_state = {k: v for k, v in auto.state_dict().items() if "layerif_" in k}
    model_state = {k: v for k, v in model.state_dict().items() if "layerif_" in k}
    assert auto_state.keys() == model_state.keys()
    assert all(torch.equal(auto_state[k], model_state[k]) for k in model_state)


def test_fresh_process_reload_with_and_without_import(tmp_path):
    model = _moe()
    model.save_pretrained(tmp_path / "adapter")
    torch.manual_seed(0)
    BUILDERS["llama"]().save_pretrained(tmp_path / "base")
    code = f"""
import sys
import torch
from transformers import AutoModelForCausalLM
from peft import PeftModel
base = AutoModelForCausalLM.from_pretrained({str(tmp_path / 'base')!r})
{{import_line}}
try:
    model = PeftModel.from_pretrained(base, {str(tmp_path / 'adapter')!r})
except KeyError as err:
    print("KEYERROR", err)
    sys.exit(3)
print("LOADED", type(model.base_model).__name__)
"""
    without = subprocess.run([sys.executable, "-c", code.replace("{import_line}", "")], capture_output=True, text=True, timeout=300)
    assert without.returncode == 3 and "LAYERIF" in without.stdout
    with_import = subprocess.run([sys.executable, "-c", code.replace("{import_line}", "import hf_layerif")],
                                 capture_output=True, text=True, timeout=300)
    assert with_import.returncode == 0, with_import.stderr[-2000:]
    assert "LOADED LayerIFModel" in with_import.stdout


def test_allocation_to_peft_config():
    from hf_layerif.allocation import Allocation

    alloc = Allocation("experts", [1, 3, 2, 4], "layerif", {"total_experts": 10}, {
        "num_blocks": 4, "block_names": [f"model.layers.{i}" for i in range(4)], "params_per_block": [1, 1, 1, 1]})
    config = alloc.to_peft_config(r=8)
    assert config.experts_per_layer == [1, 3, 2, 4] and config.allocation["method"] == "layerif"
    with pytest.raises(ValueError, match="expert allocation"):
        LayerIFConfig.from_allocation(Allocation("sparsity", [0.5] * 4, "uniform", {}, alloc.model))


def test_routing_statistics_skip_padding_tokens():
    model = _moe()
    model.train()
    ids = _ids(B=2, T=6)
    mask = torch.ones_like(ids)
    mask[1, 3:] = 0  # three padding tokens in the second row
    model(input_ids=ids, attention_mask=mask, labels=ids)
    layer = next(m for m in model.modules() if isinstance(m, MoELinear) and m.num_experts["default"] > 1)
    counts = layer.router_state["default"].counts
    assert int(counts.sum()) == (12 - 3) * layer.top_k["default"]
    model(input_ids=ids, labels=ids)  # no mask: every token counts
    assert int(layer.router_state["default"].counts.sum()) == 12 * layer.top_k["default"]


def test_import_is_light_and_registers_when_peft_is_imported_later():
    code = """
import sys
import hf_layerif
assert "torch" not in sys.modules and "peft" not in sys.modules
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
from peft.utils.peft_types import PeftType
assert PEFT_TYPE_TO_CONFIG_MAPPING[PeftType.LAYERIF] is hf_layerif.LayerIFConfig
assert not any(type(f).__name__ == "_PeftImportFinder" for f in sys.meta_path)
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_exclude_modules_and_modules_to_save_round_trip(tmp_path):
    torch.manual_seed(0)
    model = get_peft_model(BUILDERS["llama"](), LayerIFConfig(num_experts=2, exclude_modules=["down_proj"],
                                                             modules_to_save=["lm_head"], task_type="CAUSAL_LM"))
    names = [n for n, m in model.named_modules() if isinstance(m, MoELinear)]
    assert names and not any(n.endswith("down_proj") for n in names)
    head = model.base_model.model.lm_head
    assert any(p.requires_grad for p in head.parameters())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "modules_to_save" in name:
                p.add_(0.5)
    model.eval()
    ids = _ids()
    expected = model(input_ids=ids).logits
    model.save_pretrained(tmp_path)
    torch.manual_seed(0)
    reloaded = PeftModel.from_pretrained(BUILDERS["llama"]().eval(), tmp_path)
    assert torch.equal(reloaded(input_ids=ids).logits, expected)


ROUTES = {
    # import hf_layerif first, then transformers loads a model (it probes for peft with find_spec), then peft
    "hf_layerif, transformers, PeftModel": ("import hf_layerif\nfrom transformers import AutoModelForCausalLM\n"
                                            "base = AutoModelForCausalLM.from_pretrained(BASE)\n"
                                            "from peft import PeftModel\nmodel = PeftModel.from_pretrained(base, ADAPTER)"),
    "hf_layerif, transformers load_adapter": ("import hf_layerif\nfrom transformers import AutoModelForCausalLM\n"
                                              "model = AutoModelForCausalLM.from_pretrained(BASE)\n"
                                              "model.load_adapter(ADAPTER)"),
    "hf_layerif, AutoPeftModelForCausalLM": ("import hf_layerif\nfrom peft import AutoPeftModelForCausalLM\n"
                                             "model = AutoPeftModelForCausalLM.from_pretrained(ADAPTER)"),
    "transformers, hf_layerif, AutoPeftModel": ("from transformers import AutoModelForCausalLM\nimport hf_layerif\n"
                                                "from peft import AutoPeftModelForCausalLM\n"
                                                "model = AutoPeftModelForCausalLM.from_pretrained(ADAPTER)"),
    # transformers' Trainer imports peft while transformers.trainer_utils is half-initialised
    "hf_layerif, Trainer, PeftModel": ("import hf_layerif\nfrom transformers import Trainer, AutoModelForCausalLM\n"
                                       "from peft import PeftModel\n"
                                       "model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE), ADAPTER)"),
    "peft, hf_layerif, PeftModel": ("from peft import PeftModel\nimport hf_layerif\n"
                                    "from transformers import AutoModelForCausalLM\n"
                                    "model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE), ADAPTER)"),
}


@pytest.mark.slow
def test_registration_holds_for_every_import_order_and_loading_route(tmp_path):
    """Each route in a fresh process: the LAYERIF type is known whatever was imported first."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    BUILDERS["llama"]().save_pretrained(tmp_path / "base")
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    model = get_peft_model(base, LayerIFConfig(num_experts=3, task_type="CAUSAL_LM", lora_dropout=0.0))
    model.save_pretrained(tmp_path / "adapter")  # records the base folder for AutoPeftModel
    header = f"BASE = {str(tmp_path / 'base')!r}\nADAPTER = {str(tmp_path / 'adapter')!r}\n"
    check = ("\nfrom hf_layerif.tuners import Linear\n"
             "assert any(isinstance(m, Linear) for m in model.modules()), 'no LayerIF layer'\nprint('LOADED')\n")
    failures = {}
    for route, code in ROUTES.items():
        done = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-c", header + code + check],
                              capture_output=True, text=True, timeout=300)
        if done.returncode != 0 or "LOADED" not in done.stdout:
            failures[route] = done.stderr[-800:]
    assert not failures, failures


def test_dispatch_is_a_saved_config_field(tmp_path):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    BUILDERS["llama"]().save_pretrained(tmp_path / "base")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tmp_path / "base"),
                           LayerIFConfig(num_experts=3, dispatch="sparse", task_type="CAUSAL_LM"))
    layers = [m for m in model.modules() if isinstance(m, MoELinear)]
    assert layers and all(m.resolve_dispatch("default") == "sparse" for m in layers)
    model.save_pretrained(tmp_path / "adapter")
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["dispatch"] == "sparse"
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "base"), tmp_path / "adapter")
    assert all(m.resolve_dispatch("default") == "sparse" for m in reloaded.modules() if isinstance(m, MoELinear))
    with pytest.raises(ValueError, match="dispatch="):
        LayerIFConfig(dispatch="fast")
