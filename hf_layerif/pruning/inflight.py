"""Prune one model for several candidate ratio vectors at once, block by block, and score each on held-out tokens.

Every candidate is pruned exactly as :meth:`~hf_layerif.pruning.LayerIFPruner.prune` would prune it alone: block l's
statistics come from the candidate's own (already pruned) blocks < l, on the calibration sequences. Instead of one
pass over the model per candidate, all candidates are carried through one pass ("in flight"): at block l the dense
weights are read once, and for each candidate the block is pruned, run, and restored to dense.

Work that does not depend on the candidate is shared: the block-0 inputs are captured once, and candidates whose
ratios agree on every block so far share their inputs, so their statistics are gathered once (at block 0 every
candidate shares them) and candidates with the same ratio share the pruned block and its outputs.

Memory: per group of candidates that still share inputs, the calibration activations (nsamples × seqlen × hidden) and
the selection activations (selection nsamples × seqlen × hidden) on ``activation_device`` in ``activation_dtype``;
one block's dense weights; with ``keep_weights`` one copy of the pruned linear weights per candidate (on the CPU).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from ..calibration import BlockSequentialRunner
from ..models.blocks import TransformerBlocks
from ..models.offload import input_device
from .blockwise import collect_block_statistics, prune_block_linears, read_block_weights, write_block_weights
from .config import PruningConfig
from .methods import PruningMethod
from .report import ModuleResult


@dataclass
class InFlightResult:
    """One candidate after the pass: its selection loss (mean next-token cross-entropy, nats/token) and each
    selection sequence's mean loss (nats/token, [n] in the split's order), the module results of its pruning, and
    (``keep_weights``) its pruned linear weights per block ({module name: [out, in]})."""

    ratios: list[float]
    loss: float = float("nan")
    tokens: int = 0
    sequence_losses: list[float] = field(default_factory=list)
    modules: list[ModuleResult] = field(default_factory=list)
    weights: list[dict[str, torch.Tensor]] | None = None


def _runner(model: nn.Module, ids: torch.Tensor, blocks: TransformerBlocks, config: PruningConfig) -> BlockSequentialRunner:
    dtype = getattr(torch, config.activation_dtype) if config.activation_dtype else None
    return BlockSequentialRunner(model, ids, batch_size=config.batch_size, blocks=blocks, progress=False,
                                 activation_device=config.activation_device, activation_dtype=dtype)


@torch.no_grad()
def prune_in_flight(model: nn.Module, blocks: TransformerBlocks, method: PruningMethod, config: PruningConfig,
                    ratio_sets: list[list[float]], calibration_ids: torch.Tensor | None, selection_ids: torch.Tensor,
                    keep_weights: bool = False, progress: bool = True, desc: str = "candidates") -> list[InFlightResult]:
    """Prune ``model`` for each ratio vector in ``ratio_sets`` (one ratio per block) and score it on ``selection_ids``.

    The model's weights are the dense ones again afterwards. ``calibration_ids`` [nsamples, seqlen] feed the
    method's statistics (None for a method without calibration); ``selection_ids`` [n, seqlen] are only scored.
    """
    if any(len(r) != len(blocks) for r in ratio_sets):
        raise ValueError(f"every candidate needs {len(blocks)} ratios (one per block).")
    needs_calibration = method.needs_calibration
    if needs_calibration and calibration_ids is None:
        raise ValueError(f"method {method.name!r} needs calibration token ids.")
    results = [InFlightResult(list(map(float, r)), weights=[] if keep_weights else None) for r in ratio_sets]
    selection_runner = _runner(model, selection_ids, blocks, config)
    calibration_runner = _runner(model, calibration_ids, blocks, config) if needs_calibration else None
    was_training = model.training
    model.eval()
    # candidates with the same ratios on every block so far share their inputs: prefix of ratios -> inputs
    first = (calibration_runner.capture_first_block_inputs() if needs_calibration else None,
             selection_runner.capture_first_block_inputs())
    groups: dict[tuple[float, ...], tuple] = {(): first}
    last = len(blocks) - 1
    bar = tqdm(total=len(blocks) * len(ratio_sets), desc=desc, disable=not progress)
    try:
        for index, block in enumerate(blocks.modules):
            dense = read_block_weights(block)
            next_groups: dict[tuple[float, ...], tuple] = {}
            for prefix, (calibration, selection) in groups.items():
                members = [c for c, r in enumerate(results) if tuple(r.ratios[:index]) == prefix]
                stats = collect_block_statistics(
                    block, method, config, lambda b=block, x=calibration: calibration_runner.run_block(b, x))
                for ratio in dict.fromkeys(results[c].ratios[index] for c in members):
                    modules = prune_block_linears(block, index, blocks.names[index], ratio, method, config, stats)
                    pruned = read_block_weights(block, "cpu") if keep_weights else None
                    next_calibration = (calibration_runner.forward_block(block, calibration)
                                        if needs_calibration and index < last else None)
                    next_groups[prefix + (ratio,)] = (next_calibration, selection_runner.forward_block(block, selection))
                    write_block_weights(block, dense)
                    for c in members:
                        if results[c].ratios[index] == ratio:
                            results[c].modules.extend(modules)
                            if keep_weights:
                                results[c].weights.append(pruned)
                            bar.update(1)
                del stats
            groups = next_groups
        for prefix, (_, selection) in groups.items():
            loss, tokens, per_sequence = head_loss(model, blocks, selection, selection_ids, config.batch_size,
                                                   selection_runner.returns_tuple)
            for r in results:
                if tuple(r.ratios) == prefix:
                    r.loss, r.tokens, r.sequence_losses = loss, tokens, per_sequence
    finally:
        bar.close()
        model.train(was_training)
    return results


@contextlib.contextmanager
def _replay_blocks(blocks: TransformerBlocks, hidden: torch.Tensor, returns_tuple: bool):
    """Within the context, block 0 returns ``hidden`` and every other block returns its input unchanged, so the
    model's forward runs only its embedding and its head (final norm, output projection) around stored outputs."""

    def make(replacement: torch.Tensor | None):
        def forward(*args, **kwargs):
            out = replacement if replacement is not None else (args[0] if args else kwargs["hidden_states"])
            if replacement is not None:
                reference = args[0] if args else kwargs["hidden_states"]
                out = out.to(reference.device, reference.dtype)
            return (out,) if returns_tuple else out

        return forward

    saved = [block.__dict__.get("forward") for block in blocks.modules]
    try:
        for i, block in enumerate(blocks.modules):
            block.forward = make(hidden if i == 0 else None)  # an instance attribute: hooks' wrappers included
        yield
    finally:
        for block, previous in zip(blocks.modules, saved):
            if previous is None:
                del block.forward
            else:
                block.forward = previous


def head_loss(model: nn.Module, blocks: TransformerBlocks, final_inputs: list[tuple[tuple, dict]], ids: torch.Tensor,
              batch_size: int, returns_tuple: bool) -> tuple[float, int, list[float]]:
    """Mean next-token cross-entropy (nats/token) of ``model``'s head on the last block's stored outputs for the
    token ids ``ids`` [n, seqlen] (batched as the outputs were), the number of predicted tokens, and each sequence's
    mean (nats/token, [n]; every sequence has seqlen − 1 targets, so the overall mean is their mean)."""
    total = torch.zeros((), dtype=torch.float64)
    count = 0
    per_sequence: list[float] = []
    device = input_device(model)
    for (args, _), start in zip(final_inputs, range(0, ids.shape[0], batch_size)):
        batch = ids[start:start + batch_size].to(device)
        with _replay_blocks(blocks, args[0], returns_tuple):
            logits = model(input_ids=batch, use_cache=False).logits
        targets = batch[:, 1:].to(logits.device)
        token_losses = torch.nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets,
                                                         reduction="none").double().cpu()  # [b, seqlen - 1]
        total += token_losses.sum()
        count += targets.numel()
        per_sequence.extend(token_losses.mean(1).tolist())
    return float(total / count), count, per_sequence


@torch.no_grad()
def model_loss(model: nn.Module, ids: torch.Tensor, batch_size: int = 1) -> float:
    """Mean next-token cross-entropy (nats/token) of ``model`` on token ids [n, seqlen] with a plain forward (the
    reference the in-flight objective is checked against)."""
    total = torch.zeros((), dtype=torch.float64)
    count = 0
    device = input_device(model)
    was_training = model.training
    model.eval()
    for start in range(0, ids.shape[0], batch_size):
        batch = ids[start:start + batch_size].to(device)
        logits = model(input_ids=batch, use_cache=False).logits
        targets = batch[:, 1:].to(logits.device)
        total += torch.nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                                                   targets.reshape(-1), reduction="sum").double().cpu()
        count += targets.numel()
    model.train(was_training)
    return float(total / count)


__all__ = ["InFlightResult", "head_loss", "model_loss", "prune_in_flight"]
