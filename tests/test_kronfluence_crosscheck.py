"""Optional cross-check: kronfluence's `identity` per-module scores, summed per block, equal −TracIn.

kronfluence reports positive = helpful (no minus sign) and uses a summed training loss; with the same
per-sample loss (sum of per-sample means) its identity-strategy pairwise scores averaged over the queries are
g_iᵀ v, i.e. the negative of our ``tracin`` influence. Skipped unless kronfluence is installed (it pins
torchvision: install it in a separate environment, see benchmarks/RESULTS.md).
"""

import sys
import tempfile
from pathlib import Path

import pytest
import torch
from conftest import random_samples, tiny_llama, with_lora

from hf_layerif import compute_layer_influence
from hf_layerif.data import InfluenceCollator

kronfluence = pytest.importorskip("kronfluence", reason="kronfluence is not installed (optional cross-check)")

pytestmark = pytest.mark.optional


def test_identity_per_module_scores_equal_minus_tracin():
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.utils.dataset import DataLoaderKwargs

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from kronfluence_task import make_kronfluence_task

    model = with_lora(tiny_llama(torch.float32, layers=2), randomize_b=True)
    train, val = random_samples(6, seed=1, min_len=6, max_len=6), random_samples(3, seed=2, min_len=6, max_len=6)
    ours = compute_layer_influence(model, train, val, estimator="tracin", progress=False, bootstrap_samples=0)
    task = make_kronfluence_task(model)
    model.eval()
    prepared = prepare_model(model, task)
    with tempfile.TemporaryDirectory() as out:
        analyzer = Analyzer(analysis_name="crosscheck", model=prepared, task=task, output_dir=out, disable_tqdm=True, cpu=True)
        analyzer.set_dataloader_kwargs(DataLoaderKwargs(collate_fn=InfluenceCollator(0)))
        analyzer.fit_all_factors(factors_name="identity", dataset=train, per_device_batch_size=2,
                                 factor_args=FactorArguments(strategy="identity"))
        analyzer.compute_pairwise_scores(scores_name="scores", factors_name="identity", query_dataset=val,
                                         train_dataset=train, per_device_query_batch_size=3,
                                         per_device_train_batch_size=2,
                                         score_args=ScoreArguments(compute_per_module_scores=True))
        per_module = analyzer.load_pairwise_scores("scores")
    per_block = torch.zeros(2, len(train))
    for name, values in per_module.items():
        per_block[int(name.split("layers.")[1].split(".")[0])] += values.sum(0) / len(val)
    torch.testing.assert_close(per_block, -ours.influence, rtol=1e-4, atol=1e-6)
