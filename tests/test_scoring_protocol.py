"""The scoring protocol: fitting the scoring adapter, averaging adapter draws, and agreement across draws."""

import copy
import logging

import pytest
import torch
from conftest import random_samples, tiny_llama, with_lora

from hf_layerif import compute_layer_influence
from hf_layerif.influence.fitting import adapter_parameters, redraw_adapter
from hf_layerif.influence.protocol import average_draws, draw_seed
from hf_layerif.models.blocks import find_transformer_blocks, tracked_modules

FAST = dict(progress=False, bootstrap_samples=0, batch_size=4)


def _tracked(model):
    return tracked_modules(find_transformer_blocks(model), "lora")


def test_fitting_changes_the_adapter_and_not_the_base():
    model = with_lora(tiny_llama())
    base_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    adapter_before = [p.detach().clone() for p in adapter_parameters(_tracked(model))]
    scores = compute_layer_influence(model, random_samples(16, seed=3), random_samples(4, seed=4), fit_steps=30,
                                     fit_learning_rate=1e-2, repeats=1, **FAST)
    for name, value in base_before.items():
        assert torch.equal(dict(model.named_parameters())[name], value), name
    adapter_after = adapter_parameters(_tracked(model))
    assert all(not torch.equal(a, b) for a, b in zip(adapter_before, adapter_after))
    assert all(p.requires_grad for p in adapter_after)  # flags restored
    protocol = scores.provenance["protocol"]
    assert protocol["adapter"] == "fitted" and protocol["draws"] == 1
    fit = protocol["fits"][0]
    assert fit["steps"] == 30 and fit["loss_last"] < fit["loss_first"]
    # the model now holds the fitted adapter, so scoring it again as trained gives the same influence
    again = compute_layer_influence(model, random_samples(16, seed=3), random_samples(4, seed=4), **FAST)
    torch.testing.assert_close(again.influence, scores.influence, rtol=1e-5, atol=1e-7)
    assert again.provenance["protocol"]["adapter"] == "trained"


def test_fitting_a_trained_adapter_is_refused():
    model = with_lora(tiny_llama(), randomize_b=True)
    with pytest.raises(ValueError, match="already trained"):
        compute_layer_influence(model, random_samples(4), random_samples(2), fit_steps=5, **FAST)
    with pytest.raises(ValueError, match="overwrite a trained adapter"):
        compute_layer_influence(model, random_samples(4), random_samples(2), repeats=2, **FAST)


def test_fresh_adapter_averages_three_normalised_draws_by_default():
    model = with_lora(tiny_llama(torch.float64))
    train, val = random_samples(10, seed=5), random_samples(3, seed=6)
    a_before = [p.detach().clone() for p in adapter_parameters(_tracked(model))]
    averaged = compute_layer_influence(model, train, val, seed=7, fit_steps=0, **FAST)
    assert averaged.repeat_block_scores.shape == (3, 3)
    assert all(torch.equal(a, b) for a, b in zip(a_before, adapter_parameters(_tracked(model))))  # draw 0 kept
    draws = []
    for r in range(3):  # reference: each draw scored on its own, by hand
        copy_r = copy.deepcopy(model)
        if r:
            redraw_adapter(_tracked(copy_r), draw_seed(7, r))
        draws.append(compute_layer_influence(copy_r, train, val, seed=7, repeats=1, fit_steps=0, **FAST).influence.double())
    scales = torch.stack([d.abs().mean() for d in draws])
    expected = sum(d / s for d, s in zip(draws, scales)) / 3 * scales.mean()
    torch.testing.assert_close(averaged.influence.double(), expected, rtol=1e-5, atol=1e-6 * float(expected.abs().max()))
    assert averaged.provenance["protocol"]["draw_seeds"] == [7, draw_seed(7, 1), draw_seed(7, 2)]
    # draws differ in scale by construction: normalising makes each weigh the same
    _, per_draw = average_draws([draws[0], 10 * draws[0]], "positive", 0.25)
    torch.testing.assert_close(per_draw[0], per_draw[1])


def test_draw_seeds_of_nearby_runs_do_not_overlap():
    seeds = {draw_seed(s, r) for s in range(100) for r in range(1, 10)}
    assert not seeds & set(range(100)) and len(seeds) == 900


def test_stability_reports_draw_agreement_and_warns_on_the_weaker(caplog):
    from hf_layerif.influence.scores import LayerInfluenceScores
    from hf_layerif.influence.stability import floor_to
    from hf_layerif.utils.logging import get_logger

    influence = torch.tensor([[-3.0, -2.0, 1.0], [-1.0, -1.0, -1.0], [-2.0, -0.5, 0.5], [-0.2, -0.1, -0.3]])
    draws = torch.tensor([[4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 1.0, 2.0]])
    scores = LayerInfluenceScores(influence, [f"b{i}" for i in range(4)], torch.ones(4), [0, 1, 2, 3],
                                  {"aggregation": "positive", "bootstrap_samples": 50}, {"name": "datainf"},
                                  repeat_block_scores=draws)
    rep = scores.stability()["repeats"]
    assert rep["pairwise_spearman_min"] == pytest.approx(-1.0)
    assert rep["pairwise_spearman_mean"] == pytest.approx((-1.0 + 0.8 + -0.8) / 3)
    assert not rep["stable"]
    assert set(scores.agreement()) == {"bootstrap", "draws", "reproducibility"}
    logger = get_logger("hf_layerif")
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING):
            assert scores.warn_if_unstable()
    finally:
        logger.removeHandler(caplog.handler)
    predicted = scores.agreement()["reproducibility"]
    assert predicted < -0.3  # draws that disagree leave no shared signal, whatever the bootstrap says
    assert f"predicted to reproduce at a Spearman of {floor_to(predicted):.3f}" in caplog.text
    assert "3 adapter draws averaged, agreeing pairwise at -0.334" in caplog.text and "Average more draws" in caplog.text
    assert "agreement across 3 adapter draws: pairwise Spearman mean -0.334, min -1.000" in scores.summary_table()


def test_a_figure_just_under_the_threshold_is_not_printed_equal_to_it():
    from hf_layerif.influence.stability import UNSTABLE_SPEARMAN, floor_to

    assert f"{floor_to(0.7996):.3f}" == "0.799" and floor_to(0.7996) < UNSTABLE_SPEARMAN
    assert f"{floor_to(0.8):.3f}" == "0.800"


def test_resume_reuses_the_fitted_adapter(tmp_path, monkeypatch):
    from hf_layerif.influence import fitting, protocol
    from hf_layerif.influence.capture import PerSampleGradientCapture

    train, val = random_samples(8, seed=1), random_samples(2, seed=2)
    options = dict(FAST, batch_size=2, checkpoint_every=1, fit_steps=10, fit_learning_rate=1e-2, repeats=1)
    uninterrupted = compute_layer_influence(with_lora(tiny_llama()), train, val, **options)
    fits = {"n": 0}
    original_fit = fitting.fit_adapter

    def counting_fit(*args, **kwargs):
        fits["n"] += 1
        return original_fit(*args, **kwargs)

    monkeypatch.setattr(protocol, "fit_adapter", counting_fit)
    original = PerSampleGradientCapture.compute
    calls = {"n": 0}

    def failing(self, batch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated crash")
        return original(self, batch)

    monkeypatch.setattr(PerSampleGradientCapture, "compute", failing)
    with pytest.raises(RuntimeError):
        compute_layer_influence(with_lora(tiny_llama()), train, val, output_dir=tmp_path, **options)
    assert (tmp_path / "influence_checkpoint" / "fitted_adapter.safetensors").exists()
    monkeypatch.setattr(PerSampleGradientCapture, "compute", original)
    resumed = compute_layer_influence(with_lora(tiny_llama()), train, val, output_dir=tmp_path, **options)
    assert fits["n"] == 1  # the fit of the interrupted run was reused
    torch.testing.assert_close(resumed.influence, uninterrupted.influence, rtol=1e-6, atol=1e-9)
    assert not (tmp_path / "influence_checkpoint").exists()


def test_fit_batch_size_rebatches_samples_of_different_lengths():
    model = with_lora(tiny_llama())
    train = random_samples(10, min_len=3, max_len=12, seed=9)  # batches of 4 pad to different lengths
    scores = compute_layer_influence(model, train, random_samples(3), batch_size=4, fit_batch_size=3, fit_steps=4,
                                     fit_learning_rate=1e-2, repeats=1, progress=False, bootstrap_samples=0)
    assert scores.provenance["protocol"]["fits"][0]["steps"] == 4 and torch.isfinite(scores.influence).all()


def test_an_agreement_of_exactly_the_threshold_is_stable_despite_float_rounding(caplog):
    from hf_layerif.influence.scores import LayerInfluenceScores
    from hf_layerif.influence.stability import reaches_threshold, spearman

    # two draws that swap one adjacent pair of 4 blocks: Spearman 1 − 6·2/(4·15) = 0.8 exactly
    a, b = [4.0, 3.0, 2.0, 1.0], [3.0, 4.0, 2.0, 1.0]
    assert spearman(a, b) == pytest.approx(0.8, abs=1e-12)
    assert reaches_threshold(0.7999999999999998) and not reaches_threshold(0.7999)
    influence = torch.tensor([[-3.0, -2.0], [-2.0, -1.0], [-1.0, -1.0], [-0.5, -0.1]])
    scores = LayerInfluenceScores(influence, [f"b{i}" for i in range(4)], torch.ones(4), [0, 1, 2, 3],
                                  {"aggregation": "positive", "bootstrap_samples": 0}, {"name": "datainf"},
                                  repeat_block_scores=torch.tensor([a, b]))
    assert scores.stability()["repeats"]["stable"]
    assert not scores.warn_if_unstable()
    assert "[UNSTABLE]" not in scores.summary_table()


def test_every_finished_draw_is_checkpointed_and_reused(tmp_path, monkeypatch):
    from hf_layerif.influence import protocol
    from hf_layerif.influence.engine import InfluenceEngine

    train, val = random_samples(8, seed=1), random_samples(2, seed=2)
    options = dict(FAST, batch_size=4, fit_steps=3, fit_learning_rate=1e-2, repeats=3)
    uninterrupted = compute_layer_influence(with_lora(tiny_llama()), train, val, **options)
    original = InfluenceEngine.run
    runs = []

    def interrupted_at_draw_two(self, *args, **kwargs):
        runs.append(1)
        if len(runs) == 3:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(InfluenceEngine, "run", interrupted_at_draw_two)
    with pytest.raises(KeyboardInterrupt):
        compute_layer_influence(with_lora(tiny_llama()), train, val, output_dir=tmp_path, **options)
    assert (tmp_path / "influence_checkpoint" / "draw1.safetensors").exists()
    runs.clear()
    fits = []
    original_fit = protocol.fit_adapter
    monkeypatch.setattr(protocol, "fit_adapter", lambda *a, **k: fits.append(1) or original_fit(*a, **k))
    monkeypatch.setattr(InfluenceEngine, "run", lambda self, *a, **k: runs.append(1) or original(self, *a, **k))
    resumed = compute_layer_influence(with_lora(tiny_llama()), train, val, output_dir=tmp_path, **options)
    assert len(runs) == 2 and len(fits) == 1  # draw 0 resumed from its checkpoint, draw 1 loaded, draw 2 computed
    torch.testing.assert_close(resumed.influence, uninterrupted.influence, rtol=1e-5, atol=1e-8)
    # the validation parts survive the interruption with the draws (draw 1's came from its checkpoint)
    assert resumed.validation_part_influence.shape[0] == 2  # 2 validation samples: 2 parts
    torch.testing.assert_close(resumed.validation_part_influence, uninterrupted.validation_part_influence,
                               rtol=1e-5, atol=1e-8)
    assert not (tmp_path / "influence_checkpoint").exists()  # removed once the scores are saved


def test_scores_are_values_and_other_reporting_gives_a_new_object_with_its_own_stability(tmp_path):
    import dataclasses

    from hf_layerif.influence.scores import LayerInfluenceScores

    gen = torch.Generator().manual_seed(5)
    draw_influence = torch.randn(3, 4, 12, generator=gen, dtype=torch.float64)
    influence = draw_influence.mean(0)
    scores = LayerInfluenceScores(influence, [f"b{i}" for i in range(4)], torch.ones(4), [0, 1, 2, 3],
                                  {"aggregation": "positive", "bootstrap_samples": 20, "fraction": 0.25},
                                  {"name": "datainf"}, draw_influence=draw_influence,
                                  repeat_block_scores=torch.stack([(-d).clamp_min(0).sum(1) for d in draw_influence]))
    with pytest.raises(dataclasses.FrozenInstanceError):
        scores.arguments = {}
    before = scores.stability()
    harmful = scores.with_reporting(aggregation="harmful")
    assert harmful is not scores and scores.arguments["aggregation"] == "positive"
    assert scores.stability() is before and harmful.stability()["aggregation"] == "harmful"
    want = torch.stack([draw.clamp_min(0).sum(1) for draw in draw_influence])  # each draw's own harmful scores
    torch.testing.assert_close(harmful.repeat_block_scores.double(), want, rtol=1e-6, atol=1e-9)
    scores.save_pretrained(tmp_path)
    loaded = LayerInfluenceScores.from_pretrained(tmp_path)
    assert loaded.block_scores().tolist() == pytest.approx(scores.block_scores().tolist())
    assert loaded.stability()["aggregation"] == "positive"


def test_predicted_reproducibility_matches_independent_runs_in_simulation():
    """The prediction against brute force: block scores = signal + sample noise (shared by a run's k draws) + draw
    noise; from one run's own figures (pairwise agreement of its k draws; of two redraws of its sample with its
    draws fixed, as the bootstrap does) it predicts the mean Spearman between independent runs."""
    import numpy as np

    from hf_layerif.influence.stability import predicted_reproducibility, spearman, spearman_matrix

    rng = np.random.default_rng(0)
    blocks, k = 30, 3
    signal = rng.normal(size=blocks)
    for sample_sd, draw_sd in ((0.5, 0.9), (0.8, 0.4), (0.3, 1.5)):
        def run(sample_sd=sample_sd, draw_sd=draw_sd):
            draw_noise = draw_sd * rng.normal(size=(k, blocks))
            draws = signal + sample_sd * rng.normal(size=blocks) + draw_noise
            return draws, draws.mean(0), draw_noise.mean(0)

        predicted, observed = [], []
        for _ in range(400):
            (draws_a, mean_a, noise_a), (_, mean_b, _) = run(), run()
            r = spearman_matrix(draws_a)[np.triu_indices(k, 1)].mean()
            s = spearman(signal + noise_a + sample_sd * rng.normal(size=blocks),
                         signal + noise_a + sample_sd * rng.normal(size=blocks))
            predicted.append(predicted_reproducibility(r, k, s))
            observed.append(spearman(mean_a, mean_b))
        # within 0.05; where draw noise dominates, a little low (Spearman–Brown is concave in a noisy r): cautious
        assert abs(np.mean(predicted) - np.mean(observed)) < 0.05, (sample_sd, draw_sd)
    assert predicted_reproducibility(0.5, 3, None) == pytest.approx(0.75)  # 3·0.5 / (1 + 2·0.5)
    assert predicted_reproducibility(None, 1, 0.9) == pytest.approx(0.9)
    assert predicted_reproducibility(0.5, 3, 0.9) == pytest.approx(0.65)
    assert predicted_reproducibility(-0.2, 3, None) == -0.2 and predicted_reproducibility(None, 1, None) is None


@pytest.mark.parametrize("estimator", ["datainf", "tracin", "exact"])
def test_validation_parts_equal_runs_on_each_part(estimator):
    """The influence against each interleaved validation part (sample k in part k mod P) equals a run whose
    validation set is that part, the weighted parts recombine to the full influence, and each half of a balanced
    split scores as a run on its samples (float64 model; 7 samples in batches of 2, so parts cross batches). The exact
    solve of several right-hand sides at once rounds differently from one solve per part (the BLAS path depends on
    the CPU) and influence is kept in float32, so a small element can differ by more than 1e-5 of itself: elements
    are compared to 1e-5 of the tensor's largest value (differences seen: up to 3e-7 of it)."""

    def assert_close(actual, expected):
        scale = float(expected.abs().max())
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * scale)

    model = with_lora(tiny_llama(torch.float64), randomize_b=True)
    train, val = random_samples(9, seed=11), random_samples(7, seed=12)
    options = dict(FAST, estimator=estimator, batch_size=2)
    full = compute_layer_influence(model, train, val, validation_parts=4, **options)
    assert full.validation_part_influence.shape == (4, *full.influence.shape)
    assert full.validation_part_weights == pytest.approx([2 / 7, 2 / 7, 2 / 7, 1 / 7])
    parts = full.validation_part_influence.double()
    for p in range(4):
        alone = compute_layer_influence(model, train, val[p::4], validation_split_half=False, **options)
        assert alone.validation_part_influence is None
        assert_close(parts[p], alone.influence.double())
    recombined = torch.einsum("p,pln->ln", torch.tensor(full.validation_part_weights, dtype=torch.float64), parts)
    assert_close(recombined, full.influence.double())
    splits = full.validation_split_scores()
    assert splits.shape == (3, 2, full.num_blocks)  # (0, 1), (0, 2), (0, 3)
    half = compute_layer_influence(model, train, [val[k] for k in (0, 1, 4, 5)], validation_split_half=False, **options)
    other = compute_layer_influence(model, train, [val[k] for k in (2, 3, 6)], validation_split_half=False, **options)
    assert_close(splits[0, 0], half.block_scores())
    assert_close(splits[0, 1], other.block_scores())


def test_validation_part_count_and_splits():
    from hf_layerif.influence.validation_parts import balanced_splits, part_weights, validation_part_count

    assert [validation_part_count(m, 8) for m in (0, 1, 2, 3, 7, 8, 100)] == [0, 0, 2, 2, 6, 8, 8]
    assert [len(balanced_splits(p)) for p in (2, 4, 6, 8)] == [1, 3, 10, 35]
    assert all(s[0] == 0 and len(set(s)) == len(s) == 4 for s in balanced_splits(8))
    assert part_weights(10, 4) == pytest.approx([0.3, 0.3, 0.2, 0.2])
    with pytest.raises(ValueError, match="even number"):
        balanced_splits(3)
    from hf_layerif import InfluenceArguments
    with pytest.raises(ValueError, match="validation_parts must be an even number"):
        InfluenceArguments(validation_parts=5)


def test_validation_parts_of_averaged_draws_and_the_report(tmp_path):
    """With several draws each draw's parts are normalised by its own full scale (so the full influence is the
    weighted mean of the parts' averages), are saved and loaded (scores saved with the older first-half field load
    as two parts), and the report averages the halves' Spearman over every balanced split, by brute force."""
    import json

    import numpy as np
    from safetensors.torch import load_file, save_file

    from hf_layerif.influence.protocol import average_validation_parts, normalise_draws
    from hf_layerif.influence.scores import LayerInfluenceScores
    from hf_layerif.influence.stability import spearman, split_half_step_up

    gen = torch.Generator().manual_seed(3)
    weights = [0.3, 0.3, 0.2, 0.2]
    parts = [torch.randn(4, 5, 8, generator=gen, dtype=torch.float64) * (r + 1) for r in range(3)]
    draws = [torch.einsum("p,pln->ln", torch.tensor(weights, dtype=torch.float64), p) for p in parts]
    scales = [d.abs().mean() for d in draws]
    mean_scale = sum(scales) / 3
    want = sum(p / s * mean_scale for p, s in zip(parts, scales)) / 3
    got = average_validation_parts(draws, parts)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert average_validation_parts(draws, [parts[0], None, parts[2]]) is None
    influence = normalise_draws(draws).mean(0)
    names = [f"b{i}" for i in range(5)]
    scores = LayerInfluenceScores(influence, names, torch.ones(5), list(range(5)),
                                  {"aggregation": "positive", "bootstrap_samples": 0}, {"name": "datainf"},
                                  validation_part_influence=got, validation_part_weights=weights)
    stored = got.float().double()
    agreements = []
    for other in (1, 2, 3):  # the halves {0, other} and the rest, by hand
        rest = [p for p in (1, 2, 3) if p != other]
        halves = []
        for members in ((0, other), rest):
            total = sum(weights[p] for p in members)
            mixed = sum(weights[p] / total * stored[p] for p in members)
            halves.append((-mixed).clamp_min(0).sum(1))
        agreements.append(spearman(halves[0], halves[1]))
    q = float(np.mean(agreements))
    validation = scores.stability()["validation"]
    assert validation["splits"] == 3 and validation["parts"] == 4
    assert validation["split_half_spearman"] == pytest.approx(q, abs=1e-9)
    assert validation["split_half_spearman_range"] == pytest.approx([min(agreements), max(agreements)])
    assert validation["full_size_spearman"] == pytest.approx(split_half_step_up(q))
    assert scores.stability()["reproducibility"]["predicted_spearman"] == pytest.approx(split_half_step_up(q))
    assert "mean of 3 splits of 4 parts" in scores.summary_table()
    scores.save_pretrained(tmp_path / "new")
    loaded = LayerInfluenceScores.from_pretrained(tmp_path / "new")
    torch.testing.assert_close(loaded.validation_part_influence, scores.validation_part_influence)
    assert loaded.validation_part_weights == pytest.approx(weights)
    # a file of the older format: the first half's influence and its fraction
    two = LayerInfluenceScores(influence, names, torch.ones(5), list(range(5)), {"aggregation": "positive"},
                               {"name": "datainf"}, validation_part_influence=got[:2], validation_part_weights=[0.5, 0.5])
    two.save_pretrained(tmp_path / "old")
    tensors = load_file(tmp_path / "old" / "influence.safetensors")
    tensors["validation_half_influence"] = tensors.pop("validation_part_influence")[0].contiguous()
    save_file(tensors, tmp_path / "old" / "influence.safetensors", metadata={"format": "hf-layerif-scores"})
    meta = json.loads((tmp_path / "old" / "layerif_scores.json").read_text())
    meta["validation_half_fraction"] = meta.pop("validation_part_weights")[0]
    (tmp_path / "old" / "layerif_scores.json").write_text(json.dumps(meta))
    old = LayerInfluenceScores.from_pretrained(tmp_path / "old")
    assert old.validation_part_weights == pytest.approx([0.5, 0.5])
    torch.testing.assert_close(old.validation_part_influence[0], two.validation_part_influence[0])
    torch.testing.assert_close(old.validation_part_influence[1],
                               2 * old.influence - two.validation_part_influence[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="validation_part_weights"):
        LayerInfluenceScores(influence, names, torch.ones(5), list(range(5)), {}, {}, validation_part_influence=got)


def test_averaging_over_splits_narrows_the_validation_agreement_on_few_blocks():
    """Brute force on 5 blocks: block scores against a set of validation samples = signal + the mean of the
    samples' noise. The Spearman of two halves averaged over the 35 balanced splits of 8 interleaved parts has the
    mean of one split's (what it estimates) with a smaller spread across validation sets (about two thirds: part
    of the spread is the validation set's own, which no split removes)."""
    import numpy as np

    from hf_layerif.influence.stability import spearman
    from hf_layerif.influence.validation_parts import balanced_splits

    rng = np.random.default_rng(4)
    blocks, m, parts = 5, 32, 8
    signal = np.linspace(1.0, 0.0, blocks)
    single, averaged = [], []
    for _ in range(300):
        noise = 1.2 * rng.normal(size=(m, blocks))  # per validation sample
        part_means = np.stack([noise[p::parts].mean(0) for p in range(parts)])
        single.append(spearman(signal + noise[:m // 2].mean(0), signal + noise[m // 2:].mean(0)))
        values = []
        for split in balanced_splits(parts):
            other = [p for p in range(parts) if p not in split]
            values.append(spearman(signal + part_means[list(split)].mean(0), signal + part_means[other].mean(0)))
        averaged.append(np.mean(values))
    assert abs(np.mean(averaged) - np.mean(single)) < 0.05
    assert np.std(averaged) < 0.8 * np.std(single)


def test_prediction_with_validation_halves_matches_independent_runs_in_simulation():
    """Brute force with validation noise: block scores = signal + training-sample noise + validation-sample noise
    (shared by a run's draws) + draw noise. From one run's figures (its draws' agreement, a redraw of its training
    noise, the Spearman of its two validation halves, each half carrying √2 × the validation noise) the prediction
    matches the mean Spearman between independent runs with new validation samples; without the halves it is the
    agreement of runs sharing their validation samples, which over-predicts."""
    import numpy as np

    from hf_layerif.influence.stability import predicted_reproducibility, spearman, spearman_matrix

    rng = np.random.default_rng(1)
    blocks, k = 30, 3
    signal = rng.normal(size=blocks)
    # noise levels where runs agree at 0.6-0.8, the range in which a user decides whether to trust a ranking
    for sample_sd, validation_sd, draw_sd in ((0.2, 0.4, 0.5), (0.15, 0.5, 0.3), (0.35, 0.2, 0.4), (0.1, 0.3, 0.2)):
        predicted, without, observed = [], [], []
        for _ in range(400):
            def run(validation_noise, sample_sd=sample_sd, draw_sd=draw_sd):
                draw_noise = draw_sd * rng.normal(size=(k, blocks))
                training_noise = sample_sd * rng.normal(size=blocks)
                return signal + training_noise + validation_noise + draw_noise, training_noise, draw_noise.mean(0)

            validation_a = validation_sd * rng.normal(size=blocks)
            # the full set's noise is the mean of its two halves' noises, each √2 × as large
            half_1 = validation_a + validation_sd * rng.normal(size=blocks)
            half_2 = 2 * validation_a - half_1
            draws_a, training_a, noise_a = run(validation_a)
            draws_b, _, _ = run(validation_sd * rng.normal(size=blocks))
            r = spearman_matrix(draws_a)[np.triu_indices(k, 1)].mean()
            shared = signal + noise_a + validation_a
            s = spearman(shared + sample_sd * rng.normal(size=blocks), shared + sample_sd * rng.normal(size=blocks))
            q = spearman(signal + training_a + noise_a + half_1, signal + training_a + noise_a + half_2)
            predicted.append(predicted_reproducibility(r, k, s, q))
            without.append(predicted_reproducibility(r, k, s))
            observed.append(spearman(draws_a.mean(0), draws_b.mean(0)))
        # within 0.04 and, the sum of three concave step-ups being cautious, never above by more than 0.01
        gap = np.mean(predicted) - np.mean(observed)
        assert -0.04 < gap < 0.01, (sample_sd, validation_sd, draw_sd, gap)
        assert np.mean(without) > np.mean(observed) + 0.04  # the validation noise it cannot see
    assert predicted_reproducibility(None, 1, None, 0.6) == pytest.approx(0.75)  # 2·0.6 / 1.6
    assert predicted_reproducibility(0.5, 3, 0.9, 0.6) == pytest.approx(0.4)


def test_standard_errors_of_a_spearman_and_of_the_prediction_and_the_verdicts(caplog):
    """spearman_standard_error is the delta-method error of a Spearman over L items (checked by simulation); the
    prediction's error is 0.7 to 1.4 times the spread of the predictions of simulated runs of one signal (5 and 30
    blocks);
    the verdict is stable / unstable only one standard error clear of 0.8, uncertain in between: marked in the
    table, warned about only when unstable."""
    import numpy as np

    from hf_layerif.influence.scores import LayerInfluenceScores
    from hf_layerif.influence.stability import (
        predicted_reproducibility,
        reproducibility_standard_error,
        reproducibility_verdict,
        spearman,
        spearman_matrix,
        spearman_standard_error,
    )
    from hf_layerif.utils.logging import get_logger

    rng = np.random.default_rng(0)
    L, rho = 30, 0.8
    cov = [[1, rho], [rho, 1]]
    values = [spearman(*rng.multivariate_normal([0, 0], cov, size=L).T) for _ in range(3000)]
    assert np.std(values) == pytest.approx(spearman_standard_error(np.mean(values), L), rel=0.15)
    assert spearman_standard_error(0.5, 3) == 1.0
    for blocks in (5, 30):  # runs of one signal: each run's error against the spread of the runs' predictions
        predicted, errors = [], []
        signal = rng.normal(size=blocks)
        for _ in range(300):
            validation = 0.3 * rng.normal(size=blocks)
            draws = signal + 0.2 * rng.normal(size=blocks) + validation + 0.4 * rng.normal(size=(3, blocks))
            half = validation + 0.3 * rng.normal(size=blocks)
            shared = draws.mean(0)
            figures = (spearman_matrix(draws)[np.triu_indices(3, 1)].mean(), 3,
                       spearman(shared + 0.2 * rng.normal(size=blocks), shared + 0.2 * rng.normal(size=blocks)),
                       spearman(shared - validation + half, shared - validation + 2 * validation - half))
            predicted.append(predicted_reproducibility(*figures))
            errors.append(reproducibility_standard_error(*figures, blocks))
        assert 0.7 < np.mean(errors) / np.std(predicted) < 1.4, blocks
    assert reproducibility_standard_error(None, 1, None, None, 30) is None
    assert reproducibility_verdict(0.85, 0.04) == "stable" and reproducibility_verdict(0.85, 0.1) == "uncertain"
    assert reproducibility_verdict(0.7, 0.05) == "unstable" and reproducibility_verdict(0.7, 0.1) == "uncertain"
    assert reproducibility_verdict(0.9, None) == "stable"

    def scores_with(first_half, second_half, draws):
        influence = 0.5 * first_half + 0.5 * second_half
        return LayerInfluenceScores(influence, [f"b{i}" for i in range(influence.shape[0])], torch.ones(influence.shape[0]),
                                    list(range(influence.shape[0])), {"aggregation": "all", "bootstrap_samples": 0},
                                    {"name": "datainf"}, repeat_block_scores=draws,
                                    validation_part_influence=torch.stack([first_half, second_half]),
                                    validation_part_weights=[0.5, 0.5])

    # 6 blocks, "all" aggregation = −Σ influence: block scores are −(column sums); one training sample each
    base = -torch.arange(6, 0, -1, dtype=torch.float64)[:, None]  # scores 6, 5, ..., 1
    moved = base[[0, 1, 2, 5, 3, 4]]
    draws = torch.stack([base[:, 0], base[:, 0]]).neg()  # two identical draws: r = 1
    uncertain = scores_with(moved, 2 * base - moved, draws)  # halves disagree (q ≈ 0.55), the mean is the base ranking
    verdict = uncertain.stability()["reproducibility"]
    q = uncertain.stability()["validation"]["split_half_spearman"]
    assert 0.5 < q < 0.6
    assert verdict["predicted_spearman"] == pytest.approx(2 * q / (1 + q)) and verdict["predicted_spearman"] < 0.8
    # identical draws (r = 1) carry no error; the halves' Spearman over 6 blocks, through the step-up's slope
    want = 2 / (1 + q) ** 2 * spearman_standard_error(q, 6)
    assert verdict["predicted_spearman_se"] == pytest.approx(want)
    assert verdict["predicted_spearman"] + want > 0.8
    assert verdict["verdict"] == "uncertain" and not verdict["stable"]
    assert not uncertain.warn_if_unstable() and "[UNCERTAIN" in uncertain.summary_table()
    far = base[[5, 4, 3, 2, 1, 0]]  # reversed: q = −1
    unstable = scores_with(far, 2 * base - far, draws)
    assert unstable.stability()["reproducibility"]["verdict"] == "unstable"
    logger = get_logger("hf_layerif")
    logger.addHandler(caplog.handler)
    try:
        assert unstable.warn_if_unstable()
        assert "by more than its standard error" in caplog.text and "Use more validation samples" in caplog.text
    finally:
        logger.removeHandler(caplog.handler)
    assert "[UNSTABLE]" in unstable.summary_table()
