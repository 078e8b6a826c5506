"""Block-sequential calibration, calibration sampling and OWL's outlier distribution."""

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA, STORIES260K, require_shared, tiny_llama

from hf_layerif.allocation.owl import layerwise_outlier_distribution, owl_ratios
from hf_layerif.calibration import BlockSequentialRunner, InputStatistics, get_calibration_data
from hf_layerif.models.blocks import find_transformer_blocks

C4 = SHARED_DATA / "text" / "c4" / "c4_en_train00000_first1000.jsonl"


def _ids(n=6, T=10, vocab=50, seed=0):
    return torch.randint(3, vocab, (n, T), generator=torch.Generator().manual_seed(seed))


def _block_outputs_whole_model(model, ids):
    outs = {}
    blocks = find_transformer_blocks(model)
    handles = [b.register_forward_hook(lambda m, a, o, i=i: outs.setdefault(i, []).append(o[0] if isinstance(o, tuple) else o))
               for i, b in enumerate(blocks.modules)]
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    for h in handles:
        h.remove()
    return [torch.cat(outs[i]) for i in range(len(blocks))]


@pytest.mark.parametrize("activation", [{}, {"activation_device": "cpu", "activation_dtype": torch.bfloat16}])
def test_block_sequential_equals_whole_model_forward(activation):
    model = tiny_llama(torch.float32, layers=3)
    ids = _ids()
    want = _block_outputs_whole_model(model, ids)
    seen = []
    runner = BlockSequentialRunner(model, ids, batch_size=4, progress=False, **activation)

    def visit(index, block, forward):
        seen.append(index)

    final = runner.run(visit)
    assert seen == [0, 1, 2]
    got = torch.cat([args[0] for args, _ in final]).float()
    tol = 1e-6 if not activation else 5e-2
    torch.testing.assert_close(got, want[-1], rtol=tol, atol=tol)


def test_input_statistics_match_direct_column_norms():
    model = tiny_llama(torch.float64, layers=2)
    ids = _ids(seed=3)
    captured = {}
    q = model.model.layers[1].self_attn.q_proj
    handle = q.register_forward_pre_hook(lambda m, a: captured.setdefault("x", a[0].detach().clone()))
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    handle.remove()
    x = captured["x"].reshape(-1, captured["x"].shape[-1])
    norms = {}

    def visit(index, block, forward):
        if index == 1:
            with InputStatistics(block, dtype=torch.float64) as stats:
                forward()
            norms["q"] = stats.column_norms("self_attn.q_proj")

    BlockSequentialRunner(model, ids, batch_size=6, progress=False).run(visit)
    torch.testing.assert_close(norms["q"], x.norm(dim=0), rtol=1e-10, atol=1e-12)


def test_owl_outlier_distribution_matches_definition():
    model = tiny_llama(torch.float64, layers=2)
    ids = _ids(seed=4)
    inputs = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and ".layers." in name:
            handles.append(module.register_forward_pre_hook(lambda m, a, n=name: inputs.setdefault(n, a[0].detach())))
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    for h in handles:
        h.remove()
    want = []
    for layer in range(2):
        pooled = []
        for name, x in inputs.items():
            if f"layers.{layer}." in name:
                weight = dict(model.named_modules())[name].weight
                pooled.append((weight.abs() * x.reshape(-1, x.shape[-1]).norm(dim=0)).flatten())
        pooled = torch.cat(pooled)
        want.append(float((pooled > 5 * pooled.mean()).sum()) / pooled.numel() * 100)
    got = layerwise_outlier_distribution(model, ids, batch_size=6, progress=False)
    assert got == pytest.approx(want, rel=1e-12)


def test_owl_ratios_span_two_lambda_around_target():
    lod = [3.0, 1.0, 2.0, 5.0]
    ratios = np.array(owl_ratios(lod, 0.6, lam=0.08))
    assert ratios.mean() == pytest.approx(0.6)
    assert ratios.max() - ratios.min() == pytest.approx(0.16)
    assert int(np.argmin(ratios)) == 3  # most outliers: pruned least
    assert owl_ratios([1.0, 1.0], 0.5) == [0.5, 0.5]


def test_calibration_sampling_is_deterministic_and_checks_length():
    from transformers import PreTrainedTokenizerFast

    from hf_layerif.demo.corpus import build_tokenizer

    tok: PreTrainedTokenizerFast = build_tokenizer()
    texts = ["abcdefgh" * 5, "hgfedcba" * 6, "ab"]
    a = get_calibration_data(tok, texts, nsamples=4, seqlen=12, seed=0)
    b = get_calibration_data(tok, texts, nsamples=4, seqlen=12, seed=0)
    assert a.shape == (4, 12) and torch.equal(a, b)
    assert not torch.equal(a, get_calibration_data(tok, texts, nsamples=4, seqlen=12, seed=1))
    with pytest.raises(ValueError, match="seqlen"):
        get_calibration_data(tok, ["ab", "cd"], nsamples=2, seqlen=50, max_tries=50)


def test_owl_on_stories260k_spans_two_lambda():
    require_shared()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(STORIES260K)
    tokenizer = AutoTokenizer.from_pretrained(STORIES260K)
    ids = get_calibration_data(tokenizer, str(C4), nsamples=8, seqlen=128, seed=0)
    lod = layerwise_outlier_distribution(model, ids, batch_size=4, progress=False)
    ratios = np.array(owl_ratios(lod, 0.5))
    assert len(ratios) == 5 and np.isfinite(lod).all()
    assert ratios.max() - ratios.min() == pytest.approx(0.16, abs=1e-9)
    assert ratios.mean() == pytest.approx(0.5, abs=1e-9)
