"""End-to-end behaviour of compute_layer_influence: sign, composition with accelerate, resume, errors."""

import copy

import pytest
import torch
from conftest import random_samples, tiny_llama, with_lora

import hf_layerif
from hf_layerif import LayerInfluenceScores, compute_layer_influence
from hf_layerif.influence.capture import PerSampleGradientCapture


@pytest.mark.parametrize("estimator", ["datainf", "exact", "tracin", "lissa"])
def test_duplicate_of_validation_sample_is_most_beneficial(estimator):
    model = with_lora(tiny_llama(torch.float64, layers=2), randomize_b=True)
    validation = random_samples(1, seed=11, min_len=8, max_len=8)
    train = random_samples(9, seed=12, min_len=8, max_len=8)
    train.insert(4, copy.deepcopy(validation[0]))
    scores = compute_layer_influence(model, train, validation, estimator=estimator, batch_size=4, progress=False,
                                     bootstrap_samples=0, lissa_depth=3000)
    total = scores.influence.sum(0)
    assert int(torch.argmin(total)) == 4
    assert float(total[4]) < 0  # Koh & Liang: negative = lowers the validation loss


def test_batch_size_does_not_change_scores():
    model = with_lora(tiny_llama(torch.float64), randomize_b=True)
    train, val = random_samples(7, seed=1), random_samples(3, seed=2)
    s1 = compute_layer_influence(model, train, val, batch_size=1, progress=False, bootstrap_samples=0)
    s3 = compute_layer_influence(model, train, val, batch_size=3, progress=False, bootstrap_samples=0)
    torch.testing.assert_close(s1.influence, s3.influence, rtol=1e-5, atol=1e-6 * s1.influence.abs().max().item())


def _hook_state(model):
    return {name: (getattr(m, "_hf_hook", None), m.forward) for name, m in model.named_modules()}


def test_composes_with_cpu_offload_and_removes_hooks_exactly():
    from accelerate import cpu_offload

    reference_model = tiny_llama(torch.float64)
    train, val = random_samples(5, seed=3), random_samples(2, seed=4)
    expected = compute_layer_influence(reference_model, train, val, target="full", progress=False, bootstrap_samples=0)
    offloaded = cpu_offload(copy.deepcopy(reference_model), execution_device=torch.device("cpu"))
    ids = torch.tensor([train[0]["input_ids"]])
    before_out = offloaded(input_ids=ids).logits.detach()
    before_hooks = {name: getattr(m, "_hf_hook", None) for name, m in offloaded.named_modules()}
    assert any(h is not None for h in before_hooks.values())
    got = compute_layer_influence(offloaded, train, val, target="full", progress=False, bootstrap_samples=0)
    torch.testing.assert_close(got.influence, expected.influence, rtol=1e-6, atol=1e-9)
    after_hooks = {name: getattr(m, "_hf_hook", None) for name, m in offloaded.named_modules()}
    assert all(after_hooks[k] is before_hooks[k] for k in before_hooks)  # the very same hook objects
    assert torch.equal(offloaded(input_ids=ids).logits.detach(), before_out)


def test_composes_with_dispatch_model_and_peft():
    from accelerate import dispatch_model

    model = with_lora(tiny_llama(torch.float64), randomize_b=True)
    train, val = random_samples(4, seed=5), random_samples(2, seed=6)
    expected = compute_layer_influence(model, train, val, progress=False, bootstrap_samples=0)
    dispatched = dispatch_model(copy.deepcopy(model), device_map={"": "cpu"})
    got = compute_layer_influence(dispatched, train, val, progress=False, bootstrap_samples=0)
    torch.testing.assert_close(got.influence, expected.influence, rtol=1e-6, atol=1e-9)
    assert got.block_names == ["model.layers.0", "model.layers.1", "model.layers.2"]
    assert not any(type(getattr(m, "_hf_hook", None)).__name__ == "_InputOutputHook" for m in dispatched.modules())


def test_resume_after_interruption_gives_identical_scores(tmp_path, monkeypatch):
    model = with_lora(tiny_llama(torch.float64), randomize_b=True)
    train, val = random_samples(9, seed=7), random_samples(2, seed=8)
    options = dict(batch_size=2, checkpoint_every=1, progress=False, bootstrap_samples=0)
    uninterrupted = compute_layer_influence(model, train, val, **options)

    calls = {"n": 0}
    original = PerSampleGradientCapture.compute

    def failing(self, batch):
        calls["n"] += 1
        if calls["n"] == 4:  # 1 validation batch, then the 3rd training batch
            raise RuntimeError("simulated crash")
        return original(self, batch)

    monkeypatch.setattr(PerSampleGradientCapture, "compute", failing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        compute_layer_influence(model, train, val, output_dir=tmp_path, **options)
    assert not (tmp_path / "influence.safetensors").exists()
    assert (tmp_path / "influence_checkpoint" / "stream_state.json").exists()  # DataInf: the O(n·d) route
    monkeypatch.setattr(PerSampleGradientCapture, "compute", original)

    counted = {"n": 0}

    def counting(self, batch):
        counted["n"] += 1
        return original(self, batch)

    monkeypatch.setattr(PerSampleGradientCapture, "compute", counting)
    resumed = compute_layer_influence(model, train, val, output_dir=tmp_path, **options)
    assert counted["n"] == 3  # validation reloaded; 2 of 5 training batches were done
    torch.testing.assert_close(resumed.influence, uninterrupted.influence, rtol=1e-12, atol=1e-12)
    assert not (tmp_path / "influence_checkpoint").exists()
    reloaded = LayerInfluenceScores.from_pretrained(tmp_path)
    assert torch.equal(reloaded.influence, resumed.influence)


def test_scores_round_trip_and_plot(tmp_path):
    model = with_lora(tiny_llama(torch.float32), randomize_b=True)
    scores = compute_layer_influence(model, random_samples(6), random_samples(2, seed=1), progress=False,
                                     bootstrap_samples=20)
    scores.save_pretrained(tmp_path)
    loaded = LayerInfluenceScores.from_pretrained(tmp_path)
    assert torch.equal(loaded.influence, scores.influence)
    assert loaded.block_names == scores.block_names
    assert torch.equal(loaded.damping, scores.damping)
    assert loaded.stability()["bootstrap"]["num_samples"] == 20
    for agg in ("positive", "all", "top_fraction", "harmful"):
        torch.testing.assert_close(loaded.block_scores(agg), scores.block_scores(agg))
    import json

    meta = json.loads((tmp_path / "layerif_scores.json").read_text())
    assert "Koh & Liang" in meta["sign_convention"]
    assert meta["provenance"]["versions"]["hf_layerif"] == hf_layerif.__version__
    png = scores.plot(tmp_path / "scores.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "model.layers.0" in scores.summary_table()


def test_block_score_aggregations_match_definitions():
    influence = torch.tensor([[-3.0, 1.0, -1.0, 2.0], [0.5, 0.5, -0.25, -4.0]])
    scores = LayerInfluenceScores(influence, ["a", "b"], torch.ones(2), [0, 1], {"fraction": 0.25}, {})
    torch.testing.assert_close(scores.block_scores("positive"), torch.tensor([4.0, 4.25], dtype=torch.float64))
    torch.testing.assert_close(scores.block_scores("all"), torch.tensor([1.0, 3.25], dtype=torch.float64))
    torch.testing.assert_close(scores.block_scores("harmful"), torch.tensor([3.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(scores.block_scores("top_fraction"), torch.tensor([3.0, 4.0], dtype=torch.float64))
    torch.testing.assert_close(scores.block_scores("top_fraction", fraction=0.5), torch.tensor([4.0, 4.25], dtype=torch.float64))


def test_repeats_report_initialisation_stability():
    model = with_lora(tiny_llama(torch.float32))  # fresh adapter: B = 0
    a_before = [p.detach().clone() for n, p in model.named_parameters() if "lora_A" in n]
    scores = compute_layer_influence(model, random_samples(6), random_samples(2, seed=1), repeats=3, fit_steps=0,
                                     progress=False, bootstrap_samples=10)
    assert scores.repeat_block_scores.shape == (3, 3)
    assert "repeats" in scores.stability()
    a_after = [p.detach() for n, p in model.named_parameters() if "lora_A" in n]
    assert all(torch.equal(x, y) for x, y in zip(a_before, a_after))  # the user's adapter is restored


def test_one_default_protocol_fits_a_fresh_adapter_and_scores_a_trained_one_as_is():
    """fit_steps=None (the default of the API, the Trainer and the CLI): a fresh adapter is fitted DEFAULT_FIT_STEPS
    steps; an adapter trained before the call is scored as it is."""
    from hf_layerif.influence.arguments import DEFAULT_FIT_STEPS, InfluenceArguments
    from hf_layerif.influence.runner import resolve_fit_steps

    assert resolve_fit_steps(InfluenceArguments(), True, 1).fit_steps == DEFAULT_FIT_STEPS
    assert resolve_fit_steps(InfluenceArguments(), False, 1).fit_steps == 0
    assert resolve_fit_steps(InfluenceArguments(), True, 2).fit_steps == 0
    assert resolve_fit_steps(InfluenceArguments(fit_steps=7), True, 1).fit_steps == 7
    fresh = compute_layer_influence(with_lora(tiny_llama()), random_samples(4), random_samples(2, seed=1), repeats=1,
                                    progress=False, bootstrap_samples=0)
    assert fresh.arguments["fit_steps"] == DEFAULT_FIT_STEPS and fresh.provenance["protocol"]["adapter"] == "fitted"
    trained = compute_layer_influence(with_lora(tiny_llama(), randomize_b=True), random_samples(4),
                                      random_samples(2, seed=1), progress=False, bootstrap_samples=0)
    assert trained.arguments["fit_steps"] == 0 and trained.provenance["protocol"]["adapter"] == "trained"


def test_bad_input_fails_early_with_a_fix():
    model = with_lora(tiny_llama())
    with pytest.raises(ValueError, match="empty"):
        compute_layer_influence(model, [], random_samples(2), progress=False)
    with pytest.raises(ValueError, match="no label tokens"):
        compute_layer_influence(model, [{"input_ids": [5, 6, 7], "labels": [5, -100, -100]}], random_samples(2), progress=False)
    with pytest.raises(ValueError, match="vocabulary"):
        compute_layer_influence(model, [{"input_ids": [5, 6, 700]}], random_samples(2), progress=False)
    with pytest.raises(ValueError, match="LoRA adapter"):
        compute_layer_influence(tiny_llama(), random_samples(2), random_samples(2), progress=False)
    with pytest.raises(ValueError, match="estimator"):
        compute_layer_influence(model, random_samples(2), random_samples(2), estimator="ekfac", progress=False)
    with pytest.raises(ValueError, match="tokenizer"):
        compute_layer_influence(model, ["some text"], random_samples(2), progress=False)
    nan_model = with_lora(tiny_llama(), randomize_b=True)
    with torch.no_grad():
        nan_model.base_model.model.model.layers[1].mlp.down_proj.base_layer.weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"layers\.1\.mlp\.down_proj\.base_layer\.weight \(1 of"):
        compute_layer_influence(nan_model, random_samples(2), random_samples(2), progress=False)


def test_instruction_data_keeps_the_answer_when_truncated():
    from hf_layerif.data import prepare_examples
    from hf_layerif.demo.corpus import build_tokenizer

    tokenizer = build_tokenizer()
    rows = [{"instruction": "abcdefgh" * 4, "input": "", "output": "123"}]
    full = prepare_examples(rows, tokenizer)[0]
    short = prepare_examples(rows, tokenizer, max_length=10)[0]
    assert len(short["input_ids"]) == 10 and short["input_ids"][0] == tokenizer.bos_token_id
    answer = [t for t in full["labels"] if t != -100]
    assert [t for t in short["labels"] if t != -100] == answer
    assert short["input_ids"][-len(answer):] == full["input_ids"][-len(answer):]


def test_bf16_model_and_bf16_gradient_store_agree_with_float32(tmp_path, monkeypatch):
    from hf_layerif.influence.gradient_store import GradientStore

    flushes = []
    original_spill = GradientStore.spill
    monkeypatch.setattr(GradientStore, "spill",
                        lambda self, *a: (flushes.append(not self.empty), original_spill(self, *a))[1])
    model32 = with_lora(tiny_llama(torch.float32), randomize_b=True)
    train, val = random_samples(12, seed=31), random_samples(3, seed=32)
    reference = compute_layer_influence(model32, train, val, progress=False, bootstrap_samples=0)
    stored_bf16 = compute_layer_influence(model32, train, val, progress=False, bootstrap_samples=0,
                                          gradient_dtype="bfloat16", gradient_memory_gb=4e-5, batch_size=2,
                                          cache_dir=tmp_path)  # 22 KB per batch, 67 KB stored > 43 KB: spills
    assert any(flushes), "the tiny budget must spill gradient windows to disk"
    scale = reference.influence.abs().max().item()
    torch.testing.assert_close(stored_bf16.influence, reference.influence, rtol=0, atol=0.03 * scale)
    model16 = copy.deepcopy(model32).to(torch.bfloat16)
    low = compute_layer_influence(model16, train, val, progress=False, bootstrap_samples=0)
    assert torch.isfinite(low.influence).all()
    corr = torch.corrcoef(torch.stack([low.influence.flatten(), reference.influence.flatten()]))[0, 1]
    assert corr > 0.95
    assert list(tmp_path.iterdir()) == []  # the spilled gradients were cleaned up


@pytest.mark.parametrize("estimator", ["datainf", "exact", "lissa"])
def test_fresh_adapter_skips_zero_a_gradients_without_changing_scores(monkeypatch, estimator):
    import hf_layerif.influence.engine as engine_module
    from hf_layerif.influence.engine import InfluenceEngine

    model = with_lora(tiny_llama(torch.float64))  # fresh: B = 0, so every A gradient is exactly zero
    train, val = random_samples(7, seed=41), random_samples(3, seed=42)
    engine = InfluenceEngine(model, hf_layerif.InfluenceArguments())
    assert all(".lora_B." in m.name for ms in engine.capture.tracked for m in ms)
    assert engine.layout.dims().tolist() == [sum(m.numel for m in ms) for ms in engine.tracked]
    skipped = compute_layer_influence(model, train, val, estimator=estimator, progress=False, bootstrap_samples=0,
                                      fit_steps=0)
    monkeypatch.setattr(engine_module, "zero_gradient_lora_a", lambda module, modules: False)
    full = compute_layer_influence(model, train, val, estimator=estimator, progress=False, bootstrap_samples=0,
                                   fit_steps=0)
    torch.testing.assert_close(skipped.influence, full.influence, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(skipped.damping, full.damping, rtol=1e-12, atol=0)


def test_a_finished_run_is_reused_and_reporting_settings_never_block_a_resume(tmp_path, monkeypatch):
    """Calling again with the same output_dir and gradient-phase arguments loads the stored matrix (no gradient
    pass); another aggregation or bootstrap size re-aggregates it, with draw statistics of its own; overwrite=True
    and another gradient setting compute again."""
    from hf_layerif.influence.engine import InfluenceEngine
    from hf_layerif.influence.scores import aggregate_block_scores

    train, val = random_samples(6), random_samples(2, seed=1)
    options = dict(progress=False, bootstrap_samples=10, fit_steps=2, repeats=2, output_dir=tmp_path)
    first = compute_layer_influence(with_lora(tiny_llama()), train, val, **options)
    runs = []
    original = InfluenceEngine.run
    monkeypatch.setattr(InfluenceEngine, "run", lambda self, *a, **k: runs.append(1) or original(self, *a, **k))
    again = compute_layer_influence(with_lora(tiny_llama()), train, val, **options)
    assert runs == [] and torch.equal(again.influence, first.influence)
    other = compute_layer_influence(with_lora(tiny_llama()), train, val, **dict(options, aggregation="harmful",
                                                                              bootstrap_samples=5))
    assert runs == [] and other.arguments["aggregation"] == "harmful" and other.arguments["bootstrap_samples"] == 5
    torch.testing.assert_close(other.repeat_block_scores, aggregate_block_scores(first.draw_influence, "harmful"))
    assert other.stability()["aggregation"] == "harmful" and "repeats" in other.stability()
    assert first.arguments["aggregation"] == "positive"  # the first object is unchanged
    compute_layer_influence(with_lora(tiny_llama()), train, val, overwrite=True, **options)
    assert len(runs) == 2  # two draws computed again
    runs.clear()
    compute_layer_influence(with_lora(tiny_llama()), train, val, **dict(options, damping_factor=0.5))
    assert len(runs) == 2
