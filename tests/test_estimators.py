"""Every estimator equals a float64 brute-force implementation of its formula in docs/METHOD.md (d-space, loops)."""

import pytest
import torch

from hf_layerif.influence.arguments import InfluenceArguments
from hf_layerif.influence.estimators import estimate_influence, get_estimator
from hf_layerif.influence.gram import GramAccumulator, GroupLayout
from hf_layerif.models.blocks import find_transformer_blocks

BOUNDS = [[0, 5, 12], [0, 9], [0, 3, 4, 10]]  # three blocks; block 0 has 2 tensors, block 2 has 3


def _problem(n=7, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    G = [torch.randn(n, b[-1], generator=gen, dtype=torch.float64) * (1 + i) for i, b in enumerate(BOUNDS)]
    v = [torch.randn(b[-1], generator=gen, dtype=torch.float64) for b in BOUNDS]
    return [g.to(dtype) for g in G], [x.to(dtype) for x in v]


def _groups(G, v, granularity):
    """(list of (block, G_group, v_group)) in the layout's order."""
    out = []
    for l, b in enumerate(BOUNDS):
        cuts = b if granularity == "tensor" else [0, b[-1]]
        for j in range(len(cuts) - 1):
            out.append((l, G[l][:, cuts[j]:cuts[j + 1]].double(), v[l][cuts[j]:cuts[j + 1]].double()))
    return out


def _damping(Gg, factor=0.1):
    n, d = Gg.shape
    return factor * sum(float(Gg[i] @ Gg[i]) for i in range(n)) / n / d


def brute_datainf(Gg, vg, lam):
    n, _ = Gg.shape
    hinv_v = torch.zeros_like(vg)
    for i in range(n):
        g = Gg[i]
        hinv_v += vg - (g @ vg) / (lam + g @ g) * g
    hinv_v /= n * lam
    return torch.tensor([-(Gg[i] @ hinv_v) for i in range(n)], dtype=torch.float64)


def brute_exact(Gg, vg, lam):
    n, d = Gg.shape
    H = sum(torch.outer(Gg[i], Gg[i]) for i in range(n)) / n + lam * torch.eye(d, dtype=torch.float64)
    w = torch.linalg.solve(H, vg)
    return -(Gg @ w)


def brute_tracin(Gg, vg, lam):
    return -(Gg @ vg)


def brute_lissa(Gg, vg, lam, scale, depth, batch_size=None, seed=None):
    n, d = Gg.shape
    h = vg.clone()
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    for _ in range(depth):
        if batch_size is None:
            idx = list(range(n))
        else:
            idx = torch.randperm(n, generator=gen)[:batch_size].tolist()
        Hh = sum(Gg[i] * (Gg[i] @ h) for i in idx) / len(idx)
        h = vg + h - (Hh + lam * h) / scale
    return -(Gg @ h) / scale


def _ours(G, v, args, n):
    layout = GroupLayout([b if args.granularity == "tensor" else [0, b[-1]] for b in BOUNDS])
    acc = GramAccumulator(layout, v, n, G[0].dtype, 1 << 30)
    for start in range(0, n, 3):
        acc.add([g[start:start + 3] for g in G])
    a, K = acc.finalize()
    return estimate_influence(a, K, layout.dims(), args, layout.group_to_block(), len(BOUNDS))


@pytest.mark.parametrize("granularity", ["block", "tensor"])
@pytest.mark.parametrize("name,brute", [("datainf", brute_datainf), ("exact", brute_exact), ("tracin", brute_tracin)])
def test_estimators_match_bruteforce_float64(name, brute, granularity):
    n = 7
    G, v = _problem(n)
    args = InfluenceArguments(estimator=name, granularity=granularity)
    influence, damping, _ = _ours(G, v, args, n)
    want = torch.zeros(len(BOUNDS), n, dtype=torch.float64)
    lams = []
    for l, Gg, vg in _groups(G, v, granularity):
        lam = _damping(Gg)
        lams.append(lam)
        want[l] += brute(Gg, vg, lam)
    torch.testing.assert_close(influence, want, rtol=1e-6, atol=1e-9 * want.abs().max().item())
    if name != "tracin":
        torch.testing.assert_close(damping, torch.tensor(lams, dtype=torch.float64), rtol=1e-12, atol=0)


@pytest.mark.parametrize("name,brute", [("datainf", brute_datainf), ("exact", brute_exact), ("tracin", brute_tracin)])
def test_estimators_float32_within_1e4(name, brute):
    n = 7
    G, v = _problem(n, dtype=torch.float32)
    influence, _, _ = _ours(G, v, InfluenceArguments(estimator=name), n)
    want = torch.zeros(len(BOUNDS), n, dtype=torch.float64)
    for l, Gg, vg in _groups(G, v, "block"):
        want[l] += brute(Gg, vg, _damping(Gg))
    torch.testing.assert_close(influence, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


@pytest.mark.parametrize("name,brute", [("datainf", brute_datainf), ("exact", brute_exact), ("lissa", None)])
def test_float32_solves_use_k_as_formed_and_stay_close_to_float64(name, brute, monkeypatch):
    n = 7
    G, v = _problem(n, dtype=torch.float32)
    seen = []
    original = torch.Tensor.to

    def spy(self, *args, **kwargs):  # record every float64 copy of an n×n-sized K
        out = original(self, *args, **kwargs)
        if self.dim() == 3 and self.shape[-1] == self.shape[-2] == n and out.dtype == torch.float64 and out is not self:
            seen.append(tuple(self.shape))
        return out

    float64 = _ours(G, v, InfluenceArguments(estimator=name), n)
    monkeypatch.setattr(torch.Tensor, "to", spy)
    float32, _, settings = _ours(G, v, InfluenceArguments(estimator=name, solve_dtype="float32"), n)
    monkeypatch.undo()
    assert seen == [] and settings["solve_dtype"] == "float32" and settings["solve_device"] == "cpu"
    assert float32.dtype == torch.float64  # results are float64 whatever the solve dtype
    torch.testing.assert_close(float32, float64[0], rtol=1e-4, atol=1e-4 * float64[0].abs().max().item())
    if brute is not None:
        want = torch.zeros(len(BOUNDS), n, dtype=torch.float64)
        for l, Gg, vg in _groups(G, v, "block"):
            want[l] += brute(Gg, vg, _damping(Gg))
        torch.testing.assert_close(float32, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())
    with pytest.raises(ValueError, match="solve_dtype must be one of"):
        InfluenceArguments(solve_dtype="float16")


def test_absolute_damping_and_factor():
    n = 6
    G, v = _problem(n, seed=3)
    influence, damping, _ = _ours(G, v, InfluenceArguments(estimator="datainf", damping=0.5), n)
    assert torch.all(damping == 0.5)
    want = torch.zeros(len(BOUNDS), n, dtype=torch.float64)
    for l, Gg, vg in _groups(G, v, "block"):
        want[l] += brute_datainf(Gg, vg, 0.5)
    torch.testing.assert_close(influence, want, rtol=1e-6, atol=0)


@pytest.mark.parametrize("batch_size", [None, 3])
def test_lissa_matches_literal_recursion(batch_size):
    n, depth, scale = 7, 60, 400.0
    G, v = _problem(n, seed=1)
    args = InfluenceArguments(estimator="lissa", lissa_depth=depth, lissa_scale=scale, lissa_batch_size=batch_size, seed=5)
    influence, _, _ = _ours(G, v, args, n)
    want = torch.zeros(len(BOUNDS), n, dtype=torch.float64)
    for g_index, (l, Gg, vg) in enumerate(_groups(G, v, "block")):
        want[l] += brute_lissa(Gg, vg, _damping(Gg), scale, depth, batch_size, seed=5 + g_index)
    torch.testing.assert_close(influence, want, rtol=1e-6, atol=1e-9 * want.abs().max().item())


@pytest.mark.parametrize("name,options", [("datainf", {}), ("exact", {}), ("tracin", {}),
                                          ("lissa", {"lissa_depth": 40, "lissa_scale": 400.0}),
                                          ("lissa", {"lissa_depth": 40, "lissa_scale": 400.0, "lissa_batch_size": 3})])
def test_several_validation_gradients_in_one_solve_match_bruteforce_per_gradient(name, options):
    """a [groups, n, R] (the validation parts) gives, column by column, the brute-force influence against each
    validation gradient with the damping of the shared K."""
    n, R = 7, 3
    G, _ = _problem(n, seed=3)
    gen = torch.Generator().manual_seed(4)
    vs = [[torch.randn(b[-1], generator=gen, dtype=torch.float64) for b in BOUNDS] for _ in range(R)]
    layout = GroupLayout([[0, b[-1]] for b in BOUNDS])
    columns, K = [], None
    for v in vs:
        acc = GramAccumulator(layout, v, n, torch.float64, 1 << 30)
        acc.add(G)
        a, K = acc.finalize()
        columns.append(a)
    args = InfluenceArguments(estimator=name, seed=5, **options)
    influence, _, _ = estimate_influence(torch.stack(columns, dim=2), K, layout.dims(), args, layout.group_to_block(),
                                         len(BOUNDS))
    assert influence.shape == (R, len(BOUNDS), n)
    brutes = {"datainf": brute_datainf, "exact": brute_exact, "tracin": brute_tracin}
    for r, v in enumerate(vs):
        want = torch.zeros(len(BOUNDS), n, dtype=torch.float64)
        for g_index, (l, Gg, vg) in enumerate(_groups(G, v, "block")):
            if name == "lissa":
                want[l] += brute_lissa(Gg, vg, _damping(Gg), options["lissa_scale"], options["lissa_depth"],
                                       options.get("lissa_batch_size"), seed=5 + g_index)
            else:
                want[l] += brutes[name](Gg, vg, _damping(Gg))
        torch.testing.assert_close(influence[r], want, rtol=1e-6, atol=1e-9 * want.abs().max().item())


def test_lissa_converges_to_exact_with_the_right_sign():
    n = 6
    G, v = _problem(n, seed=2)
    lissa, _, _ = _ours(G, v, InfluenceArguments(estimator="lissa", damping=5.0, lissa_depth=20000), n)
    exact, _, _ = _ours(G, v, InfluenceArguments(estimator="exact", damping=5.0), n)
    torch.testing.assert_close(lissa, exact, rtol=1e-6, atol=1e-9)


def test_gram_spills_to_disk_and_matches_in_memory(tmp_path):
    n = 11
    G, v = _problem(n, seed=4)
    layout = GroupLayout(BOUNDS)
    direct = GramAccumulator(layout, v, n, torch.float64, 1 << 30)
    spilled = GramAccumulator(layout, v, n, torch.float64, 200, spill_dir=tmp_path)  # ~1 chunk per window
    for start in range(0, n, 2):
        direct.add([g[start:start + 2] for g in G])
        spilled.add([g[start:start + 2] for g in G])
    assert spilled.gradients.spilled, "the small budget must spill"
    a1, K1 = direct.finalize()
    a2, K2 = spilled.finalize()
    torch.testing.assert_close(a1, a2, rtol=0, atol=0)
    torch.testing.assert_close(K1, K2, rtol=1e-14, atol=1e-12)
    full = torch.cat(G, dim=1)
    block_K = torch.zeros(n, n, dtype=torch.float64)
    for g in range(K1.shape[0]):
        block_K += K1[g]
    torch.testing.assert_close(block_K, full @ full.T, rtol=1e-12, atol=1e-10)


def test_gram_without_spill_dir_refuses_to_exceed_budget():
    G, v = _problem(6)
    acc = GramAccumulator(GroupLayout(BOUNDS), v, 6, torch.float64, 100)
    with pytest.raises(MemoryError, match="gradient_memory_gb"):
        for start in range(0, 6, 2):
            acc.add([g[start:start + 2] for g in G])


@pytest.mark.parametrize("budget", [1 << 30, 200])
def test_sharded_gram_blocks_sum_to_the_full_matrix(tmp_path, budget):
    n = 9
    G, v = _problem(n, seed=8)
    layout = GroupLayout(BOUNDS)
    full = GramAccumulator(layout, v, n, torch.float64, 1 << 30)
    shards = [GramAccumulator(layout, v, n, torch.float64, budget, spill_dir=tmp_path / f"r{r}", shard=(r, 3))
              for r in range(3)]
    for start in range(0, n, 2):
        for acc in (full, *shards):
            acc.add([g[start:start + 2] for g in G])
    a, K = full.finalize()
    parts = [acc.finalize() for acc in shards]
    assert all(torch.equal(p[0], a) for p in parts)
    assert sum(int((p[1] != 0).any()) for p in parts) >= 2  # the work really is split
    torch.testing.assert_close(sum(p[1] for p in parts), K, rtol=1e-14, atol=1e-12)


def _streamed(G, v, args, n, budget=1 << 30, spill_dir=None, chunk=3):
    from hf_layerif.influence.streaming import StreamingStatistics

    layout = GroupLayout([b if args.granularity == "tensor" else [0, b[-1]] for b in BOUNDS])
    estimator = get_estimator(args)
    stats = StreamingStatistics(layout, v, n, G[0].dtype, budget, spill_dir, keep_gradients=estimator.stores_gradients)
    for start in range(0, n, chunk):
        stats.add([g[start:start + chunk] for g in G])
    damping = stats.damping(args)
    per_group = estimator.from_statistics(stats, damping)
    influence = torch.zeros(len(BOUNDS), n, dtype=torch.float64)
    influence.index_add_(0, layout.group_to_block(), per_group)
    return influence, damping, stats


@pytest.mark.parametrize("granularity", ["block", "tensor"])
@pytest.mark.parametrize("name,brute", [("datainf", brute_datainf), ("tracin", brute_tracin)])
def test_streaming_route_matches_bruteforce_and_the_gram_route(name, brute, granularity, tmp_path):
    n = 11
    G, v = _problem(n, seed=3)
    args = InfluenceArguments(estimator=name, granularity=granularity)
    expected = torch.zeros(len(BOUNDS), n, dtype=torch.float64)
    for l, Gg, vg in _groups(G, v, granularity):
        expected[l] += brute(Gg, vg, _damping(Gg))
    streamed, _, _ = _streamed(G, v, args, n)
    torch.testing.assert_close(streamed, expected, rtol=1e-10, atol=1e-10)
    gram, _, _ = _ours(G, v, args, n)
    torch.testing.assert_close(streamed, gram, rtol=1e-10, atol=1e-10)
    # a budget of about one chunk spills windows to disk; the two later reads give the same result
    spilled, _, stats = _streamed(G, v, args, n, budget=200, spill_dir=tmp_path)
    torch.testing.assert_close(spilled, expected, rtol=1e-10, atol=1e-10)
    if name == "datainf":
        assert stats.gradients.spilled, "the tiny budget must spill"
    else:
        assert not stats.gradients.spilled and stats.gradients.empty  # TracIn stores no gradient


def test_streaming_float32_within_1e4():
    n = 9
    G, v = _problem(n, seed=4, dtype=torch.float32)
    args = InfluenceArguments(estimator="datainf")
    expected = torch.zeros(len(BOUNDS), n, dtype=torch.float64)
    for l, Gg, vg in _groups(G, v, "block"):
        expected[l] += brute_datainf(Gg, vg, _damping(Gg))
    streamed, _, _ = _streamed(G, v, args, n)
    scale = float(expected.abs().max())
    torch.testing.assert_close(streamed, expected, rtol=0, atol=1e-4 * scale)


def test_memory_plan_is_checked_before_any_work(monkeypatch, tmp_path):
    from conftest import random_samples, tiny_llama, with_lora

    from hf_layerif import compute_layer_influence
    from hf_layerif.influence import engine

    model = with_lora(tiny_llama(), randomize_b=True)
    monkeypatch.setattr(engine, "_physical_memory_bytes", lambda: 10_000)  # a machine of 10 kB
    with pytest.raises(MemoryError, match="estimator='datainf' or 'tracin'"):
        compute_layer_influence(model, random_samples(40), random_samples(2), estimator="exact", progress=False)
    compute_layer_influence(model, random_samples(40), random_samples(2), progress=False, bootstrap_samples=0)  # no K

    class Disk:
        free = 10

    monkeypatch.setattr(engine.shutil, "disk_usage", lambda path: Disk())
    with pytest.raises(MemoryError, match="would spill to .* GB free. Pass cache_dir="):
        compute_layer_influence(model, random_samples(40), random_samples(2), gradient_memory_gb=2e-4, batch_size=1,
                                cache_dir=tmp_path, progress=False)
    plan = engine.InfluenceEngine(model, InfluenceArguments(estimator="tracin")).memory_plan(1000)
    assert plan["stored_gradients"] == 0 and "gram" not in plan
    # K in float32 (4 B) + its float64 copy (8 B) + the float64 workspace (8 B); float32 solves: 4 + 4
    groups = len(find_transformer_blocks(model))
    exact64 = engine.InfluenceEngine(model, InfluenceArguments(estimator="exact")).memory_plan(1000)["gram"]
    exact32 = engine.InfluenceEngine(model, InfluenceArguments(estimator="exact", solve_dtype="float32")).memory_plan(1000)
    assert exact64 == groups * 1000**2 * 20 and exact32["gram"] == groups * 1000**2 * 8


@pytest.mark.parametrize("estimator", ["exact", "lissa"])
def test_gram_route_through_the_engine_spilled_or_not(tmp_path, estimator):
    from conftest import random_samples, tiny_llama, with_lora

    from hf_layerif import compute_layer_influence

    model = with_lora(tiny_llama(torch.float64), randomize_b=True)
    train, val = random_samples(10, seed=31), random_samples(3, seed=32)
    options = dict(estimator=estimator, progress=False, bootstrap_samples=0, batch_size=2, lissa_depth=50)
    whole = compute_layer_influence(model, train, val, **options)
    flushes = []
    original_flush = GramAccumulator.flush
    GramAccumulator.flush = lambda self: (flushes.append(1), original_flush(self))[1]
    try:
        spilled = compute_layer_influence(model, train, val, gradient_memory_gb=1e-4, cache_dir=tmp_path, **options)
    finally:
        GramAccumulator.flush = original_flush
    assert flushes, "the small budget must close and spill windows"
    torch.testing.assert_close(spilled.influence, whole.influence, rtol=1e-6, atol=1e-9)
    assert whole.estimator["name"] == estimator and torch.isfinite(whole.influence).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_datainf_ranks_blocks_as_exact_inside_its_regime_and_warns_outside(seed, caplog):
    """ρ = mean‖g‖²/λ: with ρ ≤ 0.5 (DataInf's regime) its block ranking equals exact's; under the default damping
    ρ = d / damping_factor, recorded per group, and the run warns."""
    from conftest import random_samples, tiny_llama, with_lora

    from hf_layerif import compute_layer_influence
    from hf_layerif.influence import runner
    from hf_layerif.influence.stability import spearman
    from hf_layerif.utils.logging import get_logger

    model = with_lora(tiny_llama(torch.float64, layers=5, hidden=32, intermediate=48, seed=seed), seed=seed,
                      randomize_b=True)
    train, val = random_samples(20, seed=10 + seed), random_samples(5, seed=20 + seed)
    common = dict(progress=False, bootstrap_samples=0, fit_steps=0, repeats=1)
    runner._WARNED_REGIME.clear()
    logger = get_logger("hf_layerif")
    logger.addHandler(caplog.handler)
    try:
        default = compute_layer_influence(model, train, val, estimator="datainf", **common)
    finally:
        logger.removeHandler(caplog.handler)
    dims = default.provenance["blocks"]["tracked_dims"]
    assert default.estimator["curvature_ratio"] == pytest.approx([d / 0.1 for d in dims], rel=1e-9)
    assert "datainf approximates the exact damped influence only while" in caplog.text
    factor = 2 * max(dims)  # every block at ρ = d / factor ≤ 0.5, inside the regime
    inside = compute_layer_influence(model, train, val, estimator="datainf", damping_factor=factor, **common)
    exact = compute_layer_influence(model, train, val, estimator="exact", damping_factor=factor, **common)
    assert max(inside.estimator["curvature_ratio"]) <= 0.5
    assert spearman(inside.block_scores().tolist(), exact.block_scores().tolist()) == pytest.approx(1.0)
    assert torch.corrcoef(torch.stack([inside.influence.flatten(), exact.influence.flatten()]))[0, 1] > 0.99


def test_a_registered_streaming_estimator_gets_its_own_result_back():
    """A new estimator is one class plus a registration: the engine routes it by what it declares (streaming, no
    stored gradients) and returns its own formula's result, never another estimator's."""
    from conftest import random_samples, tiny_llama, with_lora

    from hf_layerif import compute_layer_influence
    from hf_layerif.influence.estimators import ESTIMATORS, InfluenceEstimator, register_estimator

    @register_estimator
    class ScaledTracIn(InfluenceEstimator):
        name = "scaled_tracin_for_test"
        uses_damping = False
        streaming = True
        stores_gradients = False

        def __call__(self, a, K, damping):
            return -3.0 * a.to(torch.float64)

        def from_statistics(self, statistics, damping):
            return -3.0 * statistics.a.to("cpu", torch.float64)

    try:
        model = with_lora(tiny_llama(torch.float64), randomize_b=True)
        train, val = random_samples(6), random_samples(2, seed=1)
        common = dict(progress=False, bootstrap_samples=0, fit_steps=0, repeats=1)
        scaled = compute_layer_influence(model, train, val, estimator="scaled_tracin_for_test", **common)
        tracin = compute_layer_influence(model, train, val, estimator="tracin", **common)
        torch.testing.assert_close(scaled.influence, 3.0 * tracin.influence, rtol=1e-6, atol=0)
        assert scaled.estimator["name"] == "scaled_tracin_for_test"
    finally:
        ESTIMATORS.pop("scaled_tracin_for_test", None)


def test_gradient_store_returns_every_row_once_across_memory_and_disk(tmp_path):
    """The one store both routes use: rows come back exactly, each once, whether spilled or still in memory."""
    from hf_layerif.influence.gradient_store import GradientStore

    rows = [torch.randn(10, 6, dtype=torch.float64), torch.randn(10, 4, dtype=torch.float64)]
    store = GradientStore(2, 200, tmp_path, torch.float64)
    for lo in range(0, 10, 3):
        hi = min(lo + 3, 10)
        store.append([r[lo:hi] for r in rows], torch.arange(lo, hi))
        if store.full():
            store.spill()
    assert store.spilled and not store.empty, "a 200-byte budget spills some windows and keeps the last in memory"
    got = [torch.zeros_like(r) for r in rows]
    seen = torch.zeros(10, dtype=torch.long)
    for indices, blocks in store.pieces("cpu"):
        seen[indices] += 1
        for g, b in zip(got, blocks):
            g[indices] = b
    assert seen.tolist() == [1] * 10
    for g, r in zip(got, rows):
        torch.testing.assert_close(g, r, rtol=0, atol=0)
    no_disk = GradientStore(2, 10, None, torch.float64, over_budget_hint="Raise gradient_memory_gb.")
    no_disk.append([r[:3] for r in rows], torch.arange(3))
    with pytest.raises(MemoryError, match="Raise gradient_memory_gb"):
        no_disk.full()
