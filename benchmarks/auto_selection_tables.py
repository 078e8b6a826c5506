"""Markdown tables of ``benchmarks/auto_selection_smollm2.py``'s rows: pure functions of the saved JSON lines (no model,
no torch), so ``--summarize_only`` and the test that checks the documents' generated blocks need nothing else."""

from __future__ import annotations

import json
import statistics

BLOCK = "auto-selection"
COST_BLOCK = "auto-selection-cost"
ZERO_SHOT_BLOCK = "auto-selection-zero-shot"
FIDELITY_BLOCK = "auto-selection-objective"
GRID_SELECTION_NSAMPLES = 8  # the grid's selection split: 8 windows × 128 tokens
MARGIN_BLOCK = "auto-selection-margin"
MARGIN_RULES = (0.0, 1.0, 2.0)  # min_margin_se values the margin table applies to the grid's choices
HELD_OUT_RULES = (0.0, 1.0)  # the same rule on the selection windows screening did not score


def margin_rule_runs(rows: list[dict], tasks: list[str], min_margin_se: float, held_out: bool = False
                     ) -> list[dict]:
    """:func:`paired_auto_runs` of the auto rows that recorded their finalist's margin over uniform (``margins``:
    Δ and its paired SE in nats/token) under the lowest-objective rule (``min_margin_se`` 0), each re-chosen as
    ``min_margin_se`` would have chosen: the finalist when Δ < 0 and −Δ ≥ min_margin_se · SE, uniform otherwise
    (then its WikiText-2 perplexity is uniform's on the same calibration draw). Exact with one finalist, the grid's
    setting: the final stage compared uniform with that finalist alone. With ``held_out``, the margin is the one on
    the selection windows screening did not score (``held_out_margins``; rows without it are left out), and the
    finalist must also have the lower objective on all windows (the lowest-objective choice). Each run gains
    ``finalist``, ``delta``, ``se`` and ``z`` (−Δ / SE) of the margin the rule read."""
    field = "held_out_margins" if held_out else "margins"
    recorded = [r for r in rows if r.get(field) is not None and not r.get("min_margin_se")
                and "min_margin_se" not in r["key"]]
    margins = {json.dumps(r["key"], sort_keys=True): r[field] for r in recorded}
    runs = []
    fixed = [r for r in rows if not r["key"]["allocation"].startswith("auto_")]
    for run in paired_auto_runs(fixed + recorded, tasks):
        (finalist, (delta, se)), = margins[json.dumps(run["key"], sort_keys=True)].items()
        z = -delta / se if se else (float("inf") if delta < 0 else float("-inf"))
        run = {**run, "finalist": finalist, "delta": delta, "se": se, "z": z}
        if run["chosen"] == "uniform" or (delta < 0 and z >= min_margin_se):
            runs.append(run)
            continue
        scale = 1 + run["vs_uniform"] / 100  # auto / uniform: back to uniform's own perplexity
        runs.append({**run, "chosen": "uniform", "ppl": run["ppl"] / scale, "vs_uniform": 0.0,
                     "vs_owl": 100 * ((1 + run["vs_owl"] / 100) / scale - 1),
                     "vs_best": 100 * ((1 + run["vs_best"] / 100) / scale - 1)})
    return runs


def _rule_line(group: list[dict], label: str) -> str:
    return (f"- {label}: {len(group)} runs; auto ≤ uniform in {sum(r['vs_uniform'] <= 0 for r in group)} of "
            f"{len(group)} (worst {max(r['vs_uniform'] for r in group):+.1f}%), ≤ OWL in "
            f"{sum(r['vs_owl'] <= 0 for r in group)}; mean vs uniform "
            f"{statistics.mean(r['vs_uniform'] for r in group):+.1f}%, vs OWL "
            f"{statistics.mean(r['vs_owl'] for r in group):+.1f}%; chose other than uniform in "
            f"{sum(r['chosen'] != 'uniform' for r in group)}.")


def margin_table(rows: list[dict], tasks: list[str]) -> str:
    """Markdown: every auto run that recorded its finalist's margin, with that margin over uniform on the selection
    split (millinats/token ± SE, and in standard errors) and, where recorded, on the windows screening did not score,
    the lowest-objective choice and its WikiText-2 perplexity against uniform's on the same calibration draw; then,
    per method and ``min_margin_se`` of :data:`MARGIN_RULES`, the totals had auto chosen by that rule
    (:func:`margin_rule_runs`), and on the runs with held-out margins, the rules of :data:`HELD_OUT_RULES` on them
    beside the all-window rule on the same runs."""
    runs = margin_rule_runs(rows, tasks, 0.0)
    if not runs:
        return ""
    held = {json.dumps(r["key"], sort_keys=True): r for r in margin_rule_runs(rows, tasks, 0.0, held_out=True)}
    lines = ["| method | sparsity | selection windows | scores from | scoring × calibration seed | finalist | margin "
             "over uniform (millinats/token ± SE) | standard errors | held-out windows: margin (± SE), standard "
             "errors | lowest objective | its WikiText-2 vs uniform (%) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(runs, key=lambda r: (r["method"], r["sparsity"], r["split"], r["task"], r["calibration_seed"],
                                         r["scoring_seed"])):
        h = held.get(json.dumps(r["key"], sort_keys=True))
        held_text = "—" if h is None or h["se"] is None else (
            f"{1000 * h['delta']:+.1f} ± {1000 * h['se']:.1f}, {h['z']:+.2f}")
        lines.append(f"| {r['method']} | {r['sparsity']:.0%} | {r['split']} | {r['task']} | "
                     f"{r['scoring_seed']}×{r['calibration_seed']} "
                     f"| {r['finalist']} | {1000 * r['delta']:+.1f} ± {1000 * r['se']:.1f} | {r['z']:+.2f} | "
                     f"{held_text} | {r['chosen']} | {r['vs_uniform']:+.1f} |")
    lines.append("")
    for method, split in sorted({(r["method"], r["split"]) for r in runs}):
        for rule in MARGIN_RULES:
            group = [r for r in margin_rule_runs(rows, tasks, rule) if (r["method"], r["split"]) == (method, split)]
            lines.append(_rule_line(group, f"{method}, {split} selection windows, min_margin_se {rule:g}"))
    for method, split in sorted({(r["method"], r["split"]) for r in held.values()}):
        keys = {k for k, r in held.items() if (r["method"], r["split"]) == (method, split)}
        for rule in MARGIN_RULES:
            group = [r for r in margin_rule_runs(rows, tasks, rule) if json.dumps(r["key"], sort_keys=True) in keys]
            lines.append(_rule_line(group, f"{method}, {split} selection windows, runs with held-out margins, "
                                           f"min_margin_se {rule:g} on all windows"))
        for rule in HELD_OUT_RULES:
            group = [r for r in margin_rule_runs(rows, tasks, rule, held_out=True)
                     if json.dumps(r["key"], sort_keys=True) in keys]
            lines.append(_rule_line(group, f"{method}, {split} selection windows, runs with held-out margins, "
                                           f"min_margin_se {rule:g} on the held-out windows"))
    return "\n".join(lines)


def objective_fidelity_table(grid: list[dict], rows: list[dict], zero_shot_rows: list[dict],
                             sizes: tuple[int, ...] = (8, 16, 32, 64, 128)) -> str:
    """Markdown: per sparsity and selection-split size k, the objective's OWL − uniform difference (first k windows
    of each selection seed, per calibration draw), how often it prefers OWL, and how often its preference matches
    WikiText-2 perplexity's and zero-shot accuracy's on the same calibration draw."""
    def zero_shot(cell: dict) -> float | None:
        for r in zero_shot_rows:
            key = r["key"]
            if (key.get("candidate") == cell["allocation"] and key.get("method") == "wanda"
                    and key.get("sparsity") == cell["sparsity"] and key.get("calibration_seed") == cell["calibration_seed"]):
                return r["mean_acc_norm"]
        return None

    by_cell = {(r["key"]["sparsity"], r["key"]["calibration_seed"], r["key"]["allocation"]): r for r in rows}
    lines = ["| sparsity | selection windows | runs (calibration × selection draws) | OWL − uniform objective, "
             "mean [min, max] (millinats/token) | objective prefers OWL | agrees with WikiText-2 | agrees with zero-shot |",
             "|---|---|---|---|---|---|---|"]
    for sparsity in sorted({k[0] for k in by_cell}):
        seeds = sorted({k[1] for k in by_cell if k[0] == sparsity and (k[0], k[1], "owl") in by_cell
                        and (k[0], k[1], "uniform") in by_cell})
        for size in sizes:
            diffs, wiki_agree, zs_agree, zs_runs = [], 0, 0, 0
            for calib in seeds:
                owl, uniform = by_cell[sparsity, calib, "owl"], by_cell[sparsity, calib, "uniform"]
                if size > len(next(iter(owl["window_losses"].values()))):
                    continue
                wiki_prefers_owl = owl["wikitext2_ppl"] < uniform["wikitext2_ppl"]
                accs = [zero_shot({"allocation": a, "sparsity": sparsity, "calibration_seed": calib})
                        for a in ("owl", "uniform")]
                for seed, losses in owl["window_losses"].items():
                    diff = statistics.mean(losses[:size]) - statistics.mean(uniform["window_losses"][seed][:size])
                    diffs.append(diff)
                    wiki_agree += (diff < 0) == wiki_prefers_owl
                    if None not in accs:
                        zs_runs += 1
                        zs_agree += (diff < 0) == (accs[0] > accs[1])
            if diffs:
                lines.append(f"| {sparsity:.0%} | {size} | {len(diffs)} | {1000 * statistics.mean(diffs):+.1f} "
                             f"[{1000 * min(diffs):+.1f}, {1000 * max(diffs):+.1f}] | {sum(d < 0 for d in diffs)}/{len(diffs)} | "
                             f"{wiki_agree}/{len(diffs)} | {f'{zs_agree}/{zs_runs}' if zs_runs else '—'} |")
    return "\n".join(lines)


def zero_shot_table(grid: list[dict], rows: list[dict], tasks: list[str]) -> str:
    """Markdown: per (method, sparsity, scoring task), the zero-shot mean acc_norm of auto's choice paired against
    uniform and OWL on the same calibration draw (points, mean [min, max] over the auto runs), and per-task means."""
    if not rows:
        return ""
    accuracy = {}
    for r in rows:
        k = r["key"]
        if k["candidate"] == "dense":
            continue
        ident = (k["method"], k["sparsity"], k["calibration_seed"], k["candidate"], k.get("task"), k.get("scoring_seed"))
        accuracy[ident] = r
    setting = rows[0]["key"]
    dense = next((r for r in rows if r["key"]["candidate"] == "dense"), None)
    names = setting["tasks"]
    lines = [f"Zero-shot acc_norm (first {setting['limit']} items of {', '.join(names)}; dense model "
             f"{100 * dense['mean_acc_norm']:.1f}%)" if dense else "",
             "",
             "| method | sparsity | scores from | runs | auto mean acc_norm (%) | uniform | OWL | "
             "auto − uniform (points, paired) | auto − OWL (points) | auto ≥ uniform | auto ≥ OWL |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]

    def fmt(values: list[float]) -> str:
        return f"{statistics.mean(values):+.1f} [{min(values):+.1f}, {max(values):+.1f}]"

    autos = [r for r in grid if is_grid_auto(r["key"])]
    totals: dict[str, tuple[list[float], list[float]]] = {}
    for method, sparsity in sorted({(r["key"]["method"], r["key"]["sparsity"]) for r in autos}):
        for task in tasks:
            mine, uni, owl = [], [], []
            for auto in autos:
                k = auto["key"]
                if (k["method"], k["sparsity"], k["allocation"]) != (method, sparsity, f"auto_{task}"):
                    continue
                cell = (method, sparsity, k["calibration_seed"])
                chosen = auto["chosen"]
                own = ((*cell, chosen, None, None) if chosen in ("uniform", "owl", "alphapruning")
                       else (*cell, chosen, task, k["scoring_seed"]))
                if own not in accuracy or (*cell, "uniform", None, None) not in accuracy or \
                        (*cell, "owl", None, None) not in accuracy:
                    continue
                mine.append(100 * accuracy[own]["mean_acc_norm"])
                uni.append(100 * accuracy[(*cell, "uniform", None, None)]["mean_acc_norm"])
                owl.append(100 * accuracy[(*cell, "owl", None, None)]["mean_acc_norm"])
            if not mine:
                continue
            du = [a - b for a, b in zip(mine, uni)]
            do = [a - b for a, b in zip(mine, owl)]
            totals.setdefault(method, ([], []))[0].extend(du)
            totals[method][1].extend(do)
            lines.append(f"| {method} | {sparsity:.0%} | {task} | {len(mine)} | {statistics.mean(mine):.1f} | "
                         f"{statistics.mean(uni):.1f} | {statistics.mean(owl):.1f} | {fmt(du)} | {fmt(do)} | "
                         f"{sum(d >= 0 for d in du)}/{len(du)} | {sum(d >= 0 for d in do)}/{len(do)} |")
    lines.append("")
    for method, (du, do) in totals.items():
        lines.append(f"- {method}: {len(du)} paired runs; auto ≥ uniform in {sum(d >= 0 for d in du)} of {len(du)} "
                     f"(worst {min(du):+.1f} points), ≥ OWL in {sum(d >= 0 for d in do)} of {len(do)}; mean vs "
                     f"uniform {statistics.mean(du):+.1f}, vs OWL {statistics.mean(do):+.1f} points.")
    return "\n".join(lines)


def cost_table(result: dict) -> str:
    """Markdown: seconds of one prune and of auto, their paired ratio, and the memory each added."""
    ratios = result["ratio"]
    return "\n".join([
        "| method | calibration | candidates | screening | selection split | one prune (s) | auto (s) | "
        "auto / one prune (paired) | memory added: one prune / auto (MB) |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {result['method']} | {result['nsamples']} × {result['seqlen']} | {result['candidates']} | "
        f"{result['screen_nsamples']} sequences | {result['selection_nsamples']} × {result['seqlen']} | "
        f"{statistics.median(result['one_prune_s']):.0f} | {statistics.median(result['auto_s']):.0f} | "
        f"{statistics.median(ratios):.2f} [{min(ratios):.2f}, {max(ratios):.2f}] | "
        f"{result.get('extra_rss_mb_one_prune', float('nan')):.0f} / {result.get('extra_rss_mb_auto', float('nan')):.0f} |"])


def paired_auto_runs(rows: list[dict], tasks: list[str]) -> list[dict]:
    """Every auto row paired with the fixed rows of its calibration draw: ``{"method", "sparsity", "task", "split",
    "calibration_seed", "scoring_seed", "chosen", "ppl", "vs_uniform", "vs_owl", "vs_best"}``, the last three in %
    of WikiText-2 perplexity (negative: auto is better). The best fixed allocation of hindsight is the lowest of
    uniform, OWL, AlphaPruning and LayerIF in both directions from the same task's scores of the same scoring seed.
    Rows whose uniform or OWL run is missing are left out."""
    fixed: dict[tuple, dict[str, float]] = {}
    for r in rows:
        k = r["key"]
        if not k["allocation"].startswith("auto_"):
            fixed.setdefault((k["method"], k["sparsity"], k["calibration_seed"], k.get("scoring_seed")), {})[
                k["allocation"]] = r["wikitext2_ppl"]
    runs = []
    for auto in rows:
        k = auto["key"]
        task = k["allocation"][len("auto_"):]
        if not k["allocation"].startswith("auto_") or task not in tasks:
            continue
        common = fixed.get((k["method"], k["sparsity"], k["calibration_seed"], None), {})
        own = {n: v for n, v in fixed.get((k["method"], k["sparsity"], k["calibration_seed"], k["scoring_seed"]),
                                          {}).items() if n.endswith(f"_{task}")}
        if "uniform" not in common or "owl" not in common:
            continue
        ppl = auto["wikitext2_ppl"]
        runs.append({"method": k["method"], "sparsity": k["sparsity"], "task": task, "split": selection_windows(k),
                     "calibration_seed": k["calibration_seed"], "scoring_seed": k["scoring_seed"],
                     "chosen": auto["chosen"], "ppl": ppl,
                     "vs_uniform": 100 * (ppl / common["uniform"] - 1), "vs_owl": 100 * (ppl / common["owl"] - 1),
                     "vs_best": 100 * (ppl / min({**common, **own}.values()) - 1), "key": k})
    return runs


def summarize(rows: list[dict], tasks: list[str]) -> str:
    """Markdown: per (method, sparsity, scoring task, selection split), auto's WikiText-2 perplexity paired against
    uniform, OWL and the best fixed allocation of hindsight on the same calibration draw (:func:`paired_auto_runs`):
    mean % difference [min, max] over calibration × scoring seeds, and wins; then, per method and split, the totals
    over every run and the scoring × calibration seed pairs the rows cover."""
    lines = ["| method | sparsity | scores from | selection windows | runs | auto chose | auto ppl | "
             "vs uniform (%, paired) | vs OWL (%) | vs best fixed of hindsight (%) | auto ≤ uniform | auto ≤ OWL |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    runs = paired_auto_runs(rows, tasks)

    def fmt(values: list[float]) -> str:
        return f"{statistics.mean(values):+.1f} [{min(values):+.1f}, {max(values):+.1f}]"

    for method, sparsity in sorted({(r["method"], r["sparsity"]) for r in runs}):
        for task in tasks:
            for split in sorted({r["split"] for r in runs}):
                cell = [r for r in runs if (r["method"], r["sparsity"], r["task"], r["split"]) ==
                        (method, sparsity, task, split)]
                if not cell:
                    continue
                chosen = [r["chosen"] for r in cell]
                picks = ", ".join(f"{c} ×{chosen.count(c)}" for c in dict.fromkeys(chosen))
                lines.append(f"| {method} | {sparsity:.0%} | {task} | {split} | {len(cell)} | {picks} | "
                             f"{statistics.mean(r['ppl'] for r in cell):.2f} | "
                             f"{fmt([r['vs_uniform'] for r in cell])} | {fmt([r['vs_owl'] for r in cell])} | "
                             f"{fmt([r['vs_best'] for r in cell])} | "
                             f"{sum(r['vs_uniform'] <= 0 for r in cell)}/{len(cell)} | "
                             f"{sum(r['vs_owl'] <= 0 for r in cell)}/{len(cell)} |")
    lines.append("")
    for method in sorted({r["method"] for r in runs}):
        noise = []
        for sparsity in sorted({r["sparsity"] for r in runs if r["method"] == method}):
            uniform = [r["wikitext2_ppl"] for r in rows if r["key"]["allocation"] == "uniform" and
                       (r["key"]["method"], r["key"]["sparsity"]) == (method, sparsity)]
            if len(uniform) > 1:
                noise.append(f"{100 * statistics.stdev(uniform) / statistics.mean(uniform):.1f}% at {sparsity:.0%}")
        if noise:
            lines.append(f"- {method}, calibration-seed noise (standard deviation of uniform's perplexity over the "
                         f"calibration draws): {', '.join(noise)}.")
        for split in sorted({r["split"] for r in runs if r["method"] == method}):
            group = [r for r in runs if (r["method"], r["split"]) == (method, split)]
            pairs = sorted({(r["scoring_seed"], r["calibration_seed"]) for r in group})
            lines.append(f"- {method}, {split} selection windows: {len(group)} runs (scoring × calibration seeds "
                         f"{', '.join(f'{s}×{c}' for s, c in pairs)}); auto ≤ uniform in "
                         f"{sum(r['vs_uniform'] <= 0 for r in group)} of {len(group)} (worst "
                         f"{max(r['vs_uniform'] for r in group):+.1f}%), ≤ OWL in "
                         f"{sum(r['vs_owl'] <= 0 for r in group)} of {len(group)}; mean vs uniform "
                         f"{statistics.mean(r['vs_uniform'] for r in group):+.1f}%, vs OWL "
                         f"{statistics.mean(r['vs_owl'] for r in group):+.1f}%; chose a LayerIF map in "
                         f"{sum(r['chosen'].startswith('layerif') for r in group)}.")
    return "\n".join(lines)


def selection_windows(key: dict) -> int:
    """The number of selection windows an auto row was selected on (rows of the grid's default split omit it)."""
    return key.get("selection_nsamples", GRID_SELECTION_NSAMPLES)


def is_grid_auto(key: dict) -> bool:
    """An auto row of the grid's own selection split (the zero-shot and objective tables pair these)."""
    return key["allocation"].startswith("auto_") and selection_windows(key) == GRID_SELECTION_NSAMPLES
