"""allocation='auto': candidates pruned in flight equal separate prunes, the guarantee J(chosen) <= J(uniform), ties,
resume, a saved model whose objective matches the table, and errors before any work."""

import copy
import json

import pytest
import torch
from conftest import tiny_llama

from hf_layerif.allocation import Allocation
from hf_layerif.calibration import draw_windows, get_calibration_and_selection_data, get_calibration_data
from hf_layerif.models.blocks import find_transformer_blocks
from hf_layerif.pruning import LayerIFPruner, PruningConfig, PruningReport
from hf_layerif.pruning import selection as selection_module
from hf_layerif.pruning.candidates import AllocationCandidate, parse_candidate, resolve_candidates
from hf_layerif.pruning.inflight import model_loss, prune_in_flight
from hf_layerif.pruning.methods import pruning_method
from hf_layerif.pruning.selection import _choose, selection_table

SCORES = [1.0, 3.0, 2.0, 5.0]


def _ids(n, T=12, seed=0):
    return torch.randint(3, 50, (n, T), generator=torch.Generator().manual_seed(seed))


def _auto(**kwargs):
    options = {"method": "wanda", "sparsity": 0.5, "allocation": "auto", "scores": SCORES, "nsamples": 8, "seqlen": 12,
               "batch_size": 3}
    options.update(kwargs)
    return PruningConfig(**options)


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_in_flight_candidates_equal_separate_prunes(method):
    """Each candidate of one in-flight pass has the weights and the objective of a prune with its ratios alone; the
    model is dense again afterwards; candidates sharing ratios on early blocks share their work without changing it."""
    model = tiny_llama(layers=4)
    dense = copy.deepcopy(model.state_dict())
    ratio_sets = [[0.5] * 4, [0.5, 0.5, 0.3, 0.7], [0.35, 0.65, 0.45, 0.55]]
    calibration, selection = _ids(8), _ids(5, seed=1)
    config = PruningConfig(method=method, sparsity=0.5, batch_size=3)
    results = prune_in_flight(model, find_transformer_blocks(model), pruning_method(method), config, ratio_sets,
                              calibration, selection, keep_weights=True, progress=False)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in dense.items())
    for result, ratios in zip(results, ratio_sets):
        reference = tiny_llama(layers=4)
        allocation = Allocation.from_values(ratios, "sparsity", reference)
        LayerIFPruner(reference).prune(PruningConfig(method=method, sparsity=allocation.achieved_sparsity,
                                                     allocation=allocation, batch_size=3), calibration, progress=False)
        blocks = find_transformer_blocks(reference)
        for weights, block in zip(result.weights, blocks.modules):
            for name, weight in weights.items():
                assert torch.equal(weight, block.get_submodule(name).weight.detach())
        assert result.loss == pytest.approx(model_loss(reference, selection, batch_size=3), rel=1e-6)
        assert result.tokens == selection.shape[0] * (selection.shape[1] - 1)
        per_window = [model_loss(reference, selection[i:i + 1]) for i in range(selection.shape[0])]
        assert result.sequence_losses == pytest.approx(per_window, rel=1e-5)
        assert [m.requested for m in result.modules][::7] == ratios


def test_auto_chooses_no_worse_than_uniform_and_the_saved_model_matches(tmp_path):
    model = tiny_llama(layers=4)
    calibration, selection = _ids(8), _ids(6, seed=1)
    pruner = LayerIFPruner(model)
    report = pruner.prune(_auto(), calibration, progress=False, selection_dataset=selection)
    record = report.extra["selection"]
    names = [r["name"] for r in record["candidates"]]
    assert names[0] == "uniform" and len(names) == 9  # uniform, owl, alphapruning, layerif ε 0.1/0.2/0.3 × 2 directions
    assert record["chosen_loss"] <= record["uniform_loss"]
    assert set(record["finalists"]) >= {"uniform"} and len(record["finalists"]) == 2
    chosen = next(r for r in record["candidates"] if r["name"] == record["chosen"])
    assert report.block_ratios == chosen["ratios"] == pruner.allocation.values
    assert chosen["loss"] == min(r["loss"] for r in record["candidates"] if r["loss"] is not None)
    pruner.save_pretrained(tmp_path / "out")
    reloaded = LayerIFPruner.from_pretrained(str(tmp_path / "out"))
    assert model_loss(reloaded.model, selection, batch_size=3) == pytest.approx(record["chosen_loss"], rel=1e-6)
    saved = PruningReport.from_pretrained(tmp_path / "out")
    assert saved.extra["selection"]["chosen"] == record["chosen"]
    assert reloaded.config.allocation == "auto" and reloaded.allocation.method == chosen["method"]
    assert "final loss" in selection_table(record) and record["chosen"] in selection_table(record)


def test_exhaustive_selection_scores_every_candidate_with_all_calibration():
    model = tiny_llama(layers=4)
    calibration, selection = _ids(8), _ids(6, seed=1)
    record = LayerIFPruner(model).prune(_auto(screen_fraction=1.0, candidates="uniform,layerif,layerif:reverse=true"),
                                        calibration, progress=False, selection_dataset=selection).extra["selection"]
    losses = {r["name"]: r["loss"] for r in record["candidates"]}
    assert None not in losses.values() and record["chosen_loss"] == min(losses.values())
    for row in record["candidates"]:  # screening used all sequences, so it is the final objective
        assert row["screen_loss"] == row["loss"]
    assert model_loss(model, selection, batch_size=3) == pytest.approx(record["chosen_loss"], rel=1e-6)


def test_ties_go_to_uniform():
    assert _choose({"uniform": 1.0, "owl": 1.0, "layerif": 1.5}) == "uniform"
    assert _choose({"uniform": 1.0, "owl": 0.5, "layerif": 0.5}) == "owl"
    # equal scores map to uniform ratios: the same pruned model, the same objective, and uniform is kept
    model = tiny_llama(layers=4)
    record = LayerIFPruner(model).prune(_auto(scores=[2.0] * 4, candidates="layerif", screen_fraction=1.0), _ids(8),
                                        progress=False, selection_dataset=_ids(6, seed=1)).extra["selection"]
    assert [r["name"] for r in record["candidates"]] == ["uniform", "layerif"]
    assert record["candidates"][0]["loss"] == record["candidates"][1]["loss"]
    assert record["chosen"] == "uniform"


def test_finished_stages_are_not_recomputed(tmp_path, monkeypatch):
    calibration, selection = _ids(8), _ids(6, seed=1)
    first = LayerIFPruner(tiny_llama(layers=4)).prune(_auto(), calibration, progress=False, selection_dataset=selection,
                                                      selection_dir=tmp_path).extra["selection"]
    state = json.loads((tmp_path / "selection_state.json").read_text())
    assert set(state) == {"key", "screen", "final", "final_sequences"}
    passes = []
    real = selection_module.prune_in_flight

    def counting(model, blocks, method, config, ratio_sets, *args, **kwargs):
        passes.append(len(ratio_sets))
        return real(model, blocks, method, config, ratio_sets, *args, **kwargs)

    monkeypatch.setattr(selection_module, "prune_in_flight", counting)
    model = tiny_llama(layers=4)
    again = LayerIFPruner(model).prune(_auto(), calibration, progress=False, selection_dataset=selection,
                                       selection_dir=tmp_path).extra["selection"]
    assert passes == [1]  # only the chosen candidate is pruned again, to rebuild its weights
    assert again["chosen"] == first["chosen"] and again["chosen_loss"] == first["chosen_loss"]
    assert [r["delta_se"] for r in again["candidates"]] == [r["delta_se"] for r in first["candidates"]]  # kept too
    assert model_loss(model, selection, batch_size=3) == pytest.approx(first["chosen_loss"], rel=1e-6)
    # other settings do not reuse the saved stages
    passes.clear()
    LayerIFPruner(tiny_llama(layers=4)).prune(_auto(sparsity=0.6), calibration, progress=False,
                                              selection_dataset=selection, selection_dir=tmp_path)
    assert passes == [9, 2]


def test_bad_candidates_fail_before_any_work(monkeypatch):
    with pytest.raises(ValueError, match="unknown sparsity allocation method 'owll'"):
        _auto(candidates="uniform,owll")
    with pytest.raises(ValueError, match="has no option 'eps'"):
        _auto(candidates="layerif:eps=0.1")
    with pytest.raises(ValueError, match="expected true or false"):
        parse_candidate("layerif:reverse=maybe")
    with pytest.raises(ValueError, match="candidates apply to allocation='auto'"):
        PruningConfig(candidates="owl")
    with pytest.raises(ValueError, match="per-block ratios"):
        PruningConfig(allocation="auto", structure="2:4")

    def forbidden(*args, **kwargs):
        raise AssertionError("pruning started")

    monkeypatch.setattr(selection_module, "prune_in_flight", forbidden)
    with pytest.raises(ValueError, match="pass scores="):
        LayerIFPruner(tiny_llama(layers=4)).prune(_auto(scores=None, candidates="uniform,layerif"), _ids(8),
                                                  progress=False, selection_dataset=_ids(4, seed=1))
    with pytest.raises(ValueError, match="selection_dataset="):
        LayerIFPruner(tiny_llama(layers=4)).prune(_auto(), _ids(8), progress=False)


def test_default_candidates_and_spec_parsing():
    assert [c.name for c in resolve_candidates(None, False)] == ["uniform", "owl", "alphapruning"]
    names = [c.name for c in resolve_candidates(None, True)]
    assert len(names) == 9 and "layerif(epsilon=0.1, reverse=true)" in names and "layerif(epsilon=0.3, reverse=false)" in names
    given = resolve_candidates("owl, layerif:epsilon=0.2:reverse=true,owl", True)
    assert [c.name for c in given] == ["uniform", "owl", "layerif(epsilon=0.2, reverse=true)"]
    assert given[2] == AllocationCandidate("layerif", {"epsilon": 0.2, "reverse": True})


class _CharTokenizer:
    def __call__(self, text):
        return {"input_ids": [3 + ord(ch) % 40 for ch in text]}


def test_selection_windows_come_from_documents_calibration_did_not_read():
    texts = [f"document {i} " * (5 + i % 4) for i in range(30)]
    tokenizer = _CharTokenizer()
    calibration, selection = get_calibration_and_selection_data(tokenizer, texts, 6, 16, 0, 5, 1)
    assert torch.equal(calibration, get_calibration_data(tokenizer, texts, 6, 16, 0))  # calibration is unchanged
    _, used = draw_windows(tokenizer, texts, 6, 16, 0)
    reference, other = draw_windows(tokenizer, texts, 5, 16, 1, exclude=used)
    assert torch.equal(selection, reference) and not other & used
    with pytest.raises(ValueError, match="no disjoint selection split"):
        get_calibration_and_selection_data(tokenizer, texts[:1], 6, 16, 0, 5, 1)


def test_card_and_cli_show_the_selection(tmp_path, capsys):
    """The saved folder's card names the chosen allocation and uniform's objective, with the plot; the CLI runs auto
    by default and prints the candidates' table."""
    from hf_layerif.cli.main import main as cli_main

    model = tiny_llama(layers=4)
    calibration, selection = _ids(8), _ids(6, seed=1)
    pruner = LayerIFPruner(model)
    record = pruner.prune(_auto(), calibration, progress=False, selection_dataset=selection).extra["selection"]
    pruner.save_pretrained(tmp_path / "out")
    card = (tmp_path / "out" / "README.md").read_text()
    assert f"Chosen by held-out selection among 9 allocations: **{record['chosen']}**" in card
    assert f"uniform scored {record['uniform_loss']:.4f}" in card and "(selection.png)" in card
    assert (tmp_path / "out" / "selection.png").stat().st_size > 1000
    assert (record["lowest_objective"] != record["chosen"]) == ("had the lowest objective" in card)
    from hf_layerif.hub.artifacts import _kept_text

    kept = {"chosen": "uniform", "lowest_objective": "owl", "min_margin_se": 2.0,
            "candidates": [{"name": "owl", "delta_to_uniform": -0.01, "delta_se": 0.008}]}
    assert _kept_text(kept) == (" owl had the lowest objective but beat uniform by less than 2 paired standard errors "
                                "(-0.0100 ± 0.0080 nats/token), so uniform was kept.")
    assert _kept_text({**kept, "lowest_objective": "uniform"}) == ""

    folder = tmp_path / "model"
    tiny_llama(layers=4).save_pretrained(folder)
    texts = tmp_path / "calibration.jsonl"
    texts.write_text("\n".join(json.dumps({"text": " ".join(str(3 + (i * j) % 40) for j in range(40))})
                               for i in range(60)))

    class Tokenizer:  # numbers as token ids, enough to run the CLI without a tokenizer file
        def __call__(self, text):
            return {"input_ids": [int(t) for t in text.split()]}

        def save_pretrained(self, path):
            pass

    import hf_layerif.pruning.pruner as pruner_module

    original = pruner_module.LayerIFPruner.from_pretrained.__func__

    def from_pretrained(cls, path, **kwargs):
        loaded = original(cls, path, **kwargs)
        loaded.tokenizer = Tokenizer()
        return loaded

    pruner_module.LayerIFPruner.from_pretrained = classmethod(from_pretrained)
    try:
        code = cli_main(["prune", "--model", str(folder), "--output", str(tmp_path / "pruned"), "--method", "wanda",
                         "--calibration", str(texts), "--nsamples", "8", "--seqlen", "16", "--selection_nsamples", "4",
                         "--device", "cpu"])
    finally:
        pruner_module.LayerIFPruner.from_pretrained = classmethod(original)
    assert code == 0
    out = capsys.readouterr().out
    assert "screen loss" in out and "chosen:" in out
    saved = PruningReport.from_pretrained(tmp_path / "pruned")
    assert [r["name"] for r in saved.extra["selection"]["candidates"]] == ["uniform", "owl", "alphapruning"]
    assert not (tmp_path / "pruned" / ".selection").exists()


def test_screening_reads_its_subset_and_finalists_all_calibration():
    """OWL's outlier ratios come from the screening subset while screening, and from every calibration sequence
    for a finalist: the final OWL model equals a plain OWL prune."""
    from hf_layerif.allocation.owl import layerwise_outlier_distribution

    calibration, selection = _ids(16), _ids(6, seed=1)
    model = tiny_llama(layers=4)
    config = _auto(nsamples=16, candidates="owl", screen_fraction=0.25)
    pruner = LayerIFPruner(model)
    record = pruner.prune(config, calibration, progress=False, selection_dataset=selection).extra["selection"]
    assert record["screen_nsamples"] == 4 and record["finalists"] == ["uniform", "owl"]
    reference = tiny_llama(layers=4)
    full = LayerIFPruner(reference).prune(PruningConfig(method="wanda", sparsity=0.5, allocation="owl", batch_size=3),
                                          calibration, progress=False)
    owl = next(r for r in record["candidates"] if r["name"] == "owl")
    assert owl["ratios"] == full.block_ratios
    assert owl["loss"] == pytest.approx(model_loss(reference, selection, batch_size=3), rel=1e-6)
    subset = layerwise_outlier_distribution(tiny_llama(layers=4), calibration[:4], batch_size=3, progress=False)
    whole = layerwise_outlier_distribution(tiny_llama(layers=4), calibration, batch_size=3, progress=False)
    assert subset != whole  # the two stages really read different calibration


@pytest.mark.parametrize("screen_fraction", [0.25, 1.0])
def test_record_gives_each_finalist_its_paired_margin_to_uniform(screen_fraction):
    """delta_to_uniform and delta_se against brute force: each finalist pruned on its own, its loss on each
    selection window minus uniform's on the same window (float64), mean and std(ddof=1)/√n."""
    import math

    model = tiny_llama(layers=4)
    calibration, selection = _ids(8), _ids(6, seed=1)
    config = _auto(screen_fraction=screen_fraction, candidates="uniform,layerif,layerif:reverse=true")
    record = LayerIFPruner(model).prune(config, calibration, progress=False,
                                        selection_dataset=selection).extra["selection"]

    def windows(ratios):
        reference = tiny_llama(layers=4)
        allocation = Allocation.from_values(ratios, "sparsity", reference)
        LayerIFPruner(reference).prune(PruningConfig(method="wanda", sparsity=allocation.achieved_sparsity,
                                                     allocation=allocation, batch_size=3), calibration, progress=False)
        return [model_loss(reference, selection[i:i + 1]) for i in range(selection.shape[0])]

    def mean_and_se(diffs):
        mean = sum(diffs) / len(diffs)
        return mean, math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1) / len(diffs))

    rows = {r["name"]: r for r in record["candidates"]}
    uniform = windows(rows["uniform"]["ratios"])
    seen = record["screen_selection_nsamples"]  # screening scored the first `seen` windows, the rest are held out
    assert record["held_out_selection_nsamples"] == (0 if screen_fraction == 1 else selection.shape[0] - seen)
    checked = 0
    for name in record["finalists"]:
        diffs = [a - b for a, b in zip(windows(rows[name]["ratios"]), uniform)]
        mean, se = mean_and_se(diffs)
        assert rows[name]["delta_to_uniform"] == pytest.approx(mean, abs=1e-6)
        # per-window losses are float32 (in flight: batches of 3; here: one window each), about 5e-7 apart at a loss
        # of 4, so the SEs (about 1e-3) are compared to 1e-6: a wrong ddof or window subset is off by 10% or more
        assert rows[name]["delta_se"] == pytest.approx(se, rel=1e-4, abs=1e-6)
        if screen_fraction == 1:
            assert rows[name]["held_out_delta"] is None and rows[name]["held_out_se"] is None
        else:
            held_mean, held_se = mean_and_se(diffs[seen:])
            assert rows[name]["held_out_delta"] == pytest.approx(held_mean, abs=1e-6)
            assert rows[name]["held_out_se"] == pytest.approx(held_se, rel=1e-4, abs=1e-6)
        checked += 1
    assert checked == len(record["finalists"]) >= 2
    assert all(rows[n]["delta_to_uniform"] is None for n in rows if n not in record["finalists"])
    assert "± " in selection_table(record)
    assert ("held-out vs uniform" in selection_table(record)) == (screen_fraction != 1)


def test_paired_margins_by_hand():
    from hf_layerif.pruning.selection import paired_margins

    margins = paired_margins({"uniform": [1.0, 2.0, 3.0], "a": [0.9, 1.8, 3.1], "b": [1.0]}, ["uniform", "a", "b"])
    assert margins["uniform"] == (0.0, 0.0) and "b" not in margins  # different sequence count: left out
    diffs = [-0.1, -0.2, 0.1]
    mean = sum(diffs) / 3
    assert margins["a"][0] == pytest.approx(mean)
    assert margins["a"][1] == pytest.approx((sum((d - mean) ** 2 for d in diffs) / 2 / 3) ** 0.5)
    assert paired_margins({"a": [1.0]}, ["a"]) == {}


def test_a_close_call_is_flagged(caplog):
    from hf_layerif.pruning.selection import warn_if_close_call
    from hf_layerif.utils.logging import get_logger

    logger = get_logger("hf_layerif")
    logger.addHandler(caplog.handler)
    try:
        assert warn_if_close_call("owl", {"owl": (-0.01, 0.008)}, 16)
    finally:
        logger.removeHandler(caplog.handler)
    assert "under two standard errors" in caplog.text and "selection_nsamples" in caplog.text
    assert not warn_if_close_call("owl", {"owl": (-0.02, 0.008)}, 16)  # 2.5 standard errors
    assert not warn_if_close_call("uniform", {"uniform": (0.0, 0.0)}, 16)
    assert not warn_if_close_call("owl", {}, 16)


def test_margin_rule_chooses_only_candidates_that_clear_it():
    from hf_layerif.pruning.selection import clears_margin

    losses = {"uniform": 1.0, "owl": 0.99, "layerif": 0.985, "alphapruning": 0.98}
    margins = {"owl": (-0.01, 0.004), "layerif": (-0.015, 0.01), "alphapruning": (-0.02, None)}  # z 2.5, 1.5, no SE
    assert _choose(losses) == _choose(losses, margins, 0.0) == "alphapruning"  # 0: the lowest objective outright
    assert _choose(losses, margins, 1.0) == "layerif"
    assert _choose(losses, margins, 2.0) == "owl"
    assert _choose(losses, margins, 3.0) == "uniform"
    assert clears_margin("owl", margins, 2.5) and not clears_margin("owl", margins, 2.51)
    assert not clears_margin("alphapruning", margins, 0.5)  # no standard error, no evidence
    assert not clears_margin("worse", {"worse": (0.01, 0.001)}, 1.0)
    assert _choose({"uniform": 1.0, "owl": 1.0}, {"owl": (0.0, 0.0)}, 2.0) == "uniform"  # ties still go to uniform


def test_margin_rule_keeps_uniform_on_a_close_call_and_reuses_the_saved_stages(tmp_path, monkeypatch, caplog):
    """The same stages chosen twice: min_margin_se=0 takes the lowest objective; a margin that candidate does not
    clear keeps uniform without pruning anything but uniform again, says why, and the model is uniform's."""
    from hf_layerif.utils.logging import get_logger

    calibration, selection = _ids(8), _ids(6, seed=0)
    # on this draw LayerIF ε 0.2 beats uniform by 0.9e-3 nats/token at 0.9 SE, OWL by 0.65e-3: a clear order, a close call
    options = {"screen_fraction": 1.0, "candidates": "uniform,layerif:epsilon=0.2,owl"}
    first = LayerIFPruner(tiny_llama(layers=4)).prune(_auto(min_margin_se=0.0, **options), calibration, progress=False,
                                                      selection_dataset=selection, selection_dir=tmp_path)
    record = first.extra["selection"]
    lowest = record["lowest_objective"]
    assert record["chosen"] == lowest != "uniform"  # this draw has a close call: the test needs one
    row = next(r for r in record["candidates"] if r["name"] == lowest)
    z = -row["delta_to_uniform"] / row["delta_se"]
    assert 0 < z < 2
    passes = []
    real = selection_module.prune_in_flight
    monkeypatch.setattr(selection_module, "prune_in_flight",
                        lambda model, blocks, method, config, ratio_sets, *a, **k: passes.append(ratio_sets) or
                        real(model, blocks, method, config, ratio_sets, *a, **k))
    logger = get_logger("hf_layerif")
    logger.addHandler(caplog.handler)
    model = tiny_llama(layers=4)
    try:
        again = LayerIFPruner(model).prune(_auto(min_margin_se=2.0, **options), calibration, progress=False,
                                           selection_dataset=selection, selection_dir=tmp_path).extra["selection"]
    finally:
        logger.removeHandler(caplog.handler)
    assert len(passes) == 1 and len(passes[0]) == 1  # stages reused; only uniform pruned, to keep its weights
    assert again["chosen"] == "uniform" and again["lowest_objective"] == lowest and again["min_margin_se"] == 2.0
    assert again["chosen_loss"] == again["uniform_loss"] == record["uniform_loss"]
    assert model_loss(model, selection, batch_size=3) == pytest.approx(record["uniform_loss"], rel=1e-6)
    assert f"{lowest} had the lowest selection objective" in caplog.text and "uniform is kept" in caplog.text
    assert "did not clear the margin" in selection_table(again) and "2 paired standard errors" in again["rule"]


def test_margin_rule_needs_a_standard_error():
    with pytest.raises(ValueError, match="selection_nsamples >= 2"):
        _auto(selection_nsamples=1)
    _auto(selection_nsamples=1, min_margin_se=0)  # the objective alone needs one sequence
    with pytest.raises(ValueError, match="min_margin_se must be >= 0"):
        _auto(min_margin_se=-1)
