"""Running the influence engine into an output folder: one run per folder (a lock), checkpoint and resume,
the scores assembled with their provenance and saved, the checkpoint removed once they are."""

from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path

import torch

from ..utils.locking import folder_lock
from ..utils.logging import get_logger
from .arguments import DEFAULT_FIT_STEPS
from .checkpoint import (
    CHECKPOINT_DIRNAME,
    check_resumable,
    model_weights_fingerprint,
    remove_checkpoint_files,
    resume_key,
)
from .engine import InfluenceEngine
from .fitting import lora_is_fresh
from .protocol import score_with_protocol
from .provenance import json_safe, library_versions, model_provenance
from .score_files import SCORES_JSON
from .scores import LayerInfluenceScores

logger = get_logger(__name__)


_WARNED_REGIME: set[str] = set()


def warn_outside_regime(estimator: str, ratios: list[float] | None, block_names: list[str],
                        group_to_block: list[int]) -> bool:
    """Warn (once per process and estimator) when an approximate estimator ran outside the regime where it
    matches the exact damped influence: some group's ρ = mean‖g‖²/λ above the estimator's ``regime_ratio_limit``.
    Returns whether the run was outside it."""
    from .estimators import ESTIMATORS

    limit = ESTIMATORS[estimator].regime_ratio_limit
    if limit is None or not ratios or max(ratios) <= limit:
        return False
    if estimator not in _WARNED_REGIME:
        _WARNED_REGIME.add(estimator)
        worst = max(range(len(ratios)), key=ratios.__getitem__)
        logger.warning(
            "%s approximates the exact damped influence only while mean‖g‖²/λ stays below about %g per block; here it "
            "is %.3g to %.3g (largest in %s). With the default damping (λ = damping_factor · mean‖g‖²/d) it equals "
            "d / damping_factor, so it grows with a block's parameter count, and the block ranking can differ from "
            "estimator='exact' (docs/FIDELITY.md). Use estimator='exact' for the exact ranking, or a damping_factor "
            "of at least d / %g to stay in the regime.", estimator, limit, min(ratios), max(ratios),
            block_names[group_to_block[worst]], limit)
    return True


def resolve_fit_steps(args, fresh: bool, processes: int):
    """The one scoring protocol of the API, the Trainer and the CLI (``fit_steps=None``, the default): a fresh LoRA
    adapter is fitted :data:`DEFAULT_FIT_STEPS` steps to the task before scoring (the method's setting); an adapter
    trained before the call, or ``target="full"``, is scored as it is. Several processes cannot fit in one: a fresh
    adapter is then scored unfitted, with a warning. An explicit ``fit_steps`` is kept."""
    if args.fit_steps is not None:
        return args
    steps = DEFAULT_FIT_STEPS if fresh else 0
    if steps and processes > 1:
        logger.warning("The fresh LoRA adapter is scored without fitting: fitting runs in one process. Train it first "
                       "(LayerInfluenceTrainer.train()) for the method's setting, or pass fit_steps=0 to silence this.")
        steps = 0
    return args.replace(fit_steps=steps)


def run_influence(engine: InfluenceEngine, train_loader, eval_loader, num_train: int, num_eval: int,
                  data_fingerprint: dict, output_dir: str | os.PathLike | None = None,
                  cache_dir: str | os.PathLike | None = None, overwrite: bool = False) -> LayerInfluenceScores:
    """Run ``engine`` over loaders (factories returning a fresh iterable each call) and assemble the scores.

    Shared by :func:`compute_layer_influence` and :class:`hf_layerif.LayerInfluenceTrainer`: checkpointing
    into ``output_dir/influence_checkpoint``, repeated adapter initialisations, provenance and saving. A finished
    run in ``output_dir`` with the same model, data and gradient-phase arguments is loaded instead of recomputed
    (only the reporting arguments — aggregation, fraction, bootstrap — may differ), unless ``overwrite``.
    """
    accelerator = engine.accelerator
    fresh = engine.args.target == "lora" and lora_is_fresh(engine.tracked)
    engine.args = args = resolve_fit_steps(engine.args, fresh, 1 if accelerator is None else accelerator.num_processes)
    model = engine.model
    if args.target == "lora" and not fresh:
        if args.fit_steps:
            raise ValueError("fit_steps fits a fresh adapter, but this adapter is already trained (its B matrices are "
                             "non-zero). Score it as trained with fit_steps=0, or attach a fresh adapter.")
        if (args.repeats or 1) > 1:
            raise ValueError("repeats > 1 re-draws the LoRA initialisation, which would overwrite a trained adapter. "
                             "Use repeats=1 for a trained adapter, or score a freshly initialised one.")
    if args.fit_steps and accelerator is not None and accelerator.num_processes > 1:
        raise ValueError("fit_steps fits the adapter in one process; with several processes train it first "
                         "(LayerInfluenceTrainer.train()) and score it with fit_steps=0.")
    checkpoint_dir = Path(output_dir) / CHECKPOINT_DIRNAME if (output_dir is not None and args.checkpoint_every) else None
    data_fp = data_fingerprint
    processes = 1 if accelerator is None else accelerator.num_processes
    rank = 0 if accelerator is None else accelerator.process_index
    key = None
    if output_dir is not None:
        key = resume_key(args, data_fp, model_provenance(model).get("model_id", ""),
                         model_weights_fingerprint(model, engine.tracked), list(engine.blocks.names),
                         engine.dims_per_block, processes)
    if output_dir is not None and not overwrite:
        finished = _finished_run(Path(output_dir), key, args)
        if finished is not None:
            return finished
    with contextlib.ExitStack() as stack:
        if output_dir is not None:
            # one run per output folder: a second one would overwrite the first one's checkpoint and spill files
            stack.enter_context(folder_lock(output_dir, f".hf-layerif-rank{rank}.lock"))
            if (Path(output_dir) / SCORES_JSON).exists() and (accelerator is None or accelerator.is_main_process):
                logger.warning("%s holds finished scores; they will be replaced when this run finishes.", output_dir)
        if checkpoint_dir is not None:
            own_dir = checkpoint_dir / f"rank{rank}" if processes > 1 else checkpoint_dir
            steps_done = check_resumable(own_dir, key, num_train, args.batch_size, processes)
            if steps_done is not None:
                total = math.ceil(num_train / (args.batch_size * processes))
                logger.warning("Resuming the influence run in %s from step %d of %d%s.", checkpoint_dir, steps_done, total,
                               " (validation pass done)" if steps_done == 0 else "")
        return _run_and_save(engine, train_loader, eval_loader, num_train, num_eval, data_fp, output_dir, cache_dir,
                             checkpoint_dir, key)


def _finished_run(output_dir: Path, key: dict, args) -> LayerInfluenceScores | None:
    """The scores saved in ``output_dir`` by a finished run with this very key (model, weights, data, gradient-phase
    arguments), with this call's reporting arguments applied; None when there is none or it differs."""
    if not (output_dir / SCORES_JSON).exists():
        return None
    try:
        saved = LayerInfluenceScores.from_pretrained(output_dir)
    except (OSError, ValueError):
        return None
    if saved.provenance.get("run_key") != key:
        return None
    logger.warning("Loaded the finished scores in %s (same model, data and gradient settings): no gradient pass. "
                   "Pass overwrite=True (--overwrite) to compute them again.", output_dir)
    return saved.with_reporting(aggregation=args.aggregation, fraction=args.fraction,
                                bootstrap_samples=args.bootstrap_samples)


def _run_and_save(engine: InfluenceEngine, train_loader, eval_loader, num_train: int, num_eval: int, data_fp: dict,
                  output_dir, cache_dir, checkpoint_dir: Path | None, resume_key: dict | None) -> LayerInfluenceScores:
    args = engine.args
    model = engine.model
    accelerator = engine.accelerator
    started = time.time()
    first, influence, repeat_scores, draws, protocol, influence_parts = score_with_protocol(
        engine, train_loader, eval_loader, num_train, num_eval, checkpoint_dir, resume_key, cache_dir)
    damping, est_settings, losses = first.damping, first.settings, first.losses
    warn_outside_regime(args.estimator, est_settings.get("curvature_ratio"), list(engine.blocks.names),
                        engine.layout.group_to_block().tolist())
    provenance = {
        "protocol": protocol,
        "model": model_provenance(model),
        "data": data_fp,
        "blocks": {"names": engine.blocks.names, "source": engine.blocks.source, "class": engine.blocks.block_class,
                   "pattern": engine.blocks.name_pattern(), "tracked_dims": engine.dims_per_block,
                   "params_per_block": engine.blocks.linear_params_per_block(),
                   "tracked_modules": [[m.name for m in ms] for ms in engine.tracked]},
        "versions": library_versions(),
        "num_processes": 1 if accelerator is None else accelerator.num_processes,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(time.time() - started, 3),
        "run_key": resume_key,  # a later identical call loads these scores instead of recomputing them
    }
    scores = LayerInfluenceScores(
        influence=influence.to(torch.float32),
        block_names=list(engine.blocks.names),
        damping=damping,
        group_to_block=engine.layout.group_to_block().tolist(),
        arguments=json_safe(args.to_dict()),
        estimator=json_safe(est_settings),
        provenance=json_safe(provenance),
        train_losses=losses.to(torch.float32),
        repeat_block_scores=repeat_scores,
        draw_influence=None if draws is None else draws.to(torch.float32),
        validation_part_influence=None if influence_parts is None else influence_parts.to(torch.float32),
        validation_part_weights=first.validation_part_weights if influence_parts is not None else None,
    )
    scores.warn_if_unstable()
    if output_dir is not None:
        if accelerator is None or accelerator.is_main_process:
            scores.save_pretrained(output_dir)
        if checkpoint_dir is not None:
            remove_checkpoint_files(first.accumulator)
        if accelerator is not None:
            accelerator.wait_for_everyone()
        if checkpoint_dir is not None and (accelerator is None or accelerator.is_main_process):
            with contextlib.suppress(OSError):
                checkpoint_dir.rmdir()
    return scores
