"""Magnitude, Wanda and SparseGPT on single matrices against direct implementations of their definitions."""

import math

import pytest
import torch

from hf_layerif.pruning.masks import (
    exact_count,
    inverse_hessian_factor,
    magnitude_mask,
    n_m_mask,
    sparsegpt_prune,
    wanda_mask,
)


def _problem(rows=12, cols=16, tokens=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(rows, cols, generator=gen, dtype=torch.float64)
    X = torch.randn(tokens, cols, generator=gen, dtype=torch.float64) * torch.linspace(0.2, 3.0, cols, dtype=torch.float64)
    return W, X


@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.5, 0.77, 1.0])
def test_magnitude_prunes_exactly_the_smallest(ratio):
    W, _ = _problem()
    mask = magnitude_mask(W, ratio)
    k = math.floor(W.numel() * ratio + 0.5)
    order = sorted(range(W.numel()), key=lambda i: (abs(float(W.view(-1)[i])), i))
    want = torch.zeros(W.numel(), dtype=torch.bool)
    want[order[:k]] = True
    assert torch.equal(mask.view(-1), want) and int(mask.sum()) == k


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.6, 0.9])
def test_wanda_rows_and_exact_total(ratio):
    W, X = _problem(rows=10, cols=14)
    norms = X.norm(dim=0)
    mask = wanda_mask(W, norms, ratio)
    scores = (W.abs() * norms).tolist()
    total = math.floor(W.numel() * ratio + 0.5)
    base = total // W.shape[0]
    per_row = [sorted(range(W.shape[1]), key=lambda j, r=r: (scores[r][j], j)) for r in range(W.shape[0])]
    next_cost = sorted(range(W.shape[0]), key=lambda r: (scores[r][per_row[r][base]] if base < W.shape[1] else 0, r))
    extra = set(next_cost[: total - base * W.shape[0]])
    want = torch.zeros_like(mask)
    for r in range(W.shape[0]):
        want[r, per_row[r][: base + (r in extra)]] = True
    assert torch.equal(mask, want) and int(mask.sum()) == total


def test_n_m_patterns_on_every_row():
    W, X = _problem(rows=8, cols=16)
    for n, m in ((2, 4), (4, 8)):
        for mask in (magnitude_mask(W, 0.0, (n, m)), wanda_mask(W, X.norm(dim=0), 0.0, (n, m)),
                     sparsegpt_prune(W, X.T @ X, 0.0, (n, m))[1]):
            groups = mask.reshape(8, 16 // m, m)
            assert bool((groups.sum(-1) == n).all())
        scores = W.abs()
        want = torch.zeros_like(scores, dtype=torch.bool)
        for r in range(8):
            for g in range(16 // m):
                block = [(float(scores[r, g * m + j]), j) for j in range(m)]
                for _, j in sorted(block)[:n]:
                    want[r, g * m + j] = True
        assert torch.equal(n_m_mask(scores, n, m), want)
    with pytest.raises(ValueError, match="multiple of 4"):
        n_m_mask(torch.rand(3, 6), 2, 4)


def _reconstruction_error(W, W_hat, X):
    return float(((X @ W.T) - (X @ W_hat.T)).norm())


@pytest.mark.parametrize("ratio", [0.5, 0.7])
def test_sparsegpt_reconstructs_better_than_wanda_and_magnitude(ratio):
    W, X = _problem(rows=32, cols=96, tokens=256, seed=3)
    H = X.T @ X
    pruned, mask, info = sparsegpt_prune(W, H, ratio)  # one column block of 128
    assert int(mask.sum()) == exact_count(W.numel(), ratio)
    assert int((pruned == 0).sum()) == exact_count(W.numel(), ratio)
    errors = {
        "sparsegpt": _reconstruction_error(W, pruned, X),
        "wanda": _reconstruction_error(W, W.masked_fill(wanda_mask(W, X.norm(dim=0), ratio), 0), X),
        "magnitude": _reconstruction_error(W, W.masked_fill(magnitude_mask(W, ratio), 0), X),
    }
    assert errors["sparsegpt"] < errors["wanda"] and errors["sparsegpt"] < errors["magnitude"], errors
    # several column blocks: the mask is chosen per block (exact total kept) and the error feedback still helps
    blocked, blocked_mask, _ = sparsegpt_prune(W, H, ratio, blocksize=16)
    assert int(blocked_mask.sum()) == exact_count(W.numel(), ratio)
    assert _reconstruction_error(W, blocked.double(), X) < _reconstruction_error(W, W.masked_fill(blocked_mask, 0), X)


def _obs_reference(W, H, ratio, percdamp=0.01):
    """One column block: the mask from w²/[(H_{c:,c:})⁻¹]_00 over the whole matrix, then columns eliminated in
    order with the explicit inverse of the remaining Hessian (no Cholesky tricks)."""
    W = W.clone()
    H = H + percdamp * torch.mean(torch.diag(H)) * torch.eye(H.shape[0], dtype=H.dtype)
    cols = W.shape[1]
    inverses = [torch.linalg.inv(H[i:, i:]) for i in range(cols)]
    diag = torch.tensor([float(inv[0, 0]) for inv in inverses], dtype=W.dtype)
    scores = W**2 / diag.unsqueeze(0)  # w² / U_cc² with U the upper Cholesky factor of H⁻¹
    k = math.floor(W.numel() * ratio + 0.5)
    order = sorted(range(W.numel()), key=lambda i: (float(scores.view(-1)[i]), i))
    mask = torch.zeros(W.numel(), dtype=torch.bool)
    mask[order[:k]] = True
    mask = mask.view_as(W)
    for i in range(cols):
        q = W[:, i].masked_fill(mask[:, i], 0)
        err = (W[:, i] - q) / inverses[i][0, 0]
        W[:, i:] -= err.unsqueeze(1) * inverses[i][0].unsqueeze(0)
        W[:, i] = q
    return W, mask


def test_sparsegpt_one_block_equals_obs_reference():
    W, X = _problem(rows=6, cols=10, tokens=40, seed=5)
    H = X.T @ X
    got, mask, _ = sparsegpt_prune(W, H, 0.5, blocksize=128)
    want, want_mask = _obs_reference(W, H, 0.5)
    assert torch.equal(mask, want_mask)
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)  # the algorithm works in float32


def test_sparsegpt_dead_inputs_and_cholesky_failure(caplog):
    W, X = _problem(rows=4, cols=8, tokens=30, seed=6)
    X[:, 2] = 0  # an input that never fires
    pruned, mask, _ = sparsegpt_prune(W, X.T @ X, 0.25)
    assert bool((pruned[:, 2] == 0).all())
    assert int((pruned == 0).sum()) == exact_count(W.numel(), 0.25)
    bad = -torch.eye(5, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="not positive definite"):
        inverse_hessian_factor(bad, max_retries=2)
    nearly_singular = torch.ones(5, 5, dtype=torch.float64) + 1e-12 * torch.eye(5, dtype=torch.float64)
    U, damp = inverse_hessian_factor(nearly_singular, percdamp=0.0, max_retries=8)
    assert torch.isfinite(U).all() and damp >= 0.0


def test_smallest_mask_is_the_first_k_of_a_stable_sort_with_many_ties():
    from hf_layerif.pruning.masks import smallest_mask

    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        n = int(torch.randint(1, 120, (1,), generator=gen))
        k = int(torch.randint(0, n + 2, (1,), generator=gen))
        values = torch.randint(0, 4, (n,), generator=gen).double()  # mostly ties
        want = torch.zeros(n, dtype=torch.bool)
        for i in sorted(range(n), key=lambda j: (float(values[j]), j))[:k]:  # brute force: (value, index) order
            want[i] = True
        assert torch.equal(smallest_mask(values, k), want), (n, k)
