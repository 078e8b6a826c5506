"""How :class:`~hf_layerif.influence.scores.LayerInfluenceScores` are shown: a plain-text table and a PNG plot."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..utils.io import display_name, save_figure
from .stability import floor_to


def scores_table(result, aggregation: str | None = None) -> str:
    """A plain-text table of a ``LayerInfluenceScores`` ``result``: block, score, bootstrap mean ± std, rank, damping."""
    aggregation = aggregation or result.arguments.get("aggregation", "positive")
    scores = result.block_scores(aggregation).tolist()
    ranks = {b: r + 1 for r, b in enumerate(result.ranking(aggregation))}
    boot = result.stability().get("bootstrap") if aggregation == result.arguments.get("aggregation", "positive") else None
    damping = result.block_damping()
    width = max(len("block"), *(len(n) for n in result.block_names))
    lines = [f"{'block':<{width}}  {'score(' + aggregation + ')':>20}  {'bootstrap mean ± std':>26}  {'rank':>4}  {'damping':>10}"]
    for i, name in enumerate(result.block_names):
        boot_txt = f"{boot['mean'][i]:.4g} ± {boot['std'][i]:.2g}" if boot else "-"
        lam = damping[i]
        lam_txt = f"{lam:.3g}" if isinstance(lam, float) else f"{len(lam)} tensors"
        lines.append(f"{name:<{width}}  {scores[i]:>20.6g}  {boot_txt:>26}  {ranks[i]:>4}  {lam_txt:>10}")
    if boot:
        lines.append(f"ranking stability: Spearman to full ranking {floor_to(boot['spearman_to_full_mean']):.3f} (p05 "
                     f"{floor_to(boot['spearman_to_full_p05']):.3f}) over {boot['num_samples']} bootstrap resamples"
                     )
    rep = result.stability().get("repeats")
    if rep:
        kind = (result.provenance.get("protocol") or {}).get("adapter", "fresh")
        lines.append(f"agreement across {rep['num_samples']} {'fitted ' if kind == 'fitted' else ''}adapter draws: "
                     f"pairwise Spearman mean {floor_to(rep['pairwise_spearman_mean']):.3f}, min "
                     f"{floor_to(rep['pairwise_spearman_min']):.3f}")
    validation = result.stability().get("validation")
    if validation:
        splits = validation.get("splits", 1)
        spread = (f", mean of {splits} splits of {validation['parts']} parts, range "
                  f"{floor_to(validation['split_half_spearman_range'][0]):.3f} to "
                  f"{floor_to(validation['split_half_spearman_range'][1]):.3f}" if splits > 1 else "")
        lines.append(f"agreement of validation halves: Spearman {floor_to(validation['split_half_spearman']):.3f}{spread} "
                     f"(a new validation set of the full size: {floor_to(validation['full_size_spearman']):.3f})")
    verdict = result.stability().get("reproducibility")
    if verdict:
        what = ("new draws, resampled training and validation samples" if validation
                else "new draws, resampled training set, same validation")
        lines.append(f"predicted Spearman with an independent run ({what}): "
                     f"{floor_to(verdict['predicted_spearman']):.3f}" + _verdict_mark(verdict))
    return "\n".join(lines)


def _verdict_mark(verdict: dict) -> str:
    """" ± SE" after the prediction, then "" when stable, "  [UNSTABLE]" when it is under the threshold by more than
    one standard error, "  [UNCERTAIN: ...]" when the standard error straddles it."""
    kind = verdict.get("verdict", "stable" if verdict["stable"] else "unstable")
    se = verdict.get("predicted_spearman_se")
    spread = f" ± {se:.3f}" if se else ""
    marks = {"stable": "", "unstable": "  [UNSTABLE]",
             "uncertain": "  [UNCERTAIN: within one standard error of 0.8]"}
    return spread + marks[kind]


def plot_scores(result, path: str | os.PathLike, aggregation: str | None = None, title: str | None = None) -> Path:
    """Save a PNG of a ``LayerInfluenceScores`` ``result``: per-block score bars (bootstrap p05–p95 as error bars) and a block × sample heat map."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    aggregation = aggregation or result.arguments.get("aggregation", "positive")
    scores = result.block_scores(aggregation).numpy()
    boot = result.stability().get("bootstrap")
    fig, (ax_bar, ax_map) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [1, 1.4]})
    x = np.arange(result.num_blocks)
    yerr = None
    if boot and aggregation == result.arguments.get("aggregation", "positive"):
        yerr = np.stack([np.maximum(scores - np.array(boot["p05"]), 0), np.maximum(np.array(boot["p95"]) - scores, 0)])
    ax_bar.bar(x, scores, yerr=yerr, color="#4C72B0", capsize=2,
               label="score" + (" (error bars: bootstrap 5th-95th percentile)" if yerr is not None else ""))
    rep = result.stability().get("repeats") if aggregation == result.arguments.get("aggregation", "positive") else None
    if rep and result.repeat_block_scores is not None:
        draws = result.repeat_block_scores.numpy()
        for r, row in enumerate(draws):
            ax_bar.scatter(x, row, s=10, color="#DD8452", zorder=3,
                           label=(f"each adapter draw (pairwise Spearman mean {floor_to(rep['pairwise_spearman_mean']):.2f}, "
                                  f"min {floor_to(rep['pairwise_spearman_min']):.2f})") if r == 0 else None)
    # below the axes: a legend inside would cover bars of some block
    ax_bar.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), frameon=False)
    ax_bar.set_xlabel("block")
    ax_bar.set_ylabel(f"block score q ({aggregation})")
    ax_bar.set_title("LayerIF block scores (higher = more task-sensitive)")
    step = max(1, result.num_blocks // 16)
    ax_bar.set_xticks(x[::step])
    values = result.influence.numpy()
    bound = float(np.percentile(np.abs(values), 99)) or 1.0
    image = ax_map.imshow(values, aspect="auto", cmap="RdBu_r", vmin=-bound, vmax=bound, interpolation="nearest")
    ax_map.set_yticks(x[::step])
    ax_map.set_xlabel("training sample")
    ax_map.set_ylabel("block")
    ax_map.set_title("influence I_l(z) (blue < 0: beneficial)")
    bar = fig.colorbar(image, ax=ax_map, fraction=0.046)
    bar.set_label("influence I_l(z) (Koh & Liang sign)")
    model_id = (result.provenance.get("model") or {}).get("model_id") or (result.provenance.get("model") or {}).get("class")
    model_id = display_name(model_id) if model_id else model_id
    fig.suptitle(title or f"LayerIF scores of {model_id or 'the model'} ({result.num_train} training samples)")
    fig.tight_layout()
    return save_figure(fig, path)
