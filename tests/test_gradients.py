"""Batched per-sample gradients from the capture hooks equal a batch-size-1 autograd loop (float64).

Llama runs its RMSNorm and softmax in float32 even in a float64 model, so batched and unbatched forwards agree
only to float32 round-off there (tolerance relative to the largest entry: 1e-6); GPT-2 is float64 throughout
and is checked to 1e-10.
"""

import pytest
import torch
from conftest import random_samples, tiny_llama, with_lora

from hf_layerif.data import InfluenceCollator
from hf_layerif.influence.arguments import InfluenceArguments
from hf_layerif.influence.capture import KroneckerProjector, PerSampleGradientCapture
from hf_layerif.models.blocks import find_transformer_blocks, tracked_modules


def _loss64(model, sample, reduction="mean"):
    """model(**one_sample).loss computed in float64 (transformers' own loss upcasts logits to float32 only);
    ``reduction="sum"``: the sample's summed token loss instead of the mean."""
    ids = torch.tensor([sample["input_ids"]])
    labels = torch.tensor([sample.get("labels", sample["input_ids"])])
    logits = model(input_ids=ids).logits[0, :-1].double()
    target = labels[0, 1:]
    keep = target != -100
    return torch.nn.functional.cross_entropy(logits[keep], target[keep], reduction=reduction)


def _reference_grads(model, tracked, samples, reduction="mean"):
    """Loop over samples at batch size 1; read param.grad of each tracked weight (and bias)."""
    rows = []
    for sample in samples:
        model.zero_grad(set_to_none=True)
        loss = _loss64(model, sample, reduction)
        loss.backward()
        per_block = []
        for modules in tracked:
            parts = []
            for m in modules:
                parts.append(m.module.weight.grad.flatten())
                if m.has_bias:
                    parts.append(m.module.bias.grad.flatten())
            per_block.append(torch.cat(parts))
        rows.append(per_block)
    return [torch.stack([r[l] for r in rows]) for l in range(len(tracked))]


def _close_float32_internals(got, want):
    scale = want.abs().max().item()
    assert scale > 0
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6 * scale)


def _batched(model, tracked, samples, projector=None, reduction="mean"):
    batch = InfluenceCollator(0)(samples)
    with PerSampleGradientCapture(model, tracked, torch.float64, projector, reduction) as capture:
        grads, losses = capture.compute(batch)
    return grads, losses


@pytest.mark.parametrize("prompt_mask", [False, True])
def test_lora_target_matches_batch_size_one_loop(prompt_mask):
    model = with_lora(tiny_llama(torch.float64), randomize_b=True)
    tracked = tracked_modules(find_transformer_blocks(model), "lora")
    samples = random_samples(5, prompt_mask=prompt_mask, seed=3)
    got, losses = _batched(model, tracked, samples)
    model.eval()  # the capture runs in eval mode (no dropout); so does the reference
    want = _reference_grads(model, tracked, samples)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        _close_float32_internals(g, w)
    ref_losses = torch.stack([_loss64(model, s).detach() for s in samples])
    torch.testing.assert_close(losses, ref_losses, rtol=1e-6, atol=1e-7)
    hf_losses = torch.stack([model(input_ids=torch.tensor([s["input_ids"]]),
                                   labels=torch.tensor([s.get("labels", s["input_ids"])])).loss.detach() for s in samples])
    torch.testing.assert_close(losses, hf_losses.double(), rtol=1e-6, atol=1e-7)  # HF's loss is float32


def test_summed_sample_loss_matches_batch_size_one_loop():
    """loss_reduction="sum": each sample's gradient is that of its summed token loss (samples of unequal length,
    so the sum is not a fixed multiple of the mean)."""
    model = with_lora(tiny_llama(torch.float64), randomize_b=True)
    tracked = tracked_modules(find_transformer_blocks(model), "lora")
    samples = random_samples(5, prompt_mask=True, seed=4)
    assert len({len(s["input_ids"]) for s in samples}) > 1
    got, losses = _batched(model, tracked, samples, reduction="sum")
    model.eval()
    want = _reference_grads(model, tracked, samples, reduction="sum")
    for g, w in zip(got, want):
        _close_float32_internals(g, w)
    ref = torch.stack([_loss64(model, s, "sum").detach() for s in samples])
    torch.testing.assert_close(losses, ref, rtol=1e-6, atol=1e-6)
    mean_grads, _ = _batched(model, tracked, samples)
    assert not torch.allclose(got[0], mean_grads[0])
    with pytest.raises(ValueError, match="loss_reduction=.*choose one of"):
        InfluenceArguments(loss_reduction="token")


def test_full_target_matches_batch_size_one_loop():
    model = tiny_llama(torch.float64)
    for p in model.parameters():
        p.requires_grad_(True)
    tracked = tracked_modules(find_transformer_blocks(model), "full")
    assert len(tracked[0]) == 7  # q, k, v, o, gate, up, down
    samples = random_samples(4, seed=7)
    got, _ = _batched(model, tracked, samples)
    want = _reference_grads(model, tracked, samples)
    for g, w in zip(got, want):
        _close_float32_internals(g, w)


def test_full_target_gpt2_conv1d_with_bias():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=16, n_layer=2, n_head=2, n_positions=32,
                                       attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0)).double().eval()
    tracked = tracked_modules(find_transformer_blocks(model), "full")
    assert all(m.layout == "in_out" and m.has_bias for m in tracked[0])
    samples = random_samples(4, seed=2)
    got, _ = _batched(model, tracked, samples)
    want = _reference_grads(model, tracked, samples)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


def test_capture_does_not_touch_param_grad_and_restores_model_state():
    model = with_lora(tiny_llama(torch.float64), randomize_b=True)
    model.train()
    tracked = tracked_modules(find_transformer_blocks(model), "lora")
    _batched(model, tracked, random_samples(3))
    assert all(p.grad is None for p in model.parameters())
    assert model.training and all(m.training for m in model.modules())
    assert not any(hasattr(m, "_hf_hook") for m in model.modules())


def test_projection_preserves_inner_products_in_expectation():
    model = tiny_llama(torch.float64)
    tracked = tracked_modules(find_transformer_blocks(model), "full")
    samples = random_samples(3, seed=4)
    exact, _ = _batched(model, tracked, samples)
    estimates = []
    for seed in range(60):
        projected, _ = _batched(model, tracked, samples, KroneckerProjector(8, seed))
        estimates.append(projected[0] @ projected[0].T)
    mean = torch.stack(estimates).mean(0)
    truth = exact[0] @ exact[0].T
    assert projected[0].shape[1] < exact[0].shape[1]
    # unbiased: the average over projections approaches the exact Gram matrix
    assert torch.allclose(mean, truth, rtol=0.25, atol=0.05 * truth.abs().max().item())
