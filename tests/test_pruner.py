"""LayerIFPruner: exact sparsity reports, N:M, block-sequential calibration, offload, save/reload, real model."""

import copy
import math

import pytest
import torch
from conftest import SHARED_DATA, STORIES260K, TINYSTORIES_VAL, require_shared, tiny_llama

from hf_layerif.allocation import sparsity_allocation
from hf_layerif.models.blocks import find_transformer_blocks
from hf_layerif.pruning import LayerIFPruner, PruningConfig, perplexity
from hf_layerif.pruning.masks import wanda_mask


def _calib(n=8, T=12, seed=0):
    return torch.randint(3, 50, (n, T), generator=torch.Generator().manual_seed(seed))


def _linears(model):
    blocks = find_transformer_blocks(model)
    return [(f"{bn}.{n}", m) for bn, b in blocks for n, m in b.named_modules() if isinstance(m, torch.nn.Linear)]


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_requested_equals_achieved_with_per_block_ratios(method):
    model = tiny_llama(layers=4)
    allocation = sparsity_allocation([1.0, 3.0, 2.0, 5.0], 0.6, model=model, epsilon=0.3)
    pruner = LayerIFPruner(model)
    report = pruner.prune(PruningConfig(method=method, sparsity=0.6, allocation=allocation), _calib(), progress=False)
    assert report.block_ratios == allocation.values
    for module in report.modules:
        assert module.achieved == pytest.approx(math.floor(module.numel * module.requested + 0.5) / module.numel)
    for name, linear in _linears(model):
        row = next(m for m in report.modules if m.name == name)
        assert float((linear.weight == 0).sum()) / linear.weight.numel() == pytest.approx(row.achieved)
    assert report.global_sparsity()["achieved"] == pytest.approx(0.6, abs=2e-3)  # rounding of a few small matrices
    assert len(report.block_sparsity()) == 4 and "global" in report.table()


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_two_four_on_every_row(method):
    model = tiny_llama(layers=2)
    report = LayerIFPruner(model).prune(PruningConfig(method=method, structure="2:4"), _calib(), progress=False)
    assert report.global_sparsity()["achieved"] == pytest.approx(0.5)
    for _, linear in _linears(model):
        zeros = (linear.weight == 0).reshape(linear.weight.shape[0], -1, 4).sum(-1)
        assert bool((zeros == 2).all())


def test_n_m_and_per_block_ratios_exclude_each_other():
    with pytest.raises(ValueError, match="per-block ratios"):
        PruningConfig(structure="2:4", allocation="owl")
    with pytest.raises(ValueError, match="sparsity=0.5"):
        PruningConfig(structure="4:8", sparsity=0.6)


def test_block_sequential_wanda_equals_whole_model_calibration():
    """Reference: before pruning block l, run the whole model (blocks < l already pruned) and hook block l's inputs."""
    model = tiny_llama(layers=3)
    reference = copy.deepcopy(model)
    ids = _calib(seed=2)
    LayerIFPruner(model).prune(PruningConfig(method="wanda", sparsity=0.5), ids, progress=False)
    blocks = find_transformer_blocks(reference)
    metrics = {}
    for block in blocks.modules:
        inputs = {}
        handles = [m.register_forward_pre_hook(lambda mod, a, n=n, store=inputs: store.setdefault(n, []).append(a[0].detach()))
                   for n, m in block.named_modules() if isinstance(m, torch.nn.Linear)]
        with torch.no_grad():
            reference(input_ids=ids, use_cache=False)
        for h in handles:
            h.remove()
        for name, linear in block.named_modules():
            if isinstance(linear, torch.nn.Linear):
                x = torch.cat(inputs[name]).reshape(-1, linear.in_features).float()
                mask = wanda_mask(linear.weight, x.norm(dim=0), 0.5)
                metrics[id(linear)] = (linear.weight.abs() * x.norm(dim=0)).detach(), mask
                with torch.no_grad():
                    linear.weight.masked_fill_(mask, 0)
    for (name, got), (_, want) in zip(_linears(model), _linears(reference)):
        differ = (got.weight == 0) != (want.weight == 0)
        if differ.any():  # the two routes' activations may differ in the last bits: only exact near-ties may flip
            metric, mask = metrics[id(want)]
            boundary = metric.masked_fill(~mask, -1.0).amax(dim=1, keepdim=True).expand_as(metric)
            assert int(differ.sum()) <= 4, name
            torch.testing.assert_close(metric[differ], boundary[differ], rtol=1e-5, atol=0)


def test_offloaded_model_prunes_like_in_memory_and_save_keeps_zeros(tmp_path):
    from accelerate import cpu_offload
    from transformers import AutoModelForCausalLM

    model = tiny_llama(layers=2)
    offloaded = cpu_offload(copy.deepcopy(model), execution_device=torch.device("cpu"))
    ids = _calib(seed=3)
    config = PruningConfig(method="sparsegpt", sparsity=0.5)
    pruner = LayerIFPruner(model)
    pruner.prune(config, ids, progress=False)
    LayerIFPruner(offloaded).prune(config, ids, progress=False)
    with torch.no_grad():
        x = torch.randint(3, 50, (2, 7))
        torch.testing.assert_close(offloaded(input_ids=x).logits, model(input_ids=x).logits, rtol=1e-5, atol=1e-6)
    pruner.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    for (name, a), (_, b) in zip(_linears(model), _linears(reloaded)):
        assert torch.equal(a.weight, b.weight), name
    assert PruningConfig.from_pretrained(tmp_path) == config
    assert (tmp_path / "pruning_report.json").exists()
    card = (tmp_path / "README.md").read_text()
    assert "library_name: transformers" in card and "| model.layers.1 |" in card
    assert (tmp_path / "layerif_allocation.json").exists()  # uniform ratios recorded as an allocation


def test_stories260k_perplexity_order_at_half_sparsity():
    require_shared()
    text = TINYSTORIES_VAL.read_text(encoding="utf-8", errors="replace")[:120_000]
    c4 = SHARED_DATA / "text" / "c4" / "c4_en_train00000_first1000.jsonl"
    ppl = {}
    for method in ("dense", "magnitude", "wanda", "sparsegpt"):
        pruner = LayerIFPruner.from_pretrained(str(STORIES260K))
        if method != "dense":
            report = pruner.prune(PruningConfig(method=method, sparsity=0.5, nsamples=16, seqlen=256, calibration=str(c4)),
                                  progress=False)
            assert report.global_sparsity()["achieved"] == pytest.approx(0.5, abs=1e-6)
        ppl[method] = perplexity(pruner.model, pruner.tokenizer, text, seqlen=256, max_windows=24)
    assert ppl["dense"] < min(ppl["wanda"], ppl["sparsegpt"])
    assert max(ppl["wanda"], ppl["sparsegpt"]) < ppl["magnitude"]
    assert abs(math.log(ppl["wanda"]) - math.log(ppl["sparsegpt"])) < 0.3, ppl


def test_cli_prune_with_owl_and_evaluation(tmp_path, capsys):
    require_shared()
    import json

    from hf_layerif.cli.main import main

    c4 = SHARED_DATA / "text" / "c4" / "c4_en_train00000_first1000.jsonl"
    wikitext = SHARED_DATA / "text" / "wikitext2_raw" / "wikitext2_raw_test_joined.txt"
    arc = SHARED_DATA / "tasks" / "llm_adapters" / "dataset" / "ARC-Easy" / "test.json"
    code = main(["prune", "--model", str(STORIES260K), "--method", "wanda", "--sparsity", "0.5", "--allocation", "owl",
                 "--calibration", str(c4), "--nsamples", "4", "--seqlen", "128", "--output", str(tmp_path),
                 "--eval", "wikitext2,arc_easy", "--wikitext2", str(wikitext), "--eval_seqlen", "256", "--eval_max_windows", "8",
                 "--task_files", f"arc_easy={arc}", "--eval_limit", "20", "--device", "cpu"])
    assert code == 0
    out = capsys.readouterr().out
    assert "global" in out and "WikiText-2 perplexity" in out
    results = json.loads((tmp_path / "eval_results.json").read_text())
    assert results["pruning"]["achieved"] == pytest.approx(0.5, abs=1e-6)
    assert math.isfinite(results["wikitext2_ppl"]) and results["zero_shot"]["arc_easy"]["n"] == 20
    assert (tmp_path / "layerif_allocation.json").exists() and (tmp_path / "model.safetensors").exists()
    card = (tmp_path / "README.md").read_text()
    assert "model-index" in card and "perplexity" in card and "acc_norm" in card  # prune --eval results on the card
    # results on part of a task say so (never presented as the task's score)
    assert "arc_easy (first 20 items)" in card and "wikitext2 (first 8 windows of 256 tokens)" in card


def test_modules_reading_one_input_share_one_hessian():
    from hf_layerif.calibration import InputStatistics

    model = tiny_llama(layers=1, hidden=16)
    block = model.model.layers[0]
    ids = _calib(n=2, T=6)
    inputs = {}
    def keep(name):
        def hook(module, args):
            inputs[name] = args[0].detach().clone()  # returns None: the input is not replaced

        return hook

    handles = [m.register_forward_pre_hook(keep(n)) for n, m in block.named_modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad(), InputStatistics(block, gram=True, dtype=torch.float64) as stats:
        model(input_ids=ids)
    for h in handles:
        h.remove()
    grams = stats.grams
    assert grams["self_attn.q_proj"] is grams["self_attn.k_proj"] is grams["self_attn.v_proj"]
    assert grams["mlp.gate_proj"] is grams["mlp.up_proj"]
    assert grams["self_attn.o_proj"] is not grams["self_attn.q_proj"] and grams["mlp.down_proj"] is not grams["mlp.up_proj"]
    for name, x in inputs.items():
        x = x.reshape(-1, x.shape[-1]).double()
        torch.testing.assert_close(grams[name], x.T @ x, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(stats.column_norms(name), x.pow(2).sum(0).sqrt(), rtol=1e-12, atol=1e-12)


def test_pruning_report_round_trips(tmp_path):
    from hf_layerif.pruning import PruningReport

    pruner = LayerIFPruner(tiny_llama(layers=2))
    report = pruner.prune(PruningConfig(method="wanda", sparsity=0.5), _calib(), progress=False)
    report.save_pretrained(tmp_path)
    again = PruningReport.from_pretrained(tmp_path)
    assert again.to_dict() == report.to_dict()
    assert again.global_sparsity()["achieved"] == pytest.approx(0.5, abs=1e-9)


def test_a_registered_pruning_method_is_used_by_name_with_its_statistics():
    from hf_layerif.pruning.methods import PRUNING_METHODS, register_pruning_method

    seen = {}

    @register_pruning_method("first-columns", statistics="column_norms", description="test: zero the first columns")
    def first_columns(weight, norms, ratio, config):
        seen.setdefault("norms_shape", (norms.shape, weight.shape[1]))
        k = round(ratio * weight.shape[1])
        mask = torch.zeros_like(weight, dtype=torch.bool)
        mask[:, :k] = True
        return weight.masked_fill(mask, 0), mask, {"k": k}

    try:
        model = tiny_llama(layers=2)
        report = LayerIFPruner(model).prune(PruningConfig(method="first-columns", sparsity=0.5), _calib(), progress=False)
        assert report.method == "first-columns" and seen["norms_shape"][0] == (seen["norms_shape"][1],)
        for _, linear in _linears(model):
            k = linear.in_features // 2
            assert bool((linear.weight[:, :k] == 0).all()) and bool((linear.weight[:, k:] != 0).all())
        assert report.global_sparsity()["achieved"] == pytest.approx(0.5)
    finally:
        del PRUNING_METHODS["first-columns"]
    with pytest.raises(ValueError, match="method='first-columns'; choose one of magnitude, sparsegpt, wanda"):
        PruningConfig(method="first-columns")


def test_pruner_from_pretrained_restores_what_save_pretrained_wrote(tmp_path):
    from hf_layerif.allocation import Allocation
    from hf_layerif.pruning import PruningReport

    model = tiny_llama(layers=4)
    allocation = sparsity_allocation([1.0, 3.0, 2.0, 5.0], 0.5, model=model, epsilon=0.2)
    config = PruningConfig(method="wanda", sparsity=0.5, allocation=allocation)
    pruner = LayerIFPruner(model)
    pruner.prune(config, _calib(), progress=False)
    pruner.save_pretrained(tmp_path)
    again = LayerIFPruner.from_pretrained(str(tmp_path))
    assert again.config.method == "wanda" and again.config.allocation == str(tmp_path)
    assert again.report.to_dict() == PruningReport.from_pretrained(tmp_path).to_dict()
    assert again.report.global_sparsity() == pytest.approx(pruner.report.global_sparsity())
    assert again.allocation.to_dict() == Allocation.from_pretrained(tmp_path / "layerif_allocation.json").to_dict()
    assert again.allocation.values == pytest.approx(allocation.values)
    # the config's allocation reference resolves: the same ratios come back
    resolved = again.resolve_allocation(again.config, None, progress=False)
    assert again.block_ratios(resolved, again.config) == pytest.approx(allocation.values)
    with pytest.raises(FileNotFoundError, match="no such local folder or file"):
        PruningConfig.from_pretrained(str(tmp_path / "missing" / "deeper"))


def test_a_registered_allocation_method_is_a_pruning_allocation_by_name():
    from hf_layerif.allocation.methods import ALLOCATION_METHODS, register_allocation_method

    @register_allocation_method("sparsity", "last-heavier", description="test: the last block gets more")
    def last_heavier(values, target, params):
        ratios = [target] * len(params)
        ratios[-1], ratios[0] = target + 0.1, target - 0.1  # equal block sizes: the weighted mean is kept
        return ratios

    try:
        model = tiny_llama(layers=3)
        report = LayerIFPruner(model).prune(PruningConfig(method="magnitude", sparsity=0.5, allocation="last-heavier"),
                                            progress=False)
        assert report.block_ratios == pytest.approx([0.4, 0.5, 0.6])
        assert report.extra["allocation"] == "last-heavier"
    finally:
        del ALLOCATION_METHODS["sparsity"]["last-heavier"]


def test_model_derived_allocation_inputs_and_auto_work_on_an_offloaded_model():
    """OWL's outlier ratios and PL_Alpha_Hill read weights through the offload map: an offloaded model gets the
    values of the same model in memory, and allocation='auto' chooses and prunes it the same way."""
    from accelerate import cpu_offload

    from hf_layerif.allocation import block_alpha_hill
    from hf_layerif.allocation.owl import layerwise_outlier_distribution

    model = tiny_llama(layers=4)
    offloaded = cpu_offload(copy.deepcopy(model), execution_device=torch.device("cpu"))
    ids, selection = _calib(seed=3), _calib(n=4, seed=4)
    assert block_alpha_hill(offloaded, cache=False) == pytest.approx(block_alpha_hill(model, cache=False), rel=1e-12)
    assert layerwise_outlier_distribution(offloaded, ids, progress=False) == pytest.approx(
        layerwise_outlier_distribution(model, ids, progress=False), rel=1e-9)
    config = PruningConfig(method="wanda", sparsity=0.5, allocation="auto", candidates="owl,alphapruning", nsamples=8,
                           seqlen=12)
    plain = LayerIFPruner(model).prune(config, ids, progress=False, selection_dataset=selection)
    moved = LayerIFPruner(offloaded).prune(config, ids, progress=False, selection_dataset=selection)
    assert moved.selection["chosen"] == plain.selection["chosen"]
    for a, b in zip(moved.selection["candidates"], plain.selection["candidates"]):
        assert a["screen_loss"] == pytest.approx(b["screen_loss"], rel=1e-6)
    with torch.no_grad():
        x = torch.randint(3, 50, (2, 7))
        torch.testing.assert_close(offloaded(input_ids=x).logits, model(input_ids=x).logits, rtol=1e-5, atol=1e-6)
