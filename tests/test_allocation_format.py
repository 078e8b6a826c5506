"""The Allocation object and layerif_allocation.json: round trip, schema, fitting a model, CLI."""

import json

import pytest
import torch
from conftest import SHARED_DATA, STORIES260K, random_samples, require_shared, tiny_llama, with_lora

from hf_layerif import compute_layer_influence
from hf_layerif.allocation import (
    Allocation,
    allocation_schema,
    block_alpha_hill,
    compare_allocations,
    expert_allocation,
    plot_allocations,
    sparsity_allocation,
)
from hf_layerif.cli.main import main


@pytest.fixture(scope="module")
def scores():
    model = with_lora(tiny_llama(torch.float32, layers=4), randomize_b=True)
    return compute_layer_influence(model, random_samples(8), random_samples(3, seed=1), progress=False, bootstrap_samples=0)


def test_round_trip_and_file_format(tmp_path, scores):
    alloc = expert_allocation(scores, 12)
    assert sum(alloc.values) == 12 and alloc.model["num_blocks"] == 4
    assert alloc.model["params_per_block"] == [16 * 16 * 2 + 8 * 16 * 2 + 24 * 16 * 3] * 4
    assert alloc.provenance["scores"]["estimator"]["name"] == "datainf"
    path = alloc.save_pretrained(tmp_path)
    text = path.read_text(encoding="utf-8")
    data = json.loads(text)
    assert list(data) == sorted(data) and data["format"] == "hf-layerif-allocation" and data["format_version"] == "1.0"
    loaded = Allocation.from_pretrained(tmp_path)
    assert loaded.to_json_dict() == alloc.to_json_dict()
    # unknown keys are ignored; a newer minor version is read
    data["future_field"] = {"x": 1}
    data["format_version"] = "1.7"
    path.write_text(json.dumps(data))
    assert Allocation.from_pretrained(tmp_path).values == alloc.values


@pytest.mark.parametrize("edit,match", [
    (lambda d: d["values"].pop(), "values has 3 entries"),
    (lambda d: d["values"].__setitem__(0, -2), "values/0"),
    (lambda d: d.__setitem__("kind", "experts-ish"), "kind"),
    (lambda d: d.__setitem__("format_version", "2.0"), "format_version"),
])
def test_hand_edited_files_get_clear_errors(tmp_path, scores, edit, match):
    path = expert_allocation(scores, 12).save_pretrained(tmp_path)
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=match):
        Allocation.from_pretrained(tmp_path)


def test_sparsity_budget_check_fits_and_ratios_for(scores):
    model = tiny_llama(torch.float32, layers=4)
    alloc = sparsity_allocation(scores, 0.6, epsilon=0.2)
    assert alloc.achieved_sparsity == pytest.approx(0.6, abs=1e-9)
    ratios = alloc.ratios_for(model)
    assert len(ratios) == 4 * 7 and ratios["model.layers.2.mlp.down_proj"] == alloc.values[2]
    alloc.check_fits(with_lora(tiny_llama(torch.float32, layers=4)))  # adapters do not change the fit
    with pytest.raises(ValueError, match="3 blocks in the model vs 4"):
        alloc.check_fits(tiny_llama(torch.float32, layers=3))
    from transformers import LlamaConfig, LlamaForCausalLM

    wider = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=4,
                                         num_attention_heads=4, num_key_value_heads=2))
    with pytest.raises(ValueError, match="prunable parameters differ"):
        alloc.check_fits(wider)
    with pytest.raises(ValueError, match="sparsity allocation"):
        expert_allocation(scores, 12).ratios_for(model)


def test_compare_and_plot(tmp_path, scores):
    a = expert_allocation(scores, 16)
    b = expert_allocation(scores, 16, method="uniform")
    c = expert_allocation(scores, 16, alpha=2.0)
    result = compare_allocations(a, c)
    assert -1 <= result["spearman"] <= 1 and len(result["differences"]) == 4
    assert compare_allocations(a, a)["spearman"] == pytest.approx(1.0)
    png = plot_allocations([a, b, c], tmp_path / "alloc.png", labels=["LayerIF", "uniform", "LayerIF a=2"])
    assert png.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="one kind"):
        plot_allocations([a, sparsity_allocation(scores, 0.5)], tmp_path / "x.png")


def test_schema_ships_in_package():
    schema = allocation_schema()
    assert schema["properties"]["format"]["const"] == "hf-layerif-allocation"


def test_alpha_hill_is_cached(tmp_path, monkeypatch):
    import hf_layerif.allocation.alpha_hill as metrics

    model = tiny_llama(torch.float32, layers=2)
    first = block_alpha_hill(model, cache_dir=tmp_path)
    monkeypatch.setattr(metrics, "pl_alpha_hill", lambda w: (_ for _ in ()).throw(AssertionError("recomputed")))
    assert block_alpha_hill(model, cache_dir=tmp_path) == first
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.mul_(2)
    with pytest.raises(AssertionError, match="recomputed"):
        block_alpha_hill(model, cache_dir=tmp_path)  # other weights: another cache entry


def test_cli_allocate_from_scores_and_owl_baseline(tmp_path, scores, capsys):
    scores.save_pretrained(tmp_path / "scores")
    assert main(["allocate", "experts", "--scores", str(tmp_path / "scores"), "--total", "10", "--output", str(tmp_path / "e")]) == 0
    assert sum(Allocation.from_pretrained(tmp_path / "e").values) == 10
    assert main(["allocate", "sparsity", "--scores", str(tmp_path / "scores"), "--sparsity", "0.5",
                 "--output", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "achieved global sparsity" in out and (tmp_path / "s" / "allocation.png").exists()
    require_shared()
    c4 = SHARED_DATA / "text" / "c4" / "c4_en_train00000_first1000.jsonl"
    assert main(["allocate", "sparsity", "--baseline", "owl", "--model", str(STORIES260K), "--calibration", str(c4),
                 "--nsamples", "4", "--seqlen", "64", "--sparsity", "0.5", "--device", "cpu",
                 "--output", str(tmp_path / "owl")]) == 0
    owl = Allocation.from_pretrained(tmp_path / "owl")
    assert owl.method == "owl" and owl.num_blocks == 5
    assert max(owl.values) - min(owl.values) == pytest.approx(0.16, abs=1e-9)


def test_a_json_file_object_must_define_both_directions():
    from hf_layerif.utils.pretrained import JsonPretrainedMixin

    class OnlyWrites(JsonPretrainedMixin):
        FILE_NAME = "x.json"

        def to_dict(self):
            return {}

    with pytest.raises(TypeError, match="abstract"):
        OnlyWrites()


def test_a_clamped_ratio_is_said_and_marked_on_the_plot(tmp_path, caplog):
    import matplotlib

    matplotlib.use("Agg")
    from unittest import mock

    from hf_layerif.allocation import plot_allocations, sparsity_allocation
    from hf_layerif.utils.logging import get_logger

    logger = get_logger("hf_layerif")
    logger.addHandler(caplog.handler)
    try:
        allocation = sparsity_allocation([0, 0, 0, 0, 0, 0, 0, 10.0], 0.9, model=tiny_llama(layers=8), smooth=False)
    finally:
        logger.removeHandler(caplog.handler)
    assert allocation.values[-1] == 0.99 and "blocks [7] were clamped at 0.99" in caplog.text
    import matplotlib.axes

    with mock.patch.object(matplotlib.axes.Axes, "scatter", autospec=True,
                           side_effect=matplotlib.axes.Axes.scatter) as scatter:
        plot_allocations([allocation], tmp_path / "a.png")
    labels = [c.kwargs.get("label", "") for c in scatter.call_args_list]
    assert any(label.startswith("clamped at 0.99") for label in labels)
