"""Saving and loading :class:`~hf_layerif.influence.scores.LayerInfluenceScores`: JSON and safetensors only.

A scores folder holds ``influence.safetensors`` (the influence matrix [num_blocks, num_train] float32, the damping
λ per parameter group float64, the per-sample training losses, and each adapter draw's influence matrix when
there were several) and ``layerif_scores.json`` (names, arguments, estimator, block scores of every aggregation,
stability, provenance, with the sign convention stated). Both are written atomically; nothing is unpickled.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..utils.io import read_safetensors, read_versioned_json, write_json, write_safetensors
from ..utils.pretrained import resolve_file

SCORES_FORMAT = "hf-layerif-scores"
SCORES_FORMAT_VERSION = "1.0"
SCORES_JSON = "layerif_scores.json"
INFLUENCE_FILE = "influence.safetensors"
SIGN_CONVENTION = (
    "Koh & Liang: influence I_l(z) = -v_l^T H_l^{-1} g_l(z). I < 0: up-weighting training sample z lowers the "
    "validation loss through block l (beneficial); I > 0: it raises it (detrimental). Block scores are "
    "non-negative magnitudes: 'positive' = sum of max(-I, 0) (beneficial mass, the default)."
)


def scores_json(scores, aggregations) -> dict[str, Any]:
    """The JSON of ``layerif_scores.json`` for ``scores``, with the block scores of every name in ``aggregations``."""
    return {
        "format": SCORES_FORMAT,
        "format_version": SCORES_FORMAT_VERSION,
        "sign_convention": SIGN_CONVENTION,
        "block_names": list(scores.block_names),
        "num_blocks": scores.num_blocks,
        "num_train": scores.num_train,
        "arguments": scores.arguments,
        "estimator": scores.estimator,
        "damping": scores.damping.tolist(),
        "group_to_block": list(scores.group_to_block),
        "block_scores": {agg: scores.block_scores(agg).tolist() for agg in aggregations},
        "stability": scores.stability(),
        "repeat_block_scores": None if scores.repeat_block_scores is None else scores.repeat_block_scores.tolist(),
        "validation_part_weights": scores.validation_part_weights,
        "provenance": scores.provenance,
    }


def write_scores(scores, save_directory: str | os.PathLike, aggregations) -> None:
    """Write ``influence.safetensors`` and ``layerif_scores.json`` of ``scores`` into ``save_directory``."""
    path = Path(save_directory)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {"influence": scores.influence.contiguous(), "damping": scores.damping.to(torch.float64)}
    if scores.train_losses is not None:
        tensors["train_losses"] = scores.train_losses.to(torch.float32)
    if scores.draw_influence is not None:
        tensors["draw_influence"] = scores.draw_influence.to(torch.float32).contiguous()
    if scores.validation_part_influence is not None:
        tensors["validation_part_influence"] = scores.validation_part_influence.to(torch.float32).contiguous()
    write_safetensors(path / INFLUENCE_FILE, tensors, metadata={"format": SCORES_FORMAT, "sign_convention": SIGN_CONVENTION})
    write_json(path / SCORES_JSON, scores_json(scores, aggregations))


def read_scores(repo_id_or_path: str | os.PathLike, revision: str | None = None) -> dict[str, Any]:
    """The constructor arguments of the scores saved in a local folder or a Hub repo (checks the format and its
    major version first, with an error that says what to pass or upgrade)."""
    meta_file = resolve_file(repo_id_or_path, SCORES_JSON, revision)
    meta = read_versioned_json(meta_file, SCORES_FORMAT, SCORES_FORMAT_VERSION, "LayerInfluenceScores")
    tensors = read_safetensors(resolve_file(repo_id_or_path, INFLUENCE_FILE, revision))
    repeats = meta.get("repeat_block_scores")
    parts, weights = tensors.get("validation_part_influence"), meta.get("validation_part_weights")
    if parts is None and tensors.get("validation_half_influence") is not None:
        # saved before the parts: the first half and, by linearity, the second make two parts
        f = float(meta["validation_half_fraction"])
        half = tensors["validation_half_influence"].to(torch.float64)
        parts = torch.stack([half, (tensors["influence"].to(torch.float64) - f * half) / (1 - f)])
        weights = [f, 1 - f]
    return dict(
        influence=tensors["influence"],
        block_names=list(meta["block_names"]),
        damping=tensors["damping"],
        group_to_block=list(meta["group_to_block"]),
        arguments=meta.get("arguments", {}),
        estimator=meta.get("estimator", {}),
        provenance=meta.get("provenance", {}),
        train_losses=tensors.get("train_losses"),
        repeat_block_scores=None if repeats is None else torch.tensor(repeats, dtype=torch.float64),
        draw_influence=tensors.get("draw_influence"),
        validation_part_influence=parts,
        validation_part_weights=weights,
        _stability=meta.get("stability"),
    )
