"""Zero-shot multiple-choice scoring against a direct per-request computation, and the local task parsers."""

import pytest
import torch
from conftest import SHARED_DATA, require_shared, tiny_llama

from hf_layerif.demo.corpus import build_tokenizer
from hf_layerif.evaluation import MultipleChoiceItem, evaluate_multiple_choice, load_task


@torch.no_grad()
def _direct_scores(model, tokenizer, context, choices):
    out = []
    for choice in choices:
        ctx = tokenizer(context)["input_ids"]
        cont = tokenizer(context + choice)["input_ids"][len(ctx):]
        ids = torch.tensor([ctx + cont])
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
        out.append(sum(float(logprobs[len(ctx) - 1 + j, t]) for j, t in enumerate(cont)))
    return out


def test_accuracy_matches_direct_loglikelihoods():
    tokenizer = build_tokenizer()
    model = tiny_llama(vocab=len(tokenizer.get_vocab())).eval()
    items = [MultipleChoiceItem("c:abc=", ["abc", "cba", "aaaa"], 0), MultipleChoiceItem("r:ab=", ["ba", "ab"], 0),
             MultipleChoiceItem("s:dca=", ["acd", "dca", "cad"], 2), MultipleChoiceItem("m:1+2=", ["3", "4"], 1)]
    result = evaluate_multiple_choice(model, tokenizer, items, batch_size=3)
    acc = acc_norm = 0
    for item in items:
        scores = _direct_scores(model, tokenizer, item.context, item.choices)
        acc += int(max(range(len(scores)), key=lambda j: scores[j]) == item.gold)
        norm = [s / len(c) for s, c in zip(scores, item.choices)]
        acc_norm += int(max(range(len(norm)), key=lambda j: norm[j]) == item.gold)
    assert result == {"acc": acc / 4, "acc_norm": acc_norm / 4, "n": 4}


@pytest.mark.parametrize("task,relative,count,choices", [
    ("arc_easy", "llm_adapters/dataset/ARC-Easy/test.json", 2376, None),
    ("arc_challenge", "llm_adapters/dataset/ARC-Challenge/test.json", 1172, None),
    ("openbookqa", "llm_adapters/dataset/openbookqa/test.json", 500, 4),
    ("boolq", "llm_adapters/dataset/boolq/test.json", 3270, 2),
    ("winogrande", "llm_adapters/dataset/winogrande/test.json", 1267, 2),
    ("piqa", "llm_adapters/dataset/piqa/test.json", 1838, 2),
    ("rte", "glue/RTE/dev.tsv", 277, 2),
    ("hellaswag", "hellaswag/hellaswag_val_full.txt.bz2", 10042, 4),
])
def test_local_task_files_parse(task, relative, count, choices):
    require_shared()
    items = load_task(task, str(SHARED_DATA / "tasks" / relative))
    assert len(items) == count
    for item in items:
        assert 0 <= item.gold < len(item.choices)
        assert all(c.strip() for c in item.choices)
        if choices is not None:
            assert len(item.choices) == choices
    if task == "winogrande":
        assert isinstance(items[0].context, list) and "_" not in items[0].context[0]
