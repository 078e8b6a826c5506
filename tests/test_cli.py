"""The `hf-layerif` command line: the embedded demo (README's main job) and a real model from files."""

import json
import os

import pytest
from conftest import STORIES260K, TINYSTORIES_VAL, require_shared

from hf_layerif.cli.main import main


@pytest.fixture(scope="session")
def demo_cache():
    from pathlib import Path

    return Path(os.environ["HF_LAYERIF_CACHE"])  # set for the whole test session in conftest.py


@pytest.mark.slow
def test_score_runs_embedded_demo(tmp_path, demo_cache, capsys):
    out = tmp_path / "scores"
    code = main(["score", "--output", str(out), "--demo_train_samples", "24", "--demo_validation_samples", "8",
                 "--bootstrap_samples", "20"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "model.layers.3" in printed and "ranking stability" in printed
    meta = json.loads((out / "layerif_scores.json").read_text())
    assert meta["num_blocks"] == 4 and meta["num_train"] == 24
    assert (out / "scores.png").exists()
    from hf_layerif.demo.model import DEMO_VERSION

    training = json.loads((demo_cache / f"demo-llama-{DEMO_VERSION}" / "demo_training.json").read_text())
    # the demo model learned the tasks it can learn: the loss of copy/reverse/sort is far below log(vocab)
    assert max(training["final_loss_per_task"][t] for t in ("copy", "reverse", "sort")) < 1.0


def test_score_with_model_and_files(tmp_path, capsys):
    require_shared()
    text = TINYSTORIES_VAL.read_text(encoding="utf-8", errors="replace")
    paragraphs = [p for p in text.split("\n\n") if len(p.strip()) > 40]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps({"text": p}) for p in paragraphs[:10]))
    (tmp_path / "val.jsonl").write_text("\n".join(json.dumps({"text": p}) for p in paragraphs[50:54]))
    out = tmp_path / "scores"
    code = main(["score", "--model", str(STORIES260K), "--train", str(tmp_path / "train.jsonl"), "--validation",
                 str(tmp_path / "val.jsonl"), "--output", str(out), "--max_length", "64", "--estimator", "exact",
                 "--device", "cpu", "--bootstrap_samples", "10", "--no_plot", "true"])
    assert code == 0
    meta = json.loads((out / "layerif_scores.json").read_text())
    assert meta["estimator"]["name"] == "exact" and meta["num_blocks"] == 5


def test_cli_rejects_bad_options(capsys, monkeypatch):
    assert main(["score", "--estimator", "ekfac"]) == 2
    assert "hf-layerif score: error: estimator='ekfac' is not supported" in capsys.readouterr().err
    monkeypatch.setenv("HF_LAYERIF_DEBUG", "1")
    with pytest.raises(ValueError, match="estimator"):  # the traceback on request
        main(["score", "--estimator", "ekfac"])
    assert main(["nonsense"]) == 2


@pytest.mark.slow
def test_demo_runs_the_whole_pipeline(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--output", str(out), "--train_samples", "24", "--validation_samples", "8",
                 "--finetune_steps", "3"]) == 0
    printed = capsys.readouterr().out
    for variant in ("LoRA-MoE layerif", "LoRA-MoE uniform", "LoRA-MoE mola-2468", "LoRA-MoE alphalora",
                    "Wanda layerif", "Wanda uniform", "Wanda owl", "Wanda alphapruning"):
        assert variant in printed
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["block_scores"]) == {"reverse", "sort"}
    assert sum(summary["expert_allocations"]["layerif"]) == 16
    # exact round(N·r) per matrix: the global figure is within rounding of 0.5 (28 matrices of 4-22k weights)
    assert all(abs(r["achieved_sparsity"] - 0.5) < 1e-3 for r in summary["results"] if "achieved_sparsity" in r)
    for folder in ("lora-moe-layerif", "pruned-owl"):
        assert (out / folder / "README.md").exists() and (out / folder / "layerif_allocation.json").exists()
    assert (out / "experts.png").exists() and (out / "sparsity.png").exists()


def test_ctrl_c_ends_with_one_line_saying_what_was_kept_and_how_to_resume(monkeypatch, capsys):
    import hf_layerif.cli.score as score_cli

    def interrupted(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(score_cli, "run", interrupted)
    assert main(["score", "--model", "m", "--output", "out dir", "--train", "t.jsonl"]) == 130
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "Kept: the influence checkpoint (finished passes and adapter draws) in out dir." in err
    assert err.endswith("resumes from it: hf-layerif score --model m --output 'out dir' --train t.jsonl")
