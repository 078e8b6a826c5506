"""Optional: our multiple-choice scoring agrees with lm-evaluation-harness on the same items (skipped without it)."""

import pytest
from conftest import SHARED_DATA, STORIES260K, require_shared

pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed (extra: hf-layerif[eval])")
pytestmark = pytest.mark.optional


def test_acc_and_acc_norm_match_lm_eval():
    require_shared()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_layerif.evaluation import evaluate_multiple_choice, load_task
    from hf_layerif.evaluation.lm_eval_harness import lm_eval_zero_shot

    model = AutoModelForCausalLM.from_pretrained(STORIES260K).eval()
    tokenizer = AutoTokenizer.from_pretrained(STORIES260K)
    items = load_task("arc_easy", str(SHARED_DATA / "tasks" / "llm_adapters" / "dataset" / "ARC-Easy" / "test.json"), limit=24)
    ours = evaluate_multiple_choice(model, tokenizer, items)
    theirs = lm_eval_zero_shot(model, tokenizer, local_items={"arc_easy": items})["arc_easy"]
    assert ours["acc"] == pytest.approx(theirs["acc"]) and ours["acc_norm"] == pytest.approx(theirs["acc_norm"])
