"""Every benchmark script imports (its module-level code runs) and its result-table helper rewrites only its block."""

import importlib
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p.stem for p in BENCHMARKS.glob("*.py"))


@pytest.mark.parametrize("name", SCRIPTS)
def test_benchmark_module_imports(name, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop(name, None)
    module = importlib.import_module(name)  # a broken import (a module that does not exist) fails here
    assert module.__doc__


def test_results_block_replaces_only_its_block(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from results_block import read_block, replace_block

    path = tmp_path / "RESULTS.md"
    path.write_text("# Results\n\nhand-written text\n")
    replace_block(path, "demo", "| a |\n|---|\n| 1 |")
    replace_block(path, "other", "x")
    replace_block(path, "demo", "| a |\n|---|\n| 2 |")
    text = path.read_text()
    assert text.startswith("# Results\n\nhand-written text\n") and text.count("BEGIN demo") == 1
    assert read_block(path, "demo") == "| a |\n|---|\n| 2 |" and read_block(path, "other") == "x"
    assert read_block(path, "missing") is None


def test_result_tables_in_the_docs_match_the_benchmark_outputs(monkeypatch):
    """The README's and RESULTS.md's generated tables are exactly what the benchmark scripts make of the committed
    outputs (no hand-copied figure)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import json

    import auto_selection_tables as selection
    from result_rows import ResultRows
    from results_block import read_block

    root = BENCHMARKS.parent
    rows = ResultRows(root / "benchmarks" / "figures" / "auto_selection_smollm2.jsonl").rows()
    table = selection.summarize(rows, ["tinystories", "arc_easy"])
    cost = selection.cost_table(json.loads((root / "benchmarks" / "figures" / "auto_selection_cost.json").read_text()))
    assert table.count("\n") >= 3  # a header and at least two rows of results
    for document in (root / "benchmarks" / "RESULTS.md", root / "README.md"):
        assert read_block(document, selection.BLOCK) == table, document
        assert read_block(document, selection.COST_BLOCK) == cost, document
    zero_shot = selection.zero_shot_table(
        rows, ResultRows(root / "benchmarks" / "figures" / "auto_selection_zero_shot_smollm2.jsonl").rows(),
        ["tinystories", "arc_easy"])
    assert zero_shot.count("\n") >= 4  # the dense model's line, a header and at least one row of results
    assert read_block(root / "benchmarks" / "RESULTS.md", selection.ZERO_SHOT_BLOCK) == zero_shot
    figures = root / "benchmarks" / "figures"
    objective = selection.objective_fidelity_table(
        rows, ResultRows(figures / "auto_selection_objective_smollm2.jsonl").rows(),
        ResultRows(figures / "auto_selection_zero_shot_smollm2.jsonl").rows())
    assert objective.count("\n") >= 3
    assert read_block(root / "benchmarks" / "RESULTS.md", selection.FIDELITY_BLOCK) == objective
    margin = selection.margin_table(rows, ["tinystories", "arc_easy"])
    assert margin.count("\n") >= 3
    assert read_block(root / "benchmarks" / "RESULTS.md", selection.MARGIN_BLOCK) == margin


def test_margin_rule_re_chooses_a_recorded_run_by_hand(monkeypatch):
    """A run whose finalist won by 1.25 standard errors keeps it under min_margin_se 0 and 1 and falls back to
    uniform's own model (its perplexity, paired against the same OWL) under 2; a run that kept uniform keeps it."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import auto_selection_tables as selection

    cell = {"method": "wanda", "sparsity": 0.5, "calibration_seed": 3}
    rows = [{"key": {**cell, "allocation": "uniform"}, "wikitext2_ppl": 100.0},
            {"key": {**cell, "allocation": "owl"}, "wikitext2_ppl": 96.0},
            {"key": {**cell, "allocation": "auto_a", "scoring_seed": 0}, "wikitext2_ppl": 95.0, "chosen": "owl",
             "margins": {"owl": [-0.010, 0.008]}},
            {"key": {**cell, "allocation": "auto_b", "scoring_seed": 0}, "wikitext2_ppl": 100.0,
             "chosen": "uniform", "margins": {"layerif(epsilon=0.1, reverse=true)": [0.004, 0.003]}},
            {"key": {**cell, "allocation": "auto_a", "scoring_seed": 1}, "wikitext2_ppl": 90.0, "chosen": "owl"}]
    for rule, ppl in ((0.0, 95.0), (1.0, 95.0), (2.0, 100.0)):
        runs = {r["task"]: r for r in selection.margin_rule_runs(rows, ["a", "b"], rule)}
        assert set(runs) == {"a", "b"}  # the run without recorded margins is left out
        assert runs["a"]["z"] == pytest.approx(1.25) and runs["a"]["finalist"] == "owl"
        assert runs["a"]["ppl"] == pytest.approx(ppl) and runs["a"]["chosen"] == ("owl" if ppl == 95.0 else "uniform")
        assert runs["a"]["vs_uniform"] == pytest.approx(100 * (ppl / 100 - 1))
        assert runs["a"]["vs_owl"] == pytest.approx(100 * (ppl / 96 - 1))
        assert runs["b"]["chosen"] == "uniform" and runs["b"]["vs_uniform"] == 0.0
    table = selection.margin_table(rows, ["a", "b"])
    assert "| +1.25 |" in table and "8 selection windows, min_margin_se 2: 2 runs; auto ≤ uniform in 2 of 2" in table


def test_held_out_margin_rule_re_chooses_by_hand(monkeypatch):
    """The held-out rule reads the margin on the windows screening did not score: a finalist that won overall but by
    0.5 held-out standard errors is kept under min_margin_se 0 and dropped under 1; one that lost on the held-out
    windows is dropped under 0 too; runs without held-out margins are left out of the held-out totals."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import auto_selection_tables as selection

    cell = {"method": "sparsegpt", "sparsity": 0.6, "calibration_seed": 5}
    rows = [{"key": {**cell, "allocation": "uniform"}, "wikitext2_ppl": 200.0},
            {"key": {**cell, "allocation": "owl"}, "wikitext2_ppl": 210.0},
            {"key": {**cell, "allocation": "auto_a", "scoring_seed": 0}, "wikitext2_ppl": 190.0,
             "chosen": "alphapruning", "margins": {"alphapruning": [-0.03, 0.01]},
             "held_out_margins": {"alphapruning": [-0.002, 0.004]}},
            {"key": {**cell, "allocation": "auto_b", "scoring_seed": 0}, "wikitext2_ppl": 205.0, "chosen": "owl",
             "margins": {"owl": [-0.02, 0.01]}, "held_out_margins": {"owl": [0.001, 0.002]}},
            {"key": {**cell, "allocation": "auto_c", "scoring_seed": 0}, "wikitext2_ppl": 195.0, "chosen": "owl",
             "margins": {"owl": [-0.02, 0.01]}}]
    for rule, chosen_a in ((0.0, "alphapruning"), (1.0, "uniform")):
        runs = {r["task"]: r for r in selection.margin_rule_runs(rows, ["a", "b", "c"], rule, held_out=True)}
        assert set(runs) == {"a", "b"}
        assert runs["a"]["z"] == pytest.approx(0.5) and runs["a"]["chosen"] == chosen_a
        assert runs["a"]["ppl"] == pytest.approx(190.0 if chosen_a != "uniform" else 200.0)
        assert runs["b"]["chosen"] == "uniform" and runs["b"]["ppl"] == pytest.approx(200.0)
    all_windows = {r["task"]: r["chosen"] for r in selection.margin_rule_runs(rows, ["a", "b", "c"], 2.0)}
    assert all_windows == {"a": "alphapruning", "b": "owl", "c": "owl"}  # 3 and 2 SE on all windows
    table = selection.margin_table(rows, ["a", "b", "c"])
    assert "| -2.0 ± 4.0, +0.50 |" in table and "| — |" in table
    assert ("sparsegpt, 8 selection windows, runs with held-out margins, min_margin_se 1 on the held-out windows: "
            "2 runs; auto ≤ uniform in 2 of 2") in table


@pytest.mark.parametrize("model", ["stories260k", "smollm2"])
def test_fidelity_tables_match_the_scores_study_outputs(model, monkeypatch):
    """docs/FIDELITY.md's scoring-study and stability tables are what ``scores_study.py`` makes of its rows."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import scores_study
    from result_rows import ResultRows
    from results_block import read_block

    root = BENCHMARKS.parent
    rows = ResultRows(root / "benchmarks" / "figures" / f"scores_study_{model}.jsonl").rows()
    fidelity = root / "docs" / "FIDELITY.md"
    assert read_block(fidelity, f"scores-study-{model}") == scores_study.summarize(rows)
    assert read_block(fidelity, f"scores-stability-{model}") == scores_study.summarize_stability(rows)
