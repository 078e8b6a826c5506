"""The influence run: one validation pass for v_l, one training pass for the statistics, the estimator.

:class:`InfluenceEngine` works on any iterables of collated batches, so the same code serves
:func:`hf_layerif.compute_layer_influence` (its own sequential loaders) and
:class:`hf_layerif.LayerInfluenceTrainer` (the Trainer's prepared, per-process sharded loaders).

Two routes (METHOD §2.1): DataInf and TracIn stream a = G v and ‖g‖² in O(n·d) (``streaming.py``); the other
estimators accumulate K = G Gᵀ (``gram.py``). With an ``accelerate.Accelerator`` of P processes, the streaming
route keeps on each process only its own samples' gradients (the per-sample statistics are gathered in dataset
order, w and G w are summed over the processes); the Gram route gathers every gradient and splits the K blocks
P ways. Either way the scores equal a one-process run.

Memory, per block l with d_l tracked parameters (or projected dimensions), n training samples, G groups: one
batch of per-sample gradients (batch_size × Σ_l d_l), the stored gradients (DataInf: n/P × Σ_l d_l; ≤
``gradient_memory_gb`` on the compute device, the rest spills to disk; TracIn: none), a and ‖g‖² (2 × G × n),
and for the Gram route K on the CPU (G × n² values). :meth:`InfluenceEngine.memory_plan` states each.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn
from tqdm.auto import tqdm

from ..models.blocks import TransformerBlocks, find_transformer_blocks, model_dtype, tracked_modules
from ..models.checks import check_finite_weights, check_quantized_shapes, model_max_length
from ..models.offload import input_device
from ..utils.logging import get_logger
from .arguments import InfluenceArguments
from .capture import KroneckerProjector, PerSampleGradientCapture
from .checkpoint import (
    load_training_progress,
    load_validation_gradients,
    save_training_progress,
    save_validation_gradients,
)
from .estimators import ESTIMATORS, curvature_ratio, estimate_influence, get_estimator
from .fitting import zero_gradient_lora_a
from .gram import GramAccumulator, GroupLayout
from .streaming import StreamingStatistics
from .validation_parts import part_weights, validation_part_count

logger = get_logger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


class EngineResult(NamedTuple):
    """What :meth:`InfluenceEngine.run` returns."""

    influence: torch.Tensor  # [L, n] float64
    damping: torch.Tensor  # [groups]
    settings: dict
    losses: torch.Tensor  # [n] float64, per-sample training loss
    accumulator: StreamingStatistics | GramAccumulator
    # [P, L, n] float64: the influence against the mean gradient of each of the P interleaved validation parts
    # (``validation_split_half`` / ``validation_parts``; None when off or with one validation sample)
    influence_parts: torch.Tensor | None = None
    validation_part_weights: list[float] | None = None  # [P] m_p / m


class InfluenceEngine:
    """Per-block influence of training samples on the mean validation loss (METHOD §1–3).

    Args:
        model: a ``PreTrainedModel`` or ``PeftModel`` (dispatched / offloaded models are fine).
        args: :class:`InfluenceArguments`.
        accelerator: optional ``accelerate.Accelerator`` whose loaders are sharded per process.
        autocast: optional context-manager factory wrapped around each forward (the Trainer's precision).
        progress: show tqdm progress bars (main process only).
        skip_zero_gradients: do not form or store gradients known to be exactly zero (the A matrices of a LoRA
            adapter whose B is zero); results are unchanged, memory and Gram FLOPs halve for a fresh adapter.
    """

    def __init__(self, model: nn.Module, args: InfluenceArguments, accelerator=None,
                 autocast: Callable[[], contextlib.AbstractContextManager] | None = None, progress: bool = True,
                 skip_zero_gradients: bool = True):
        self.model = model
        self.args = args
        self.accelerator = accelerator
        self.autocast = autocast or contextlib.nullcontext
        self.is_main = accelerator is None or accelerator.is_main_process
        self.progress = progress and self.is_main
        check_finite_weights(model, "the model to score")
        check_quantized_shapes(model)
        self.max_positions = model_max_length(model)
        self.blocks: TransformerBlocks = find_transformer_blocks(model, args.block_pattern)
        self.tracked = tracked_modules(self.blocks, args.target, args.adapter_name)
        base_dtype = model_dtype(model)
        if args.gradient_dtype == "auto":
            self.compute_dtype = torch.float64 if base_dtype == torch.float64 else torch.float32
            self.store_dtype = self.compute_dtype
        else:
            self.store_dtype = _DTYPES[args.gradient_dtype]
            self.compute_dtype = torch.float64 if self.store_dtype == torch.float64 else torch.float32
        self.skip_zero_gradients = skip_zero_gradients
        self._finite_flags: list[torch.Tensor] = []
        self.projector = KroneckerProjector(args.projection_dim, args.projection_seed) if args.projection_dim else None
        self.configure_capture()

    def configure_capture(self) -> None:
        """Choose the gradients to form from the adapter's current weights (call again after the weights change,
        e.g. after fitting a fresh adapter, whose A gradients are then no longer zero)."""
        args = self.args
        captured = self.tracked
        counts = None
        if self.skip_zero_gradients and args.target == "lora" and args.granularity == "block" and self.projector is None:
            # With B = 0 (a fresh adapter) the gradient of A is exactly zero: δ at A's output is scaling · Bᵀ δ_out.
            # Those columns add nothing to a or K; only their parameter count enters the damping, so they are
            # counted but neither formed nor stored (half of the memory and Gram FLOPs of a fresh adapter).
            captured = [[m for m in modules if not zero_gradient_lora_a(m, modules)] for modules in self.tracked]
            counts = [sum(m.numel for m in modules) for modules in self.tracked]
        self.capture = PerSampleGradientCapture(self.model, captured, self.compute_dtype, self.projector,
                                                args.loss_reduction)
        self.layout = GroupLayout(self.capture.block_bounds(args.granularity), counts)

    # --- sizes and checks ---------------------------------------------------------------------------------
    @property
    def dims_per_block(self) -> list[int]:
        return self.layout.block_dims()

    @property
    def streaming(self) -> bool:
        """Whether the estimator runs in O(n·d) from streamed statistics (no n×n Gram matrix)."""
        return ESTIMATORS[self.args.estimator].streaming

    def memory_plan(self, num_train: int) -> dict[str, float]:
        """Bytes of every buffer of the run for the chosen estimator, planned before any work.

        ``batch_gradients`` (compute device): one batch of per-sample gradients of all processes.
        ``stored_gradients`` (compute device up to ``gradient_memory_gb``, then disk): all per-sample gradients,
        kept by DataInf and the Gram estimators; TracIn keeps none.
        ``statistics`` (compute device): a, ‖g‖² and a_p of each validation part (at most ``validation_parts``),
        (2 + P) × groups × n values.
        ``gram`` (CPU, Gram estimators only): K (groups × n², compute dtype), its copy in ``solve_dtype`` (none
        when the two agree) and the solve's workspace.
        ``spill_traffic`` (disk reads): spilled gradients read back: twice for DataInf, twice more with the
        validation parts; for the Gram route each window is read once per later window.
        """
        total_dim = sum(self.dims_per_block)
        compute = float(torch.empty(0, dtype=self.compute_dtype).element_size())
        store = float(torch.empty(0, dtype=self.store_dtype).element_size())
        procs = 1 if self.accelerator is None else self.accelerator.num_processes
        groups = self.layout.num_groups
        stored = num_train * total_dim * store if ESTIMATORS[self.args.estimator].stores_gradients else 0.0
        if self.streaming and procs > 1:
            stored /= procs  # each process keeps only its own samples' gradients
        budget = self.args.gradient_memory_gb * 2**30
        parts = self.args.validation_parts if self.args.validation_split_half else 0
        plan = {"batch_gradients": self.args.batch_size * procs * total_dim * compute,
                "stored_gradients": stored, "statistics": (2 + parts) * groups * num_train * compute}
        if self.streaming:
            plan["spill_traffic"] = (4 if parts else 2) * stored if stored > budget else 0.0
        else:
            solve = 8.0 if self.args.solve_dtype == "float64" else 4.0
            # K as formed, its copy in the solve dtype (none when the dtypes agree) and the solve's workspace
            plan["gram"] = groups * num_train**2 * (compute + (solve if solve != compute else 0.0) + solve)
            windows = max(1.0, stored / budget)
            plan["spill_traffic"] = stored * (windows - 1) / 2 if stored > budget else 0.0
        return plan

    def check_memory(self, num_train: int, spill_dir: Path | None = None) -> dict[str, float]:
        """Fail before any work, with the numbers and the option that fixes it, when a buffer of
        :meth:`memory_plan` cannot fit: the batch in ``gradient_memory_gb``, K in the machine's memory, the
        spilled gradients on the spill folder's disk."""
        plan = self.memory_plan(num_train)
        gib = 2**30
        budget = self.args.gradient_memory_gb * gib
        if plan["batch_gradients"] > budget:
            raise MemoryError(
                f"One batch of per-sample gradients needs {plan['batch_gradients'] / gib:.2f} GB, more than "
                f"gradient_memory_gb={self.args.gradient_memory_gb}. Lower batch_size"
                + (", or set projection_dim= (e.g. 64) for target='full'." if self.args.target == "full" else ".")
            )
        memory = _physical_memory_bytes()
        if "gram" in plan and memory is not None and plan["gram"] > 0.8 * memory:
            raise MemoryError(
                f"estimator={self.args.estimator!r} needs the n×n Gram matrix: {plan['gram'] / gib:.1f} GB for "
                f"n={num_train} ({self.layout.num_groups} groups), more than this machine's {memory / gib:.1f} GB. Use "
                "estimator='datainf' or 'tracin' (O(n·d), no Gram matrix), solve_dtype='float32' (a third of the memory), "
                "granularity='block', or fewer samples."
            )
        spilled = plan["stored_gradients"] - budget
        if spilled > 0 and spill_dir is not None:
            free = shutil.disk_usage(_existing_parent(spill_dir)).free
            if spilled > free:
                raise MemoryError(
                    f"{spilled / gib:.1f} GB of per-sample gradients would spill to {spill_dir}, which has "
                    f"{free / gib:.1f} GB free. Pass cache_dir= on a larger disk, raise gradient_memory_gb, use "
                    "gradient_dtype='bfloat16'"
                    + (", projection_dim= (target='full')" if self.args.target == "full" else "")
                    + ", or estimator='tracin' (stores no gradients)."
                )
        return plan

    def _gather(self, tensors):
        if self.accelerator is None or self.accelerator.num_processes == 1:
            return tensors
        return self.accelerator.gather_for_metrics(tensors)

    def _to_device(self, batch: dict) -> dict:
        device = input_device(self.model) if self.accelerator is None else self.accelerator.device
        return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}

    def _batch_grads(self, batch: dict, offset: int, gather: bool = True) -> tuple[list[torch.Tensor], torch.Tensor]:
        ids = batch.get("input_ids")
        if self.max_positions is not None and ids is not None and ids.shape[-1] > self.max_positions:
            raise ValueError(f"a batch at sample {offset} has {ids.shape[-1]} tokens, more than the model's context of "
                             f"{self.max_positions} positions. Truncate the samples (max_length=, or the tokenizer's "
                             "truncation=True with max_length) before scoring.")
        labels = batch.get("labels")
        if labels is not None and labels.dim() == 2:
            counts = (labels[:, 1:] != -100).sum(1)
            if bool((counts == 0).any()):
                bad = [offset + int(i) for i in torch.nonzero(counts == 0).flatten()]
                raise ValueError(f"training/validation samples {bad} have no label tokens after the next-token shift; drop them or label at least one token after the first.")
        with self.autocast():
            grads, losses = self.capture.compute(self._to_device(batch))
        device = grads[0].device
        grads = [g.to(device) for g in grads]
        if not gather:
            return grads, losses.to(device)
        grads, losses = self._gather((grads, losses.to(device)))
        self._finite_flags.append(_finite_rows(grads))
        return grads, losses

    def _sharded_batch(self, batch: dict, acc: StreamingStatistics) -> torch.Tensor:
        """One training step of a multi-process streaming run: this process keeps only its own samples' gradients;
        the per-sample statistics (a, ‖g‖², loss, finite flag) are gathered from every process in dataset order.
        Returns the step's gathered losses."""
        start = acc.rows_done
        grads, losses = self._batch_grads(batch, start, gather=False)
        stats = acc.local_statistics(grads)
        local = grads[0].shape[0]
        sizes = self.accelerator.gather(torch.tensor([local], device=stats.device))
        gathered_stats, gathered_losses, flags = self._gather((stats, losses, _finite_rows(grads)))
        # row j of process p is sample start + (sizes of processes < p) + j; rows past the gathered count are the
        # duplicates that even batches add at the end of the data, dropped here as gather_for_metrics drops them
        first = start + int(sizes[: self.accelerator.process_index].sum())
        indices = torch.arange(first, first + local, device=stats.device)
        keep = indices < start + gathered_stats.shape[0]
        acc.add_statistics(gathered_stats)
        acc.store([g[keep] for g in grads], indices[keep])
        self._finite_flags.append(flags)
        return gathered_losses

    def _check_finite(self, what: str) -> None:
        """Raise for samples whose per-sample gradients held NaN/inf in the pass that just ended."""
        flags, self._finite_flags = self._finite_flags, []
        if not flags:
            return
        finite = torch.cat(flags)
        if not bool(finite.all()):
            rows = torch.nonzero(~finite).flatten().tolist()
            raise FloatingPointError(
                f"Non-finite per-sample gradients for {what} samples {rows[:10]}{' ...' if len(rows) > 10 else ''}. The "
                "weights were checked before the run, so the forward overflowed on those samples: score in bf16 or "
                "fp32 rather than fp16, or check those samples."
            )

    # --- passes ---------------------------------------------------------------------------------------------
    def mean_gradient(self, loader: Iterable[dict], num_samples: int) -> list[torch.Tensor]:
        """v_l = (1/m) Σ_k ∇_{θ_l} ℓ(v_k): mean validation gradient of each block, [d_l] each."""
        return self.validation_gradients(loader, num_samples)[0]

    def validation_gradients(self, loader: Iterable[dict], num_samples: int
                             ) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
        """The validation pass: (v, v_parts). v_l = (1/m) Σ_k ∇_{θ_l} ℓ(v_k) is the mean validation gradient of each
        block, [d_l] each; v_parts holds, per block, the mean gradient of each of the P interleaved parts of the
        validation samples (sample k, in dataset order, in part k mod P), [P, d_l] each, or None when the parts are
        off or m < 2. The stability report compares halves made of them (influence is linear in v; METHOD §9)."""
        parts = self.validation_part_count(num_samples)
        sums: list[torch.Tensor] | None = None
        part_sums: list[torch.Tensor] | None = None
        seen = 0
        with self.capture:
            for batch in tqdm(loader, desc="validation gradients", disable=not self.progress, leave=False):
                grads, _ = self._batch_grads(batch, seen)
                rows = grads[0].shape[0]
                block_sums = [g.sum(0) for g in grads]
                sums = block_sums if sums is None else [s + b for s, b in zip(sums, block_sums)]
                if parts:
                    if part_sums is None:
                        part_sums = [g.new_zeros(parts, g.shape[1]) for g in grads]
                    part_of_row = torch.arange(seen, seen + rows, device=grads[0].device) % parts
                    for total, g in zip(part_sums, grads):
                        total.index_add_(0, part_of_row, g)
                seen += rows
        if sums is None or seen == 0:
            raise ValueError("the validation dataset is empty.")
        self._check_finite("validation")
        if seen != num_samples:
            raise RuntimeError(f"expected {num_samples} validation samples, the loader gave {seen}")
        v_parts = None
        if part_sums is not None:
            sizes = torch.tensor([len(range(p, seen, parts)) for p in range(parts)], dtype=part_sums[0].dtype,
                                 device=part_sums[0].device)
            v_parts = [total / sizes[:, None] for total in part_sums]
        return [s / seen for s in sums], v_parts

    def validation_part_count(self, num_samples: int) -> int:
        """P, the number of validation parts this run forms for ``num_samples`` validation samples (0: none)."""
        if not self.args.validation_split_half:
            return 0
        return validation_part_count(num_samples, self.args.validation_parts)

    def training_statistics(self, loader: Iterable[dict], num_samples: int, v: list[torch.Tensor],
                            spill_dir: Path | None = None, resume_key: dict | None = None, streaming: bool | None = None,
                            v_parts: list[torch.Tensor] | None = None):
        """The training pass: (accumulator, per-sample losses [n]). The accumulator is a
        :class:`StreamingStatistics` (DataInf, TracIn: O(n·d)) or a :class:`GramAccumulator` (K for the others);
        with ``v_parts`` it also forms a_p = G v_p for each validation part.

        With ``spill_dir`` and ``resume_key``, the state is saved every ``checkpoint_every`` steps and at the
        end of the pass; a later call with the same key resumes after the last saved step.
        """
        budget = int(self.args.gradient_memory_gb * 2**30)
        if self.streaming if streaming is None else streaming:
            keep = ESTIMATORS[self.args.estimator].stores_gradients
            acc = StreamingStatistics(self.layout, v, num_samples, self.compute_dtype, budget, spill_dir,
                                      self.store_dtype, keep_gradients=keep, validation_parts=v_parts)
            route = ("stored gradients read twice" + (f", spilled to {spill_dir} beyond the budget" if spill_dir else "")
                     if keep else "no gradients stored")
            logger.info("%s in O(n·d): %s.", self.args.estimator, route)
        else:
            shard = (0, 1) if self.accelerator is None else (self.accelerator.process_index, self.accelerator.num_processes)
            acc = GramAccumulator(self.layout, v, num_samples, self.compute_dtype, budget, spill_dir, self.store_dtype, shard,
                                  validation_parts=v_parts)
        sharded = (isinstance(acc, StreamingStatistics) and self.accelerator is not None
                   and self.accelerator.num_processes > 1)
        if sharded:  # each process keeps only its own samples' gradients; w and G w are summed over processes
            acc.reduce = lambda t: self.accelerator.reduce(t, reduction="sum")
        losses = torch.zeros(num_samples, dtype=torch.float64)
        steps_done = 0
        if spill_dir is not None and resume_key is not None and acc.try_resume(resume_key):
            steps_done, losses = load_training_progress(spill_dir)
        every = self.args.checkpoint_every
        batch_losses_list: list[tuple[int, torch.Tensor]] = []
        with self.capture:
            bar = tqdm(loader, desc="training gradients", disable=not self.progress, leave=False)
            for step, batch in enumerate(bar):
                if step < steps_done:
                    continue
                start = acc.rows_done
                if sharded:
                    batch_losses = self._sharded_batch(batch, acc)
                else:
                    grads, batch_losses = self._batch_grads(batch, start)
                    acc.add(grads)
                batch_losses_list.append((start, batch_losses.detach()))
                steps_done = step + 1
                if resume_key is not None and every and steps_done % every == 0 and acc.rows_done < num_samples:
                    losses = _place_losses(losses, batch_losses_list)
                    save_training_progress(acc, resume_key, steps_done, losses)
        losses = _place_losses(losses, batch_losses_list)
        self._check_finite("training")
        if resume_key is not None and spill_dir is not None and every:
            # the pass is complete: keep it, so that a failure in a later step loses nothing
            save_training_progress(acc, resume_key, steps_done, losses)
        return acc, losses

    def estimate_streaming(self, acc: StreamingStatistics) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """A streaming estimator's result from streamed statistics: (influence [L, n] float64, damping [groups],
        settings); the estimator computes it (:meth:`InfluenceEstimator.from_statistics`)."""
        estimator = get_estimator(self.args)
        damping = acc.damping(self.args)
        ratio = curvature_ratio(acc.norms, damping)
        influence = self._per_block(estimator.from_statistics(acc, damping))
        if not estimator.uses_damping:
            damping = torch.zeros_like(damping)
        return influence, damping, {"name": self.args.estimator, "route": "streaming O(n·d)", "curvature_ratio": ratio}

    def _per_block(self, per_group: torch.Tensor) -> torch.Tensor:
        """[..., groups, n] influence summed into [..., L, n] float64, after checking it is finite."""
        if not torch.isfinite(per_group).all():
            raise FloatingPointError(f"The {self.args.estimator} estimator produced non-finite influence values; raise "
                                     "damping / damping_factor.")
        shape = (*per_group.shape[:-2], len(self.blocks), per_group.shape[-1])
        influence = torch.zeros(shape, dtype=torch.float64)
        influence.index_add_(per_group.dim() - 2, self.layout.group_to_block(), per_group.to("cpu", torch.float64))
        return influence

    def estimate_parts(self, acc: StreamingStatistics) -> torch.Tensor | None:
        """Influence [P, L, n] float64 against each validation part of a streaming run (None when ``acc`` has no
        a_parts): the same estimator and λ as the full result, with a_p in place of a, all parts in one more pair of
        reads of the stored gradients. (The Gram route scores them in :meth:`estimate`'s solve.)"""
        if acc.a_parts is None:
            return None
        return self._per_block(get_estimator(self.args).from_statistics(acc.for_validation_parts(),
                                                                         acc.damping(self.args)))

    def estimate(self, a: torch.Tensor, K: torch.Tensor, a_parts: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, dict, torch.Tensor | None]:
        """Apply the configured estimator to a [groups, n] and, when given, every validation part's a_p
        (``a_parts`` [P, groups, n]) in the same solve (K factorised once): (influence [L, n] float64, damping
        [groups], settings, part influence [P, L, n] float64 or None)."""
        device = input_device(self.model) if self.accelerator is None else self.accelerator.device
        columns = a if a_parts is None else torch.cat([a.unsqueeze(0), a_parts.to(a.dtype)]).permute(1, 2, 0)
        influence, damping, settings = estimate_influence(columns, K, self.layout.dims(), self.args,
                                                          self.layout.group_to_block(), len(self.blocks),
                                                          device=device)
        if a_parts is None:
            return influence, damping, settings, None
        return influence[0], damping, settings, influence[1:]

    def run(self, train_loader: Iterable[dict], eval_loader: Iterable[dict], num_train: int, num_eval: int,
            checkpoint_dir: str | os.PathLike | None = None, resume_key: dict | None = None,
            cache_dir: str | os.PathLike | None = None):
        """Both passes and the estimator: an :class:`EngineResult` (influence [L, n] float64, damping [groups],
        estimator settings, per-sample training losses [n], and the accumulator whose checkpoint files
        :func:`~hf_layerif.influence.checkpoint.remove_checkpoint_files` deletes once the result is saved)."""
        spill_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        plan = self.check_memory(num_train, spill_dir or Path(cache_dir or tempfile.gettempdir()))
        budget = self.args.gradient_memory_gb * 2**30
        if spill_dir is not None and self.accelerator is not None and self.accelerator.num_processes > 1:
            # every process holds the same statistics and keeps its own spill files and state
            spill_dir = spill_dir / f"rank{self.accelerator.process_index}"
        temp = None
        if spill_dir is None and plan.get("stored_gradients", 0) > budget:
            temp = tempfile.TemporaryDirectory(prefix="layerif-gradients-", dir=cache_dir)
            spill_dir = Path(temp.name)
            logger.info("Per-sample gradients (%.2f GB) exceed gradient_memory_gb; spilling to %s.",
                        plan["stored_gradients"] / 2**30, spill_dir)
        try:
            checkpointing = spill_dir is not None and resume_key is not None
            saved = load_validation_gradients(spill_dir, resume_key, len(self.blocks)) if checkpointing else None
            parts = self.validation_part_count(num_eval)
            if saved is not None and (0 if saved[1] is None else saved[1][0].shape[0]) != parts:
                saved = None  # saved with other validation parts: the validation pass is run again
            if saved is None:
                v, v_parts = self.validation_gradients(eval_loader, num_eval)
                if checkpointing:
                    save_validation_gradients(spill_dir, resume_key, v, v_parts)
            else:
                v, v_parts = saved
            device = v[0].device
            v = [t.to(device) for t in v]
            v_parts = None if v_parts is None else [t.to(device) for t in v_parts]
            acc, losses = self.training_statistics(train_loader, num_train, v, spill_dir, resume_key, v_parts=v_parts)
            if isinstance(acc, StreamingStatistics):
                influence, damping, settings = self.estimate_streaming(acc)
                influence_parts = self.estimate_parts(acc)
            else:
                a, K = acc.finalize()
                if acc.world > 1:  # every K block was formed by exactly one process: the sum over processes is K
                    K = self.accelerator.reduce(K.to(self.accelerator.device), reduction="sum").to("cpu")
                influence, damping, settings, influence_parts = self.estimate(a, K, acc.a_parts)
        finally:
            if temp is not None:
                temp.cleanup()
        weights = part_weights(num_eval, influence_parts.shape[0]) if influence_parts is not None else None
        return EngineResult(influence, damping, settings, losses, acc, influence_parts, weights)


def _finite_rows(grads: list[torch.Tensor]) -> torch.Tensor:
    """[c] bool: whether each sample's gradients are all finite. A row sum is non-finite iff the row holds
    NaN/inf (barring float overflow), so this reads the gradients once and never syncs with the host."""
    return torch.isfinite(torch.stack([g.sum(dim=1) for g in grads]).sum(0))


def _place_losses(losses: torch.Tensor, pending: list[tuple[int, torch.Tensor]]) -> torch.Tensor:
    """Copy the per-batch losses kept on the device into the [n] CPU vector (one transfer per call)."""
    if pending:
        starts = [s for s, _ in pending]
        values = torch.cat([v.reshape(-1) for _, v in pending]).to("cpu", torch.float64)
        offset = 0
        for start, (_, v) in zip(starts, pending):
            losses[start:start + v.numel()] = values[offset:offset + v.numel()]
            offset += v.numel()
        pending.clear()
    return losses


def _physical_memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _existing_parent(path: Path) -> Path:
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
