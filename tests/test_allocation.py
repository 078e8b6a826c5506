"""Expert and sparsity allocation and PL_Alpha_Hill against direct float64 implementations of docs/METHOD.md."""

import math

import numpy as np
import pytest
import torch
from conftest import STORIES260K, require_shared, tiny_llama

from hf_layerif.allocation import allocate_experts, allocate_sparsity, block_alpha_hill, mola_pattern, pl_alpha_hill


def ref_experts(q, T, alpha):
    L = len(q)
    t = [x**alpha for x in q]
    if sum(t) == 0:
        t = [1.0] * L
    f = [x / sum(t) * (T - L) for x in t]
    E = [math.floor(x) + 1 for x in f]
    R = T - sum(E)
    ranked = sorted(range(L), key=lambda i: (-(f[i] - math.floor(f[i])), i))
    for i in ranked[:R]:
        E[i] += 1
    return E


@pytest.mark.parametrize("q,T,alpha", [([1, 2, 3, 4, 0.5], 20, 1.0), ([0.3, 0.3, 0.3], 10, 2.0),
                                       (list(np.linspace(0.1, 5, 32)), 160, 1.5), ([1e-9, 7.0, 0.0, 2.0], 9, 0.5)])
def test_expert_allocation_matches_reference(q, T, alpha):
    got = allocate_experts(q, T, alpha)
    assert got == ref_experts(q, T, alpha)
    assert sum(got) == T and min(got) >= 1


def test_expert_allocation_edge_cases(caplog):
    assert allocate_experts([0, 0, 0, 0], 10) == [3, 3, 2, 2]  # all zero: uniform, ties to lower index
    assert allocate_experts(None, 10, method="uniform", num_blocks=4) == [3, 3, 2, 2]
    assert allocate_experts([-1.0, 0.0, 1.0], 6) == ref_experts([0.0, 1.0, 2.0], 6, 1.0)
    assert allocate_experts([0.0, 100.0, 0.0], 30) == [1, 28, 1]  # one dominant block
    with pytest.raises(ValueError, match="NaN"):
        allocate_experts([1.0, float("nan")], 4)
    with pytest.raises(ValueError, match="blocks"):
        allocate_experts([1.0, 2.0], 4, num_blocks=3)
    with pytest.raises(ValueError, match=">= the number of blocks"):
        allocate_experts([1.0, 2.0, 3.0], 2)
    assert allocate_experts(None, 12, method="alphalora", alpha_hill=[2.0, 3.0, 4.0]) == ref_experts([2.0, 3.0, 4.0], 12, 2.5)


def test_mola_patterns():
    assert sum(mola_pattern("2468", 32)) == 160 and mola_pattern("2468", 32)[:9] == [2] * 8 + [4]
    assert sum(mola_pattern("5555", 32)) == sum(mola_pattern("8642", 32)) == 160
    assert mola_pattern("46810", 10) == [4, 4, 6, 6, 8, 8, 10, 10, 10, 10]  # the last group absorbs the remainder
    assert allocate_experts(None, None, method="1234", num_blocks=5) == [1, 2, 3, 4, 4]
    with pytest.raises(ValueError, match="pattern"):
        mola_pattern("999", 8)


def ref_sparsity(q, S, eps, P, smooth):
    from scipy.signal import savgol_filter

    a = np.abs(np.array(q, dtype=np.float64))
    P = np.array(P, dtype=np.float64)
    if a.max() == a.min():
        return np.full(len(a), S)
    a = (a - a.min()) / (a.max() - a.min())
    L = len(a)
    if smooth:
        w = 7 if L >= 7 else (L if L % 2 else L - 1)
        if w > 3:
            a = savgol_filter(a, w, 3)
    r = (a - a.min()) / (a.max() - a.min()) * (2 * eps) + (1 - eps)
    r = r * S * P.sum() / (P * r).sum()
    # exact budget after the clamp, found by bisection on a common scale c: Σ P min(c r, 0.99) = S Σ P
    lo, hi = 0.0, 1e6
    for _ in range(300):
        c = (lo + hi) / 2
        if (P * np.minimum(c * r, 0.99)).sum() < S * P.sum():
            lo = c
        else:
            hi = c
    return np.minimum(lo * r, 0.99)


@pytest.mark.parametrize("q,S,eps,smooth", [
    (list(np.random.default_rng(0).random(32)), 0.5, 0.3, True),
    ([3, 1, 4, 1, 5], 0.6, 0.2, True),           # L < 7: window shrinks to 5
    ([3, 1, 4, 1, 5, 9], 0.6, 0.2, True),        # L = 6: window 5
    ([2, 7, 1], 0.5, 0.3, True),                 # L <= 3: smoothing skipped
    ([0.0, 0.0, 10.0, 0.0, 0.0, 0.0, 0.0, 0.0], 0.7, 0.9, False),  # one dominant block: the clamp binds
])
def test_sparsity_allocation_matches_reference_and_budget(q, S, eps, smooth):
    P = [100 + 10 * i for i in range(len(q))]
    got = np.array(allocate_sparsity(q, S, eps, smooth=smooth, params_per_block=P))
    want = ref_sparsity(q, S, eps, P, smooth)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    assert abs((got * np.array(P)).sum() / sum(P) - S) < 1e-9
    assert got.max() <= 0.99 + 1e-15 and got.min() >= 0


def test_sparsity_edge_cases():
    assert allocate_sparsity([1.0, 1.0, 1.0], 0.5) == [0.5, 0.5, 0.5]
    assert allocate_sparsity(None, 0.4, method="uniform", num_blocks=3) == [0.4] * 3
    larger = allocate_sparsity([1.0, 2.0, 3.0, 4.0, 5.0], 0.5, smooth=False)
    assert larger == sorted(larger)  # a larger score gets a larger ratio
    alpha = allocate_sparsity(None, 0.5, 0.3, method="alphapruning", alpha_hill=[2.0, 4.0, 3.0])
    np.testing.assert_allclose(alpha, ref_sparsity([2.0, 4.0, 3.0], 0.5, 0.3, [1, 1, 1], False), rtol=1e-12)
    for bad in ({"target_sparsity": 1.0}, {"epsilon": 1.0}):
        with pytest.raises(ValueError):
            allocate_sparsity([1.0, 2.0], **{"target_sparsity": 0.5, "epsilon": 0.3, **bad})
    with pytest.raises(ValueError, match="NaN"):
        allocate_sparsity([1.0, float("inf")], 0.5)


def ref_alpha_hill(W, mode="peak"):
    lam = np.sort(np.linalg.svd(W.astype(np.float64), compute_uv=False) ** 2)
    lam = lam[lam > 0]
    N = len(lam)
    logs = np.log10(lam)
    counts, edges = np.histogram(logs, bins=100, range=(logs.min(), logs.max()))
    peak = 10 ** edges[np.argmax(counts)]
    best = (np.inf, None)
    for i in ([N // 2] if mode == "mid" else range(N - 1)):
        if mode == "peak" and lam[i] > 1.5 * peak:
            break
        n = N - i
        alpha = 1 + n / (np.sum(np.log(lam[i:])) - n * np.log(lam[i]))
        D = max(abs(1 - (lam[i + j] / lam[i]) ** (1 - alpha) - j / n) for j in range(n))
        if D < best[0]:
            best = (D, alpha)
    return best[1]


@pytest.mark.parametrize("shape", [(40, 60), (64, 64), (90, 30)])
def test_pl_alpha_hill_matches_reference(shape):
    gen = np.random.default_rng(sum(shape))
    W = gen.standard_t(3, size=shape)  # heavy-tailed entries
    for mode in ("peak", "scan", "mid"):
        assert pl_alpha_hill(torch.from_numpy(W), xmin=mode, chunk=7) == pytest.approx(ref_alpha_hill(W, mode), rel=1e-10)


def test_pl_alpha_hill_on_stories260k_is_finite():
    require_shared()
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(STORIES260K)
    values = block_alpha_hill(model, cache=False)
    assert len(values) == 5 and all(math.isfinite(v) and v > 1 for v in values)
    # each block's value is the mean of the float64 reference over its linear weights (7 per Llama block)
    for value, layer in zip(values, model.model.layers):
        weights = [m.weight for m in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj,
                                      layer.self_attn.o_proj, layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj)]
        expected = sum(ref_alpha_hill(w.detach().double().numpy()) for w in weights) / len(weights)
        assert value == pytest.approx(expected, rel=1e-6)


def test_reverse_direction_is_a_mirror():
    q = [1.0, 4.0, 2.0, 3.0]
    assert allocate_experts(q, 14, reverse=True) == ref_experts([4.0, 1.0, 3.0, 2.0], 14, 1.0)
    forward = allocate_sparsity(q, 0.5, smooth=False)
    backward = allocate_sparsity(q, 0.5, smooth=False, reverse=True)
    np.testing.assert_allclose(backward, ref_sparsity([4.0, 1.0, 3.0, 2.0], 0.5, 0.3, [1] * 4, False), rtol=1e-12)
    assert int(np.argmax(forward)) == 1 and int(np.argmin(backward)) == 1


def test_allocation_methods_come_from_one_registry_with_their_own_options():
    from hf_layerif.allocation import expert_allocation, sparsity_allocation
    from hf_layerif.allocation.methods import ALLOCATION_METHODS, allocation_method, register_allocation_method

    assert {"layerif", "uniform", "alphalora", "2468"} <= set(ALLOCATION_METHODS["experts"])
    assert set(ALLOCATION_METHODS["sparsity"]) >= {"layerif", "uniform", "alphapruning", "owl"}
    with pytest.raises(ValueError, match="unknown sparsity allocation method 'nope'; use one of alphapruning"):
        allocate_sparsity([1.0, 2.0], 0.5, method="nope")
    with pytest.raises(ValueError, match="needs outlier_ratios="):
        allocate_sparsity(None, 0.5, method="owl", num_blocks=3)

    @register_allocation_method("sparsity", "first-heavy", options={"tilt": 0.1}, description="test method")
    def first_heavy(values, target, params, *, tilt):
        ratios = np.full(len(params), target)
        ratios[0] += tilt
        ratios[1:] -= tilt * params[0] / params[1:].sum()
        return ratios.tolist()

    try:
        got = allocate_sparsity(None, 0.5, method="first-heavy", params_per_block=[1.0, 1.0, 2.0])
        assert got == pytest.approx([0.6, 0.5 - 0.1 / 3, 0.5 - 0.1 / 3])
        assert allocation_method("sparsity", "first-heavy").resolve_options({"epsilon": 0.2, "tilt": None}) == {"tilt": 0.1}
    finally:
        del ALLOCATION_METHODS["sparsity"]["first-heavy"]

    # provenance records the options the method used, nothing else
    model = tiny_llama(layers=4)
    owl = sparsity_allocation(None, 0.5, model=model, method="owl", outlier_ratios=[0.1, 0.2, 0.3, 0.4], owl_m=3.0)
    assert "epsilon" not in owl.hyperparameters and owl.hyperparameters["owl_m"] == 3.0
    assert owl.hyperparameters["owl_lambda"] == pytest.approx(0.08)
    uniform = sparsity_allocation(None, 0.5, model=model, method="uniform")
    assert set(uniform.hyperparameters) == {"target_sparsity", "mapping"} and uniform.scores is None
    layerif = sparsity_allocation([1.0, 2.0, 3.0, 4.0], 0.5, model=model, epsilon=0.2)
    assert layerif.hyperparameters["epsilon"] == 0.2 and layerif.hyperparameters["smooth"] is True
    alpha = expert_allocation(None, 12, model=model, method="alphalora", alpha_hill=[2.0, 3.0, 4.0, 5.0])
    assert alpha.hyperparameters["exponent"] == 2.5 and "alpha" not in alpha.hyperparameters
    assert alpha.scores == [2.0, 3.0, 4.0, 5.0]  # the input it used, not LayerIF scores


def test_allocate_cli_rejects_an_unknown_baseline_before_reading_anything(capsys):
    from hf_layerif.cli.main import main

    with pytest.raises(SystemExit, match="--baseline: unknown sparsity allocation method 'owl2'; use one of"):
        main(["allocate", "sparsity", "--scores", "missing-folder", "--baseline", "owl2", "--sparsity", "0.5"])
    with pytest.raises(SystemExit):
        main(["allocate", "sparsity", "--help"])
    assert "owl: OWL" in capsys.readouterr().out
