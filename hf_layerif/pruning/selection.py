"""``allocation="auto"``: choose the per-block sparsity by held-out evidence (METHOD §5.1).

Each candidate allocation (:mod:`~hf_layerif.pruning.candidates`) is pruned with the requested method and scored by
the pruned model's mean next-token cross-entropy on a *selection split*: windows drawn with their own seed from the
calibration source's documents that calibration did not read (so disjoint from the calibration sequences, and from
any evaluation data that is not the calibration source).

Two stages, all candidates of a stage pruned in one pass (:func:`~hf_layerif.pruning.inflight.prune_in_flight`):

1. **Screening**: every candidate is pruned with the first ``ceil(screen_fraction × nsamples)`` calibration
   sequences and scored on the first half of the selection split; model-derived inputs read from calibration activations (OWL's outlier ratios) come from
   the same subset. Rule for dropping early: only the ``finalists`` best non-uniform candidates by this screening
   objective go on; the others are dropped.
2. **Final**: uniform and the finalists are pruned with all calibration sequences (their outlier ratios too) and
   scored. Rule for choosing: a finalist other than uniform is eligible only when it beats uniform by at least
   ``min_margin_se`` paired standard errors (mean and standard error of its per-sequence loss differences to
   uniform on the selection split; the same statistics on the sequences screening did not score are recorded
   beside them, free of screening's pick); the chosen allocation is the eligible one with the lowest final objective,
   uniform when none is (ties to uniform too), so J(chosen) ≤ J(uniform) holds always. The model keeps the chosen
   candidate's pruned weights (the same weights a plain prune with that allocation gives).

With ``screen_fraction = 1`` screening *is* the final evaluation of every candidate (exhaustive), and the chosen one
is pruned once more to keep its weights. With ``selection_dir``, each finished stage is saved (JSON) and a re-run
with the same model, data and settings does not recompute it.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..models.blocks import TransformerBlocks
from ..utils.io import read_json, write_json
from ..utils.logging import get_logger
from .blockwise import write_block_weights
from .candidates import UNIFORM, AllocationCandidate, resolve_candidates
from .config import PruningConfig
from .inflight import InFlightResult, prune_in_flight
from .methods import pruning_method
from .model_inputs import CALIBRATION_SOURCES, compute_model_inputs
from .report import ModuleResult

logger = get_logger(__name__)

SELECTION_STATE_FILE = "selection_state.json"
SELECTION_PLOT_FILE = "selection.png"
OBJECTIVE = "mean next-token cross-entropy (nats/token) of the pruned model on the selection split"


@dataclass
class SelectionOutcome:
    """What :func:`select_and_prune` did: the chosen candidate's allocation and module results, and the record saved
    in the pruning report (``PruningReport.selection``)."""

    allocation: Any
    modules: list[ModuleResult]
    record: dict[str, Any]


def screen_size(config: PruningConfig, nsamples: int) -> int:
    """Calibration sequences used for screening: ceil(screen_fraction × nsamples), at least 1."""
    return max(1, min(nsamples, math.ceil(config.screen_fraction * nsamples)))


def _fingerprint(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def _state_key(model, config: PruningConfig, ratio_sets: dict[str, list[float]], calibration_ids, selection_ids) -> dict:
    from ..utils.fingerprint import fingerprint_parameters

    # the margin rule only reads the saved stages: a re-run with another min_margin_se re-chooses without pruning
    settings = {k: v for k, v in config.to_dict().items()
                if k not in ("allocation", "scores", "candidates", "min_margin_se")}
    return {"settings": settings, "candidates": ratio_sets,
            "calibration": None if calibration_ids is None else _fingerprint(calibration_ids),
            "selection": _fingerprint(selection_ids), "model": fingerprint_parameters(list(model.named_parameters()))}


def candidate_allocations(pruner, config: PruningConfig, candidates: list[AllocationCandidate], scores,
                          calibration_ids: torch.Tensor | None, progress: bool) -> dict[str, Any]:
    """An :class:`~hf_layerif.allocation.Allocation` per candidate (by name). Model-derived inputs (OWL's outlier
    ratios, PL_Alpha_Hill) are computed once, whatever the number of candidates that read them."""
    from ..allocation import sparsity_allocation

    inputs = compute_model_inputs(pruner.model, config, [c.source for c in candidates], calibration_ids, progress)
    allocations = {}
    for c in candidates:
        options = c.options
        allocations[c.name] = sparsity_allocation(
            scores if c.source == "scores" else None, config.sparsity, model=pruner.model, method=c.method,
            epsilon=options.get("epsilon", config.epsilon), smooth=options.get("smooth"),
            reverse=bool(options.get("reverse", False)), owl_lambda=options.get("owl_lambda", config.owl_lambda),
            owl_m=config.owl_m, **({c.source: inputs[c.source]} if c.source in inputs else {}))
    return allocations


def paired_margins(sequence_losses: dict[str, list[float]], names: list[str]
                   ) -> dict[str, tuple[float | None, float | None]]:
    """Each candidate's objective minus uniform's (nats/token; negative: better than uniform) with its paired
    standard error, from the per-sequence losses on the same selection sequences: mean and std(ddof=1) / √n of the
    differences d_i = loss_i − uniform_i. Candidates without per-sequence losses are left out; the SE is None for one
    sequence."""
    uniform = sequence_losses.get(UNIFORM)
    out: dict[str, tuple[float | None, float | None]] = {}
    if not uniform:
        return out
    for name in names:
        losses = sequence_losses.get(name)
        if not losses or len(losses) != len(uniform):
            continue
        diffs = [a - b for a, b in zip(losses, uniform)]
        mean = sum(diffs) / len(diffs)
        se = (math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1) / len(diffs))
              if len(diffs) > 1 else None)
        out[name] = (mean, se)
    return out


def warn_if_close_call(chosen: str, margins: dict[str, tuple[float | None, float | None]], sequences: int) -> bool:
    """Warn (and return True) when the chosen allocation, not uniform, beats uniform by less than two paired standard
    errors of the selection objective."""
    delta, se = margins.get(chosen, (None, None))
    if chosen == UNIFORM or delta is None or se is None or -delta >= 2 * se:
        return False
    logger.warning("The chosen allocation %s beats uniform by %.4f ± %.4f nats/token (paired standard error over %d "
                   "selection sequences), under two standard errors: on another selection draw uniform may win. A "
                   "larger selection split (selection_nsamples=) separates them better (benchmarks/RESULTS.md).",
                   chosen, -delta, se, sequences)
    return True


def clears_margin(name: str, margins: dict[str, tuple[float | None, float | None]], min_margin_se: float) -> bool:
    """Whether candidate ``name`` beats uniform by at least ``min_margin_se`` paired standard errors: its mean
    per-sequence difference Δ (nats/token) is negative and −Δ ≥ min_margin_se · SE. With ``min_margin_se`` 0 any
    candidate passes (the objective alone decides); without a recorded margin or standard error none does."""
    if min_margin_se == 0:
        return True
    delta, se = margins.get(name, (None, None))
    return delta is not None and se is not None and delta < 0 and -delta >= min_margin_se * se


def _choose(losses: dict[str, float], margins: dict[str, tuple[float | None, float | None]] | None = None,
            min_margin_se: float = 0.0) -> str:
    """The lowest loss among uniform and the candidates that clear the margin (:func:`clears_margin`); uniform
    wins ties, other ties go to the earlier candidate."""
    best = UNIFORM
    for name, loss in losses.items():
        if loss < losses[best] and clears_margin(name, margins or {}, min_margin_se):
            best = name
    return best


def warn_if_kept_uniform(chosen: str, lowest: str, margins: dict[str, tuple[float | None, float | None]],
                         min_margin_se: float, sequences: int) -> bool:
    """Warn (and return True) when the candidate with the lowest objective was not chosen because it did not clear
    the margin over uniform."""
    if chosen == lowest:
        return False
    delta, se = margins.get(lowest, (None, None))
    if delta is None or se is None:
        evidence = "without a paired standard error"
    else:
        evidence = f"by {-delta:.4f} ± {se:.4f} nats/token"
    logger.warning("%s had the lowest selection objective but beat uniform %s (paired over %d selection sequences), "
                   "under min_margin_se=%g standard errors: %s is kept. A larger selection split (selection_nsamples=) "
                   "can separate them; min_margin_se=0 takes the lowest objective outright.", lowest, evidence,
                   sequences, min_margin_se, chosen)
    return True


def select_and_prune(pruner, config: PruningConfig, calibration_ids: torch.Tensor | None, selection_ids: torch.Tensor,
                     scores=None, progress: bool = True, selection_dir: str | Path | None = None,
                     split: dict[str, Any] | None = None) -> SelectionOutcome:
    """Choose among the candidates of ``config`` by the selection objective and leave ``pruner.model`` pruned with
    the chosen one (module docstring). ``calibration_ids`` [nsamples, seqlen] (None for a method without calibration
    when no candidate needs it); ``selection_ids`` [n, seqlen]; ``split`` describes the selection split."""
    started = time.time()
    blocks: TransformerBlocks = pruner.blocks
    model = pruner.model
    method = pruning_method(config.method)
    candidates = resolve_candidates(config.candidates, scores is not None)
    nsamples = 0 if calibration_ids is None else int(calibration_ids.shape[0])
    n_screen = screen_size(config, nsamples) if nsamples else 0
    exhaustive = not method.needs_calibration or n_screen >= nsamples
    screen_ids = calibration_ids if exhaustive or calibration_ids is None else calibration_ids[:n_screen]
    # screening reads only its subset of the calibration, model-derived inputs (OWL's outlier ratios) included
    allocations = candidate_allocations(pruner, config, candidates, scores, screen_ids, progress)
    ratio_sets = {name: [float(v) for v in a.values] for name, a in allocations.items()}

    state_file = Path(selection_dir) / SELECTION_STATE_FILE if selection_dir is not None else None
    key = _state_key(model, config, ratio_sets, calibration_ids, selection_ids)
    state: dict[str, Any] = {"key": key}
    if state_file is not None and state_file.exists():
        saved = read_json(state_file)
        if saved.get("key") == key:
            state = saved
            logger.warning("Resuming allocation selection from %s (stages done: %s).", state_file,
                           ", ".join(s for s in ("screen", "final") if s in saved) or "none")
        else:
            logger.warning("%s belongs to another selection run (model, data or settings differ); starting over.",
                           state_file)

    def save_state() -> None:
        if state_file is not None:
            write_json(state_file, state)

    def run(names: list[str], ids, keep: bool, desc: str, scored_on: torch.Tensor = selection_ids
            ) -> dict[str, InFlightResult]:
        results = prune_in_flight(model, blocks, method, config, [ratio_sets[n] for n in names], ids, scored_on,
                                  keep_weights=keep, progress=progress, desc=desc)
        return dict(zip(names, results))

    # screening scores on the first half of the selection split (all of it when screening is the final evaluation)
    screen_selection = selection_ids if exhaustive else selection_ids[:max(1, math.ceil(selection_ids.shape[0] / 2))]

    names = list(ratio_sets)
    if "screen" not in state:
        what = "all" if exhaustive else f"{n_screen} of {nsamples}"
        screened = run(names, screen_ids, False, f"screening {len(names)} allocations ({what} calibration sequences)",
                       screen_selection)
        state["screen"] = {n: r.loss for n, r in screened.items()}
        if exhaustive:  # screening is the final evaluation: its per-sequence losses give the margins
            state["screen_sequences"] = {n: r.sequence_losses for n, r in screened.items()}
        save_state()
    screen_losses: dict[str, float] = state["screen"]

    if exhaustive:
        finalists = names
        if "final" not in state:
            state["final"] = dict(screen_losses)
            save_state()
    else:
        ranked = sorted((n for n in names if n != UNIFORM), key=lambda n: screen_losses[n])
        finalists = [UNIFORM] + ranked[: config.finalists]
        # finalists whose ratios come from calibration statistics get them from all calibration sequences
        recalibrate = [c for c in candidates if c.name in finalists and c.source in CALIBRATION_SOURCES]
        if recalibrate:
            allocations.update(candidate_allocations(pruner, config, recalibrate, scores, calibration_ids, progress))
            ratio_sets.update({c.name: [float(v) for v in allocations[c.name].values] for c in recalibrate})
    kept: dict[str, InFlightResult] = {}
    if "final" not in state:
        kept = run(finalists, calibration_ids, True, f"final evaluation of {len(finalists)} allocations")
        state["final"] = {n: r.loss for n, r in kept.items()}
        state["final_sequences"] = {n: r.sequence_losses for n, r in kept.items()}
        save_state()
    final_losses: dict[str, float] = state["final"]
    if exhaustive and "final_sequences" not in state and "screen_sequences" in state:
        state["final_sequences"] = state["screen_sequences"]
    margins = paired_margins(state.get("final_sequences") or {}, finalists)
    # the same margins on the selection sequences screening did not score (none when screening was the final stage)
    n_seen = int(screen_selection.shape[0])
    held_out = {} if exhaustive else paired_margins(
        {n: s[n_seen:] for n, s in (state.get("final_sequences") or {}).items()}, finalists)
    lowest = _choose({n: final_losses[n] for n in finalists})
    chosen = _choose({n: final_losses[n] for n in finalists}, margins, config.min_margin_se)
    if chosen not in kept:  # exhaustive, or resumed after the final stage: prune the chosen one again (deterministic)
        kept = run([chosen], calibration_ids, True, f"pruning with the chosen allocation {chosen}")
        recomputed, recorded = kept[chosen].loss, final_losses[chosen]
        if not math.isclose(recomputed, recorded, rel_tol=1e-5, abs_tol=1e-7):
            logger.warning("The chosen allocation's objective is %.6f now but %.6f was recorded; the model or the "
                           "numerics changed since the recorded stage.", recomputed, recorded)
            final_losses[chosen] = recomputed
    for block, weights in zip(blocks.modules, kept[chosen].weights):
        write_block_weights(block, weights)

    rows = []
    for name in names:
        final = final_losses.get(name) if name in finalists else None
        margin = margins.get(name, (None, None))
        rows.append({**next(c for c in candidates if c.name == name).to_dict(),
                     "screen_loss": screen_losses[name], "loss": final,
                     "ppl": None if final is None else math.exp(final), "finalist": name in finalists,
                     "delta_to_uniform": margin[0], "delta_se": margin[1],
                     "held_out_delta": held_out.get(name, (None, None))[0],
                     "held_out_se": held_out.get(name, (None, None))[1],
                     "ratios": ratio_sets[name]})
    record = {
        "objective": OBJECTIVE,
        "split": {**(split or {}), "nsamples": int(selection_ids.shape[0]), "seqlen": int(selection_ids.shape[1]),
                  "tokens": int(selection_ids.shape[0] * (selection_ids.shape[1] - 1))},
        "rule": ("every candidate pruned with all calibration sequences; lowest objective chosen, ties to uniform"
                 if exhaustive else
                 f"screening with {n_screen} of {nsamples} calibration sequences, scored on "
                 f"{int(screen_selection.shape[0])} of the {int(selection_ids.shape[0])} selection sequences; uniform "
                 f"and the best {config.finalists} other(s) pruned with all calibration sequences and scored on every "
                 "selection sequence; lowest final objective chosen, ties to uniform")
                + (f"; a candidate other than uniform only if it beats uniform by at least {config.min_margin_se:g} "
                   "paired standard errors over the selection sequences" if config.min_margin_se else ""),
        "min_margin_se": config.min_margin_se,
        "lowest_objective": lowest,
        "screen_nsamples": nsamples if exhaustive else n_screen,
        "screen_selection_nsamples": n_seen,
        "held_out_selection_nsamples": 0 if exhaustive else int(selection_ids.shape[0]) - n_seen,
        "finalists": finalists,
        "candidates": rows,
        "chosen": chosen,
        "uniform_loss": final_losses[UNIFORM],
        "chosen_loss": final_losses[chosen],
        "seconds": round(time.time() - started, 3),
    }
    logger.info("Allocation selection: chose %s (objective %.5f; uniform %.5f).", chosen, final_losses[chosen],
                final_losses[UNIFORM])
    warn_if_close_call(chosen, margins, int(selection_ids.shape[0]))
    warn_if_kept_uniform(chosen, lowest, margins, config.min_margin_se, int(selection_ids.shape[0]))
    return SelectionOutcome(allocations[chosen], kept[chosen].modules, record)


def selection_table(record: dict[str, Any]) -> str:
    """The candidates of a selection record as a text table (objective in nats/token; ``*`` marks the chosen one;
    each finalist's difference to uniform ± its paired SE on all selection sequences and, when screening was not
    exhaustive, on the sequences screening did not score)."""
    rows = record["candidates"]
    width = max(len("candidate"), *(len(r["name"]) for r in rows))
    held_out = any(r.get("held_out_delta") is not None for r in rows)  # absent when screening was exhaustive

    def margin(delta, se, name) -> str:
        return "-" if delta is None or name == UNIFORM else f"{delta:+.5f}" + ("" if se is None else f" ± {se:.5f}")

    lines = [f"  {'candidate':<{width}}  {'screen loss':>11}  {'final loss':>10}  {'final ppl':>9}  "
             f"{'vs uniform ± SE':>19}" + (f"  {'held-out vs uniform':>19}" if held_out else "")]
    for r in rows:
        final = "-" if r["loss"] is None else f"{r['loss']:.5f}"
        ppl = "-" if r["ppl"] is None else f"{r['ppl']:.3f}"
        mark = "*" if r["name"] == record["chosen"] else " "
        line = (f"{mark} {r['name']:<{width}}  {r['screen_loss']:>11.5f}  {final:>10}  {ppl:>9}  "
                f"{margin(r.get('delta_to_uniform'), r.get('delta_se'), r['name']):>19}")
        if held_out:
            line += f"  {margin(r.get('held_out_delta'), r.get('held_out_se'), r['name']):>19}"
        lines.append(line)
    lines.append(f"chosen: {record['chosen']} ({record['rule']})")
    lowest = record.get("lowest_objective")
    if lowest and lowest != record["chosen"]:
        lines.append(f"{lowest} had the lowest objective but did not clear the margin over uniform "
                     f"({record.get('min_margin_se', 0):g} standard errors)")
    return "\n".join(lines)


def plot_selection(record: dict[str, Any], path: str | Path) -> Path:
    """Bars of every candidate's screening and final objective (PNG); the chosen one is outlined."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    from ..utils.io import save_figure

    rows = record["candidates"]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(rows) + 2), 4.2))
    ax.bar(x - 0.2, [r["screen_loss"] for r in rows], 0.4, label="screening", color="#9ab")
    finals = [r["loss"] if r["loss"] is not None else np.nan for r in rows]
    bars = ax.bar(x + 0.2, finals, 0.4, label="final", color="#357")
    chosen = [i for i, r in enumerate(rows) if r["name"] == record["chosen"]][0]
    bars[chosen].set_edgecolor("#d40")
    bars[chosen].set_linewidth(2.5)
    values = [v for r in rows for v in (r["screen_loss"], r["loss"]) if v is not None]
    low, high = min(values), max(values)
    ax.set_ylim(low - 0.15 * (high - low + 1e-9), high + 0.1 * (high - low + 1e-9))
    ax.set_xticks(x)
    ax.set_xticklabels([r["name"] for r in rows], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("selection loss (nats/token)")
    ax.set_title(f"Allocation selection: {record['chosen']} chosen")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return save_figure(fig, path)


__all__ = ["SELECTION_STATE_FILE", "SelectionOutcome", "plot_selection", "select_and_prune", "selection_table"]
