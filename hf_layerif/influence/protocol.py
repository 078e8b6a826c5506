"""The scoring protocol: fit the scoring adapter, repeat over adapter draws, average the draws.

LayerIF scores a model whose LoRA adapter is fitted to the task (``fit_steps``); a fresh adapter's ranking depends
on its random A, so a fresh or fitted adapter is scored over ``repeats`` draws whose influence matrices are
normalised and averaged. Draw r > 0 uses :func:`draw_seed` (seed + r · 1,000,003).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..utils.io import read_json, read_safetensors, write_json, write_safetensors
from ..utils.logging import get_logger
from .engine import InfluenceEngine
from .fitting import adapter_parameters, fit_adapter, lora_is_fresh, redraw_adapter, restore, snapshot
from .scores import aggregate_block_scores

logger = get_logger(__name__)

FITTED_ADAPTER_FILE = "fitted_adapter.safetensors"
FITTED_ADAPTER_META = "fitted_adapter.json"




def average_draws(draws: list[torch.Tensor], aggregation: str, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Average the influence matrices [L, n] of several adapter draws, each divided by its mean |I| first (so every
    draw weighs the same whatever its scale), then multiplied by the mean of those scales (the result keeps the
    draws' units). Returns (averaged influence [L, n], per-draw block scores [draws, L] of the normalised draws)."""
    normalised = normalise_draws(draws)
    per_draw = torch.stack([aggregate_block_scores(d, aggregation, fraction) for d in normalised])
    return normalised.mean(0), per_draw


def normalise_draws(draws: list[torch.Tensor]) -> torch.Tensor:
    """The draws [R, L, n] (float64), each divided by its mean |I| and multiplied by the mean of those scales."""
    stacked = torch.stack([d.to(torch.float64) for d in draws])
    scales = _draw_scales(stacked)
    return stacked / scales[:, None, None] * scales.mean()


def _draw_scales(stacked: torch.Tensor) -> torch.Tensor:
    """Mean |I| of each draw [R] of the stacked draws [R, L, n] (float64, at least the smallest normal float)."""
    return stacked.abs().mean(dim=(1, 2)).clamp_min(torch.finfo(torch.float64).tiny)


def average_validation_parts(draws: list[torch.Tensor], parts: list[torch.Tensor | None]) -> torch.Tensor | None:
    """The influence against each validation part [P, L, n] float64, averaged over the draws with the full draws'
    normalisation (each draw's parts divided by that draw's mean |I|, as :func:`normalise_draws` divides the draw),
    so that it is to the averaged influence what one draw's parts are to that draw. None when a draw has none."""
    if not parts or any(p is None for p in parts):
        return None
    scales = _draw_scales(torch.stack([d.to(torch.float64) for d in draws]))
    stacked = torch.stack([p.to(torch.float64) for p in parts])  # [R, P, L, n]
    return (stacked / scales[:, None, None, None] * scales.mean()).mean(0)


def _draw_files(checkpoint_dir: Path, draw: int) -> tuple[Path, Path]:
    return checkpoint_dir / f"draw{draw}.safetensors", checkpoint_dir / f"draw{draw}.json"


def _save_draw(checkpoint_dir: Path | None, draw: int, key: dict | None, influence: torch.Tensor, fit: dict | None,
               influence_parts: torch.Tensor | None = None) -> None:
    """Keep a finished adapter draw's influence matrix [L, n] (and its validation parts' [P, L, n], when formed) in
    safetensors with the run's key, so that an interrupted run does not compute it again."""
    if checkpoint_dir is None:
        return
    tensor_file, meta_file = _draw_files(checkpoint_dir, draw)
    tensors = {"influence": influence}
    if influence_parts is not None:
        tensors["influence_parts"] = influence_parts.contiguous()
    write_safetensors(tensor_file, tensors)
    write_json(meta_file, {"key": key, "fit": fit})


def _load_draw(checkpoint_dir: Path | None, draw: int, key: dict | None
               ) -> tuple[torch.Tensor, dict | None, torch.Tensor | None] | None:
    """A draw saved by :func:`_save_draw` for this very run (same key) as (influence, fit, influence_parts), else
    None."""
    if checkpoint_dir is None:
        return None
    tensor_file, meta_file = _draw_files(checkpoint_dir, draw)
    if not (tensor_file.exists() and meta_file.exists()):
        return None
    meta = read_json(meta_file)
    if meta.get("key") != key:
        return None
    tensors = read_safetensors(tensor_file)
    return tensors["influence"], meta.get("fit"), tensors.get("influence_parts")


def draw_seed(seed: int, draw: int) -> int:
    """Seed of adapter draw ``draw`` > 0 of a run with ``seed``: runs with nearby seeds share no draw."""
    return seed + draw * 1_000_003


# padding values of the collated keys when samples of differently padded batches are re-batched
_PAD_VALUES = {"attention_mask": 0, "labels": -100}


def _rebatch(train_loader, size: int):
    """A factory of the training samples in batches of ``size`` (for a fit with its own batch size). Samples keep
    their real tokens; each new batch is right-padded to its longest sample (mask 0, label -100)."""

    def batches():
        rows = [{k: v[i] for k, v in b.items()} for b in train_loader() for i in range(b["input_ids"].shape[0])]
        out = []
        for j in range(0, len(rows), size):
            group = rows[j:j + size]
            batch = {}
            for key in group[0]:
                batch[key] = torch.nn.utils.rnn.pad_sequence([r[key] for r in group], batch_first=True,
                                                             padding_value=_PAD_VALUES.get(key, 0))
            out.append(batch)
        return out

    return batches


def score_with_protocol(engine: InfluenceEngine, train_loader, eval_loader, num_train: int, num_eval: int,
                        checkpoint_dir: Path | None, resume_key: dict | None, cache_dir) -> tuple:
    """The scoring protocol around the engine: fit the adapter (``fit_steps``), run the engine, and for a fresh or
    fitted adapter repeat over ``repeats`` adapter draws and average them (:func:`average_draws`). The model holds
    draw 0's adapter afterwards (fitted when ``fit_steps`` > 0), whatever happens.

    Returns:
        (first :class:`~hf_layerif.influence.engine.EngineResult`, influence [L, n] float64 (averaged over draws),
        per-draw block scores [draws, L] or None, the normalised draws [draws, L, n] or None, protocol description
        for the provenance, the influence against each validation part [P, L, n] float64 averaged the same way or
        None).
    """
    args = engine.args
    model = engine.model
    accelerator = engine.accelerator
    fresh = args.target == "lora" and lora_is_fresh(engine.tracked)
    repeats = args.repeats if args.repeats is not None else (3 if fresh else 1)
    params = adapter_parameters(engine.tracked)
    size = args.fit_batch_size or args.batch_size
    fit_batches = train_loader if size == args.batch_size else _rebatch(train_loader, size)

    def fit(seed: int) -> dict | None:
        if not args.fit_steps:
            return None
        return fit_adapter(model, params, fit_batches, args.fit_steps, args.fit_learning_rate, seed, engine._to_device,
                           engine.autocast, engine.progress)

    fitted_file = checkpoint_dir / FITTED_ADAPTER_FILE if checkpoint_dir is not None else None
    original = snapshot(params) if repeats > 1 or args.fit_steps else None
    keep = original  # what the model holds afterwards: the adapter of draw 0 (fitted when fit_steps > 0)
    fits = []
    try:
        saved_fit = None
        if args.fit_steps and fitted_file is not None and fitted_file.exists():
            meta = read_json(checkpoint_dir / FITTED_ADAPTER_META)
            saved_fit = meta if meta.get("key") == resume_key else None
        if saved_fit is not None:
            saved = read_safetensors(fitted_file)
            restore(params, [saved[f"p{i}"].to(p.device, p.dtype) for i, p in enumerate(params)])
            fits.append(saved_fit["fit"])
            logger.info("Loaded the fitted scoring adapter of the checkpoint in %s.", checkpoint_dir)
        elif args.fit_steps:
            fits.append(fit(args.seed))
            if fitted_file is not None and (accelerator is None or accelerator.is_main_process):
                write_safetensors(fitted_file, {f"p{i}": p for i, p in enumerate(params)})
                write_json(checkpoint_dir / FITTED_ADAPTER_META, {"key": resume_key, "fit": fits[0]})
        if original is not None:
            keep = snapshot(params)
        engine.configure_capture()
        first = engine.run(train_loader(), eval_loader(), num_train, num_eval, checkpoint_dir, resume_key, cache_dir)
        influence = first.influence
        influence_parts = first.influence_parts
        repeat_scores = normalised = None
        if repeats > 1:
            draws, parts = [influence], [influence_parts]
            for r in range(1, repeats):
                saved_draw = _load_draw(checkpoint_dir, r, resume_key)
                if saved_draw is not None:  # finished before an interruption: not recomputed
                    draws.append(saved_draw[0])
                    fits.append(saved_draw[1])
                    parts.append(saved_draw[2])
                    logger.info("Loaded adapter draw %d of the checkpoint in %s.", r, checkpoint_dir)
                    continue
                redraw_adapter(engine.tracked, draw_seed(args.seed, r))
                fits.append(fit(draw_seed(args.seed, r)))
                engine.configure_capture()
                result = engine.run(train_loader(), eval_loader(), num_train, num_eval, None, None, cache_dir)
                draws.append(result.influence)
                parts.append(result.influence_parts)
                if accelerator is None or accelerator.is_main_process:
                    _save_draw(checkpoint_dir, r, resume_key, draws[-1], fits[-1], parts[-1])
            influence, repeat_scores = average_draws(draws, args.aggregation, args.fraction)
            normalised = normalise_draws(draws)
            influence_parts = average_validation_parts(draws, parts)
    finally:
        if original is not None:
            restore(params, keep)
            engine.configure_capture()
    if fitted_file is not None:
        fitted_file.unlink(missing_ok=True)
        (checkpoint_dir / FITTED_ADAPTER_META).unlink(missing_ok=True)
        for r in range(1, repeats):
            for path in _draw_files(checkpoint_dir, r):
                path.unlink(missing_ok=True)
    protocol = {"adapter": "fitted" if args.fit_steps else ("fresh" if fresh else "trained"), "draws": repeats,
                "draw_seeds": [args.seed] + [draw_seed(args.seed, r) for r in range(1, repeats)],
                "normalisation": "each draw divided by its mean |I|, then averaged" if repeats > 1 else None,
                "fits": fits or None}
    if influence_parts is not None:
        protocol["validation_parts"] = len(first.validation_part_weights)
    return first, influence, repeat_scores, normalised, protocol, influence_parts
