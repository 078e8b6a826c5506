"""Settings of an influence run, as one documented dataclass saved next to every result."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

TARGETS = ("lora", "full")
GRANULARITIES = ("block", "tensor")
GRADIENT_DTYPES = ("auto", "float32", "bfloat16", "float16", "float64")
LOSS_REDUCTIONS = ("mean", "sum")
SOLVE_DTYPES = ("float64", "float32")
DEFAULT_FIT_STEPS = 100  # fit_steps=None fits a fresh scoring adapter this long (API, Trainer and CLI alike)


@dataclass
class InfluenceArguments:
    """How LayerIF influence is computed (METHOD §1–3).

    Args:
        estimator: inverse-Hessian estimator: ``"datainf"`` (default), ``"exact"``, ``"lissa"`` or ``"tracin"``.
        target: parameters that represent a block: ``"lora"`` (A and B of the LoRA adapter on the block) or
            ``"full"`` (the block's own linear weights and biases).
        granularity: ``"block"`` (one gradient vector and one damping λ per block, the paper's definition) or
            ``"tensor"`` (DataInf's own: one λ and one inverse per parameter tensor, influences summed per block).
        damping: absolute damping λ for every group; ``None`` uses ``damping_factor``.
        damping_factor: λ_l = damping_factor × mean_i ‖g_{l,i}‖² / d_l (DataInf's rule; 0.1 there).
        projection_dim: for ``target="full"``, project each linear's input and output sides to this many
            dimensions (LoGra-style Kronecker random projection; inner products preserved in expectation).
            ``None`` = exact per-sample gradients.
        projection_seed: seed of the random projection matrices.
        batch_size: samples per forward/backward pass (per process).
        max_length: truncate tokenized samples to this many tokens (``None``: no truncation).
        gradient_dtype: dtype in which per-sample gradients are formed and stored: ``"auto"`` (float64 for a
            float64 model, else float32), ``"float32"``, ``"bfloat16"``, ``"float16"``, ``"float64"``.
        solve_dtype: dtype of the Gram estimators' linear algebra (``exact``'s Cholesky solve, ``lissa``'s
            eigendecomposition, Gram-route DataInf): ``"float64"`` (default: exact to 1e-12 against a float64
            brute force; K's float64 copy costs 8 bytes per entry) or ``"float32"`` (K is used as formed, no copy:
            a third of the memory, results to about 1e-5 relative). Streaming DataInf and TracIn need no K.
        gradient_memory_gb: memory (on the compute device) for keeping per-sample gradients between passes.
            Beyond it, windows of gradients spill to ``cache_dir`` (or the output folder) as safetensors.
        checkpoint_every: with an output folder, save the accumulated state (and spill the per-sample
            gradients there) every this many batches and at the end of the training pass; re-running the same
            call resumes from the last checkpoint. 0 disables checkpointing.
        lissa_depth: LiSSA recursion depth.
        lissa_scale: LiSSA scale s (must exceed the largest eigenvalue of H + λI); ``None``: chosen safely.
        lissa_batch_size: samples per LiSSA step; ``None`` uses all samples (deterministic, computed in closed
            form in the eigenbasis of the Gram matrix).
        lissa_repeats: independent LiSSA runs averaged (stochastic mode only).
        seed: seed of LiSSA sampling, bootstrap resampling and repeated adapter initialisations.
        aggregation: default block score: ``"positive"``, ``"all"``, ``"top_fraction"`` or ``"harmful"``.
        fraction: the fraction for ``"top_fraction"``.
        bootstrap_samples: bootstrap resamples of training samples for ranking stability (0 disables).
        validation_split_half: also compute the influence against each of ``validation_parts`` interleaved parts of
            the validation samples (the influence is linear in the mean validation gradient, so any half made of
            parts follows), from which the stability report measures how much a new validation sample moves the
            ranking (METHOD §9). Costs P more products per training chunk and, for DataInf, one more pair of reads
            of the stored gradients (exact, LiSSA: the parts are extra right-hand sides of the same solve, K
            factorised once).
        validation_parts: P, the number of parts (even; sample k goes to part k mod P; fewer when there are fewer
            validation samples). The report averages the agreement of the two halves over every balanced split of
            the parts (P = 8: 35 splits), which one split on few blocks estimates poorly.
        repeats: number of adapter draws to score and average (``target="lora"``). Draw r > 0 re-initialises the
            adapter (A from a seed derived from ``seed`` and r, B = 0) and, with ``fit_steps``, fits it again. Each
            draw's influence is divided by its mean |I| before averaging, so every draw weighs the same. ``None``
            (default): 3 for a fresh adapter or one fitted here, 1 for an adapter trained before the call.
        fit_steps: fit the (fresh) scoring adapter on the training samples for this many AdamW steps before
            scoring, the setting LayerIF and DataInf assume (METHOD §1). ``None`` (default, the same in the API, the
            Trainer and the CLI): :data:`DEFAULT_FIT_STEPS` for a fresh LoRA adapter, 0 for an adapter trained
            before the call; 0 scores the adapter as given.
        fit_learning_rate: peak learning rate of that fit (linear warm-up over 10% of the steps, linear decay).
        fit_batch_size: samples per fitting step (``None``: ``batch_size``).
        block_pattern: regex over module names that selects the blocks (overrides discovery).
        adapter_name: the PEFT adapter to track for ``target="lora"``.
    """

    estimator: str = field(default="datainf", metadata={"help": "Registered estimator: datainf, exact, lissa, tracin "
                                                               "(hf_layerif.influence.estimators.ESTIMATORS)."})
    target: str = field(default="lora", metadata={"help": f"One of {TARGETS}."})
    granularity: str = field(default="block", metadata={"help": f"One of {GRANULARITIES}."})
    damping: float | None = field(default=None, metadata={"help": "Absolute damping λ (overrides damping_factor)."})
    damping_factor: float = field(default=0.1, metadata={"help": "λ_l = factor × mean squared gradient entry of the group."})
    projection_dim: int | None = field(default=None, metadata={"help": "Kronecker random projection size per side (target=full)."})
    projection_seed: int = field(default=0, metadata={"help": "Seed of the projection matrices."})
    batch_size: int = field(default=8, metadata={"help": "Samples per forward/backward pass."})
    max_length: int | None = field(default=None, metadata={"help": "Truncate samples to this many tokens."})
    loss_reduction: str = field(default="mean", metadata={"help": "A sample's loss from its token losses: mean "
                                "(per-token mean, as model(...).loss) or sum (the sample's negative log-likelihood)."})
    gradient_dtype: str = field(default="auto", metadata={"help": f"One of {GRADIENT_DTYPES}."})
    solve_dtype: str = field(default="float64", metadata={"help": f"One of {SOLVE_DTYPES}: dtype of the Gram estimators' solves."})
    gradient_memory_gb: float = field(default=4.0, metadata={"help": "Device memory for cached per-sample gradients (GB)."})
    checkpoint_every: int = field(default=50, metadata={"help": "Checkpoint every N batches when writing to an output folder (0: never)."})
    lissa_depth: int = field(default=1000, metadata={"help": "LiSSA recursion depth."})
    lissa_scale: float | None = field(default=None, metadata={"help": "LiSSA scale (auto when unset)."})
    lissa_batch_size: int | None = field(default=None, metadata={"help": "Samples per LiSSA step (all when unset)."})
    lissa_repeats: int = field(default=1, metadata={"help": "Independent LiSSA runs to average (stochastic mode)."})
    seed: int = field(default=0, metadata={"help": "Seed for LiSSA, bootstrap and repeats."})
    aggregation: str = field(default="positive", metadata={"help": "Registered block-score aggregation: positive, all, "
                                                                  "top_fraction, harmful (hf_layerif.influence.scores.AGGREGATIONS)."})
    fraction: float = field(default=0.25, metadata={"help": "Fraction used by aggregation=top_fraction."})
    bootstrap_samples: int = field(default=200, metadata={"help": "Bootstrap resamples for ranking stability (0: off)."})
    validation_split_half: bool = field(default=True, metadata={"help": "Also score against halves of the validation "
                                        "samples (made of validation_parts parts), so the stability report sees the noise of a "
                                        "new validation sample (DataInf: two more reads of the stored gradients; exact, LiSSA: "
                                        "more right-hand sides of the same solve)."})
    validation_parts: int = field(default=8, metadata={"help": "Interleaved parts of the validation samples (even); the "
                                  "report averages the halves' agreement over every balanced split of them (8: 35 splits)."})
    repeats: int | None = field(default=None, metadata={"help": "Adapter draws scored and averaged (default: 3 for a fresh or fitted adapter, 1 for a trained one)."})
    fit_steps: int | None = field(default=None, metadata={"help": "AdamW steps fitting the fresh scoring adapter to the training samples before scoring (default: 100 for a fresh adapter, 0 for a trained one; 0: score it as given)."})
    fit_learning_rate: float = field(default=1e-3, metadata={"help": "Peak learning rate of the adapter fit."})
    fit_batch_size: int | None = field(default=None, metadata={"help": "Samples per fitting step (default: batch_size)."})
    block_pattern: str | None = field(default=None, metadata={"help": "Regex selecting the blocks by module name."})
    adapter_name: str = field(default="default", metadata={"help": "PEFT adapter tracked for target=lora."})

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the fix for any inconsistent setting (cheap; runs before any work)."""
        from .estimators import ESTIMATORS
        from .scores import AGGREGATIONS

        def check(name: str, allowed) -> None:
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"{name}={value!r} is not supported; choose one of {tuple(allowed)}.")

        check("estimator", ESTIMATORS)
        check("target", TARGETS)
        check("granularity", GRANULARITIES)
        check("gradient_dtype", GRADIENT_DTYPES)
        check("loss_reduction", LOSS_REDUCTIONS)
        check("aggregation", AGGREGATIONS)
        if self.damping is not None and not self.damping > 0:
            raise ValueError(f"damping must be > 0 (got {self.damping}); leave it unset to use damping_factor.")
        if self.solve_dtype not in SOLVE_DTYPES:
            raise ValueError(f"solve_dtype must be one of {SOLVE_DTYPES}, got {self.solve_dtype!r}.")
        if not self.damping_factor > 0:
            raise ValueError(f"damping_factor must be > 0 (got {self.damping_factor}).")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (got {self.batch_size}).")
        if self.projection_dim is not None and self.projection_dim < 1:
            raise ValueError("projection_dim must be a positive integer, or None for exact gradients.")
        if self.projection_dim is not None and self.target != "full":
            raise ValueError("projection_dim applies to target='full' only (LoRA gradients are already small).")
        if not 0 < self.fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1] (got {self.fraction}).")
        if self.repeats is not None and self.repeats < 1:
            raise ValueError("repeats must be >= 1 (or None for the default).")
        if self.repeats is not None and self.repeats > 1 and self.target != "lora":
            raise ValueError("repeats > 1 re-draws a LoRA adapter's initialisation: it needs target='lora'.")
        if self.fit_steps is not None and self.fit_steps < 0:
            raise ValueError("fit_steps must be >= 0.")
        if self.fit_steps and self.target != "lora":
            raise ValueError("fit_steps fits a LoRA adapter before scoring: it needs target='lora'.")
        if not self.fit_learning_rate > 0:
            raise ValueError("fit_learning_rate must be > 0.")
        if self.fit_batch_size is not None and self.fit_batch_size < 1:
            raise ValueError("fit_batch_size must be >= 1 or None.")
        if self.lissa_depth < 1 or self.lissa_repeats < 1:
            raise ValueError("lissa_depth and lissa_repeats must be >= 1.")
        if self.lissa_batch_size is not None and self.lissa_batch_size < 1:
            raise ValueError("lissa_batch_size must be >= 1 or None.")
        if self.lissa_scale is not None and not self.lissa_scale > 0:
            raise ValueError("lissa_scale must be > 0 or None.")
        if self.gradient_memory_gb <= 0:
            raise ValueError("gradient_memory_gb must be > 0.")
        if self.validation_parts < 2 or self.validation_parts % 2:
            raise ValueError(f"validation_parts must be an even number >= 2 (got {self.validation_parts}); pass "
                             "validation_split_half=False to score without the validation halves.")
        if self.checkpoint_every < 0 or self.bootstrap_samples < 0:
            raise ValueError("checkpoint_every and bootstrap_samples must be >= 0.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> InfluenceArguments:
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise TypeError(f"unknown influence option(s) {sorted(unknown)}; see hf_layerif.InfluenceArguments.")
        return dataclasses.replace(self, **changes)
