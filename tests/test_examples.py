"""Every example runs end to end at a tiny scale (so they cannot rot)."""

import json
import sys
from pathlib import Path

import pytest
from conftest import SHARED_DATA, STORIES260K, require_shared

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))


def test_expert_allocation_example(tmp_path):
    require_shared()
    import expert_allocation_mistral

    obqa = SHARED_DATA / "tasks" / "llm_adapters" / "dataset" / "openbookqa"
    result = expert_allocation_mistral.main([
        "--model", str(STORIES260K), "--task", "openbookqa", "--train_file", str(obqa / "train.json"),
        "--test_file", str(obqa / "test.json"), "--output", str(tmp_path), "--total_experts", "10",
        "--influence_train_samples", "8", "--influence_validation_samples", "4", "--fit_steps", "3", "--max_steps", "2",
        "--batch_size", "4", "--gradient_accumulation_steps", "1", "--max_length", "96", "--dtype", "float32",
        "--eval_limit", "8"])
    assert sum(result["experts"]) == 10 and result["n"] == 8
    assert (tmp_path / "adapter" / "adapter_config.json").exists() and (tmp_path / "results.json").exists()
    # the allocation is the one the saved scores give, and the saved adapter has those experts per block
    from hf_layerif import LayerIFConfig, LayerInfluenceScores
    from hf_layerif.allocation import expert_allocation

    scores = LayerInfluenceScores.from_pretrained(tmp_path / "scores")
    assert scores.provenance["protocol"]["adapter"] == "fitted" and scores.influence.shape == (5, 8)
    assert result["experts"] == expert_allocation(scores, 10).values
    assert LayerIFConfig.from_pretrained(tmp_path / "adapter").experts_per_layer == result["experts"]
    assert json.loads((tmp_path / "results.json").read_text()) == result
    assert 0 <= result["acc"] <= 1 and (result["acc"] * 8).is_integer()


@pytest.mark.parametrize("task,relative", [("mrpc", "glue/MRPC/dev.tsv"), ("cola", "glue/CoLA/raw/in_domain_dev.tsv"),
                                           ("commonsenseqa", "commonsenseqa/dev_rand_split.jsonl"),
                                           ("scienceqa", "scienceqa_mola/sampled_data/sampled_scienceqa_train_all.hf")])
def test_finetune_task_loaders(task, relative):
    require_shared()
    from task_data import load_finetune_task

    rows, items = load_finetune_task(task, str(SHARED_DATA / "tasks" / relative), "test")
    assert len(rows) == len(items) > 100
    assert all(rows[i]["output"] == items[i].choices[items[i].gold] for i in range(len(rows)))


def test_sparsity_allocation_example(tmp_path):
    require_shared()
    import sparsity_allocation_mistral

    scores_dir = tmp_path / "scores"
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_layerif import compute_layer_influence

    tokenizer = AutoTokenizer.from_pretrained(STORIES260K)
    text = (SHARED_DATA / "text" / "tinystories" / "tinystories_val_head.txt").read_text(errors="replace")
    paragraphs = [p for p in text.split("\n\n") if len(p) > 80]
    scored = get_peft_model(AutoModelForCausalLM.from_pretrained(STORIES260K), LoraConfig(r=4, target_modules="all-linear"))
    compute_layer_influence(scored, paragraphs[:8], paragraphs[100:104], tokenizer=tokenizer, max_length=64,
                            output_dir=scores_dir, progress=False, bootstrap_samples=0)
    rows = sparsity_allocation_mistral.main([
        "--model", str(STORIES260K), "--output", str(tmp_path / "out"), "--methods", "wanda",
        "--allocations", "uniform,layerif", "--scores", str(scores_dir),
        "--calibration", str(SHARED_DATA / "text" / "c4" / "c4_en_train00000_first1000.jsonl"),
        "--nsamples", "4", "--seqlen", "64", "--tasks", "arc_easy,rte", "--task_dir", str(SHARED_DATA / "tasks"),
        "--wikitext2", str(SHARED_DATA / "text" / "wikitext2_raw" / "wikitext2_raw_test_joined.txt"),
        "--eval_limit", "8", "--eval_max_windows", "4", "--dtype", "float32"])
    assert [r["allocation"] for r in rows] == ["uniform", "layerif"]
    assert all(abs(r["achieved"] - 0.5) < 1e-3 and "arc_easy" in r for r in rows)
    assert json.loads((tmp_path / "out" / "results.json").read_text()) == rows
    # the uniform row is what the pruner and the perplexity function give directly on the same inputs
    from hf_layerif.calibration import get_calibration_data
    from hf_layerif.pruning import LayerIFPruner, PruningConfig, perplexity

    wiki = (SHARED_DATA / "text" / "wikitext2_raw" / "wikitext2_raw_test_joined.txt").read_text(encoding="utf-8")
    dense = AutoModelForCausalLM.from_pretrained(STORIES260K)
    dense_ppl = perplexity(dense, tokenizer, wiki, seqlen=64, max_windows=4)
    calibration = SHARED_DATA / "text" / "c4" / "c4_en_train00000_first1000.jsonl"
    pruner = LayerIFPruner(dense, tokenizer)
    pruner.prune(PruningConfig(method="wanda", sparsity=0.5, nsamples=4, seqlen=64, calibration=str(calibration)),
                 get_calibration_data(tokenizer, str(calibration), 4, 64, 0), progress=False)
    assert rows[0]["wikitext2_ppl"] == pytest.approx(perplexity(pruner.model, tokenizer, wiki, seqlen=64, max_windows=4),
                                                     rel=1e-5)
    assert all(r["wikitext2_ppl"] > dense_ppl for r in rows)  # removing half the weights costs perplexity
    assert rows[1]["wikitext2_ppl"] != rows[0]["wikitext2_ppl"]  # another allocation, another model
    assert all(0 <= r["arc_easy"] <= 1 and (r["arc_easy"] * 8).is_integer() for r in rows)


@pytest.mark.slow
def test_cpu_stories260k_example(tmp_path):
    require_shared()
    import cpu_stories260k

    results = cpu_stories260k.main(["--data", str(SHARED_DATA), "--output", str(tmp_path), "--score_samples", "8",
                                    "--fit_steps", "3", "--finetune_steps", "2", "--eval_limit", "8", "--nsamples", "4", "--seqlen", "64",
                                    "--eval_windows", "4"])
    assert len(results["block_scores"]) == 5
    assert set(results["pruning"]) == {"uniform", "owl", "alphapruning", "layerif"}
    assert set(results["experts"]) == {"layerif", "uniform"}
