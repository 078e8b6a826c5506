"""Inverse-Hessian estimators of block influence (METHOD §2.1), all computed from Gram statistics.

For one parameter group (a block, or one tensor of a block) with per-sample gradients G ∈ R^{n×d} (row i is
g_i) and mean validation gradient v ∈ R^d, every estimator here needs only

    a = G v      (shape [n])          and          K = G Gᵀ   (shape [n, n]),

so a single gradient pass over the training set serves all of them. Inputs are batched over groups:
``a`` is [groups, n], ``K`` is [groups, n, n] and ``damping`` is [groups]; the result is the influence
I(z_i) for every group and sample, shape [groups, n], float64. Several validation gradients against the same
training samples (the validation parts) are scored in one call: ``a`` [groups, n, R] (column r is G v_r) gives
[groups, n, R], and K is factorised once for all R columns.

Sign (Koh & Liang): I(z_i) = −vᵀ H⁻¹ g_i. Negative = up-weighting z_i lowers the validation loss (beneficial).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Protocol

import torch

from ..utils.logging import get_logger


class InfluenceArguments(Protocol):
    """What estimators read from :class:`hf_layerif.influence.arguments.InfluenceArguments` (which validates its
    ``estimator`` against :data:`ESTIMATORS`, so this module does not import it)."""

    estimator: str
    damping: float | None
    damping_factor: float
    lissa_depth: int
    lissa_scale: float | None
    lissa_batch_size: int | None
    lissa_repeats: int
    seed: int


def damping_from_gram(K_diag: torch.Tensor, dims: torch.Tensor, factor: float = 0.1, absolute: float | None = None) -> torch.Tensor:
    """DataInf's damping rule per group: λ = factor × mean_i(‖g_i‖² / d), or ``absolute`` for every group.

    Args:
        K_diag: [groups, n] squared gradient norms ‖g_i‖².
        dims: [groups] number of parameters d of each group.
    Returns:
        [groups] float64 damping values (strictly positive; a group whose gradients are all zero gets the
        smallest positive float so that the estimators stay defined, and its influences are zero).
    """
    if absolute is not None:
        return torch.full((K_diag.shape[0],), float(absolute), dtype=torch.float64)
    lam = factor * K_diag.to(torch.float64).mean(dim=1) / dims.to(torch.float64)
    return lam.clamp_min(torch.finfo(torch.float64).tiny)


def curvature_ratio(K_diag: torch.Tensor, damping: torch.Tensor) -> list[float]:
    """ρ per group: mean_i ‖g_i‖² / λ. DataInf's per-sample inverses approximate the damped inverse Hessian only
    while ρ is small; under the default rule λ = f · mean‖g‖²/d it equals d / f (it grows with the group's size)."""
    mean = K_diag.to("cpu", torch.float64).mean(dim=1)
    return (mean / damping.to("cpu", torch.float64).clamp_min(torch.finfo(torch.float64).tiny)).tolist()


logger = get_logger(__name__)

ESTIMATORS: dict[str, type[InfluenceEstimator]] = {}


def register_estimator(cls: type[InfluenceEstimator]) -> type[InfluenceEstimator]:
    """Class decorator: make ``cls`` available by its ``name`` (in ``InfluenceArguments.estimator``, the CLI's
    ``--estimator`` and :func:`get_estimator`). A new estimator is one class in one file."""
    if not cls.name or cls.name in ESTIMATORS:
        raise ValueError(f"estimator name {cls.name!r} is empty or taken")
    ESTIMATORS[cls.name] = cls
    return cls


class InfluenceEstimator(ABC):
    """Base class: ``estimator(a, K, damping) -> influence`` with the shapes of the module docstring.

    What an estimator needs from the gradient pass is declared here, and the engine plans memory and accumulates
    from the declaration alone (no estimator name in it):

    - ``streaming``: it also runs in O(n·d) from streamed statistics (a = G v, ‖g‖² and, when
      ``stores_gradients``, the stored per-sample gradients for a second read; ``influence/streaming.py``) and never
      needs K; :meth:`from_statistics` computes its result there. Otherwise it needs K = G Gᵀ (``gram.py``).
    - ``stores_gradients``: its streaming route reads the per-sample gradients again (they are kept, in memory up to
      ``gradient_memory_gb``, then on disk).
    """

    name: str = ""
    uses_damping: bool = True
    # an approximation of the damped inverse Hessian holds while every group's ρ (curvature_ratio) stays below this
    # (None: the estimator is exact for its own definition)
    regime_ratio_limit: float | None = None
    streaming: bool = False
    stores_gradients: bool = True
    dtype: torch.dtype = torch.float64  # of the solves (InfluenceArguments.solve_dtype); results are float64

    def from_statistics(self, statistics, damping: torch.Tensor) -> torch.Tensor:
        """Influence [groups, n] (float64, Koh & Liang sign) from streamed statistics (``streaming`` estimators:
        a :class:`~hf_layerif.influence.streaming.StreamingStatistics` and λ [groups])."""
        raise TypeError(f"estimator {self.name!r} has no streaming route (streaming=False): it needs K.")

    @classmethod
    def from_arguments(cls, args: InfluenceArguments) -> InfluenceEstimator:
        """The estimator configured by :class:`InfluenceArguments` (override :meth:`_from_arguments` to read its
        own options); its solve dtype is ``args.solve_dtype``."""
        estimator = cls._from_arguments(args)
        estimator.dtype = getattr(torch, args.solve_dtype)
        return estimator

    @classmethod
    def _from_arguments(cls, args: InfluenceArguments) -> InfluenceEstimator:
        return cls()

    @abstractmethod
    def __call__(self, a: torch.Tensor, K: torch.Tensor, damping: torch.Tensor) -> torch.Tensor:
        """Influence [groups, n] (float64, Koh & Liang sign) from a [groups, n], K [groups, n, n], λ [groups]; with
        a [groups, n, R] (R validation gradients), [groups, n, R], each column what a [groups, n] call on it gives."""

    def settings(self) -> dict:
        return {}


@register_estimator
class TracInEstimator(InfluenceEstimator):
    """H = I: I(z_i) = −g_iᵀ v = −a_i (the paper's Hessian-free comparison, Table 3)."""

    name = "tracin"
    uses_damping = False
    streaming = True
    stores_gradients = False

    def __call__(self, a, K, damping):
        return -a.to(torch.float64)

    def from_statistics(self, statistics, damping):
        return -statistics.a.to("cpu", torch.float64)


@register_estimator
class DataInfEstimator(InfluenceEstimator):
    """DataInf (Kwon et al., 2024): the closed-form Sherman–Morrison average.

    H⁻¹v ≈ (1/(nλ)) Σ_j [v − (g_jᵀv)/(λ + ‖g_j‖²) g_j], hence with c_j = a_j / (λ + K_jj):
    I(z_i) = −g_iᵀ H⁻¹ v = −(a_i − (K c)_i / n) / λ.
    """

    name = "datainf"
    streaming = True

    # measured (docs/FIDELITY.md): the block ranking equals exact's for ρ ≤ 0.5 on every model and seed tried (one
    # pair of blocks swaps at ρ = 1 on some), and departs from it as ρ grows (Spearman 0.3-0.7 at ρ = d / 0.1)
    regime_ratio_limit = 0.5

    def __call__(self, a, K, damping):
        columns, K = as_columns(a).to(self.dtype), K.to(self.dtype)
        lam = damping.to(K.device, self.dtype)[:, None, None]
        n = columns.shape[1]
        c = columns / (lam + torch.diagonal(K, dim1=1, dim2=2)[:, :, None])
        influence = -(columns - torch.bmm(K, c) / n) / lam
        return influence.reshape(a.shape).to(torch.float64)

    def from_statistics(self, statistics, damping):
        return statistics.datainf(damping)


@register_estimator
class ExactEstimator(InfluenceEstimator):
    """Exact damped empirical-Fisher inverse, H = (1/n) GᵀG + λI, through the n×n Gram matrix (Woodbury):

    I(z_i) = −n [(K + nλI)⁻¹ a]_i   (no d×d matrix is formed).
    """

    name = "exact"

    def __call__(self, a, K, damping):
        a, K = a.to(self.dtype), K.to(self.dtype)
        n = a.shape[1]
        system = K + (n * damping.to(K.device, self.dtype))[:, None, None] * torch.eye(n, dtype=self.dtype, device=K.device)
        del K  # the system replaces it: one n×n copy per group at a time, not two
        factor, info = torch.linalg.cholesky_ex(system)
        columns = as_columns(a)
        if bool((info != 0).any()):
            solution = torch.linalg.solve(system, columns)
        else:
            solution = torch.cholesky_solve(columns, factor)
        return (-n * solution).reshape(a.shape).to(torch.float64)


@register_estimator
class LiSSAEstimator(InfluenceEstimator):
    """LiSSA (Agarwal et al., 2017) on the damped matrix H + λI, correctly signed and scaled.

    Recursion: h_0 = v, h_t = v + (I − (H_S + λI)/s) h_{t−1}, whose fixed point is h* = s (H + λI)⁻¹ v; the
    estimate of H⁻¹v is h_T / s (DataInf's reference code omits this and converges to the wrong matrix).
    H_S = (1/|S|) Σ_{i∈S} g_i g_iᵀ over a random subset S per step (``batch_size``) or all samples.

    Everything stays in sample space: h_t = α_t v + Gᵀ β_t, so g_iᵀ h_t = α_t a_i + (K β_t)_i. With all
    samples per step (``batch_size=None``), u_t = G h_t obeys u_t = a + M u_{t−1}, M = (1 − λ/s) I − K/(s n),
    summed in closed form in the eigenbasis of K: u_T = Q diag((1 − m^{T+1}) / (1 − m)) Qᵀ a.
    """

    name = "lissa"

    @classmethod
    def _from_arguments(cls, args: InfluenceArguments) -> LiSSAEstimator:
        return cls(args.lissa_depth, args.lissa_scale, args.lissa_batch_size, args.lissa_repeats, args.seed)

    def __init__(self, depth: int = 1000, scale: float | None = None, batch_size: int | None = None, repeats: int = 1, seed: int = 0):
        self.depth = depth
        self.scale = scale
        self.batch_size = batch_size
        self.repeats = repeats
        self.seed = seed
        self.scales: list[float] = []

    def settings(self) -> dict:
        return {"depth": self.depth, "scale": self.scale, "batch_size": self.batch_size, "repeats": self.repeats,
                "seed": self.seed, "scales_used": self.scales}

    def _scale(self, K_g: torch.Tensor, lam: float, n: int, full_batch: bool) -> float:
        if self.scale is not None:
            return float(self.scale)
        if full_batch:
            top = float(torch.linalg.eigvalsh(K_g)[-1]) / n if n else 0.0
        else:  # any subset's H_S has top eigenvalue <= trace(H_S) <= max_i ||g_i||^2
            top = float(torch.diagonal(K_g).max()) if n else 0.0
        return 1.05 * (max(top, 0.0) + lam)

    def __call__(self, a, K, damping):
        columns, K = as_columns(a).to(self.dtype), K.to(self.dtype)
        groups, n = columns.shape[:2]
        out = torch.empty_like(columns)
        full_batch = self.batch_size is None or self.batch_size >= n
        self.scales = []
        for g in range(groups):
            lam = float(damping[g])
            s = self._scale(K[g], lam, n, full_batch)
            self.scales.append(s)
            if full_batch:
                out[g] = -self._closed_form(columns[g], K[g], lam, s, n) / s
            else:  # every column sees the same subsets: the generator is seeded per group, as in separate calls
                gen = torch.Generator().manual_seed(self.seed + g)
                total = torch.zeros_like(columns[g])
                for _ in range(self.repeats):
                    total += self._stochastic(columns[g], K[g], lam, s, n, gen)
                out[g] = -(total / self.repeats) / s
        return out.reshape(a.shape).to(torch.float64)

    def _closed_form(self, a, K, lam, s, n):
        mu, Q = torch.linalg.eigh(K)
        m = 1.0 - lam / s - mu / (s * n)
        T = self.depth
        one_minus = 1.0 - m
        # geometric sum; where m == 1 (only possible with lam = 0 and mu = 0) the sum is T + 1.
        safe = one_minus.abs() > 1e-300
        powered = torch.where(safe, (1.0 - m.pow(T + 1)) / torch.where(safe, one_minus, torch.ones_like(m)), torch.full_like(m, T + 1.0))
        return Q @ (powered[:, None] * (Q.T @ a))  # a [n, R]

    def _stochastic(self, a, K, lam, s, n, gen):
        bs = self.batch_size
        alpha = 1.0
        beta = torch.zeros_like(a)  # [n, R]
        keep = 1.0 - lam / s
        for _ in range(self.depth):
            idx = torch.randperm(n, generator=gen)[:bs].to(a.device)
            u = alpha * a[idx] + K[idx] @ beta
            beta = keep * beta
            beta[idx] -= u / (s * len(idx))
            alpha = 1.0 + keep * alpha
        return alpha * a + K @ beta


def as_columns(a: torch.Tensor) -> torch.Tensor:
    """a [groups, n] or [groups, n, R] as [groups, n, R] (R = 1 for the former; a view)."""
    if a.dim() not in (2, 3):
        raise ValueError(f"a must be [groups, n] or [groups, n, R]; got shape {tuple(a.shape)}.")
    return a.unsqueeze(2) if a.dim() == 2 else a


def get_estimator(name_or_args: str | InfluenceArguments, **kwargs) -> InfluenceEstimator:
    """Build an estimator from its registered name (extra keyword arguments go to its constructor) or from
    :class:`InfluenceArguments`."""
    if not isinstance(name_or_args, str):  # InfluenceArguments
        return ESTIMATORS[name_or_args.estimator].from_arguments(name_or_args)
    if name_or_args not in ESTIMATORS:
        raise ValueError(f"Unknown estimator {name_or_args!r}; choose one of {sorted(ESTIMATORS)}.")
    return ESTIMATORS[name_or_args](**kwargs)


def solve_device(K: torch.Tensor, dtype: torch.dtype, device: torch.device | None) -> torch.device:
    """Where the n³ solves run: ``device`` when it is an accelerator with room for K in ``dtype`` three times
    (K, the system, the factor), else where K is."""
    if device is None or torch.device(device).type == "cpu" or K.device == torch.device(device):
        return K.device
    needed = 3 * K.numel() * torch.empty(0, dtype=dtype).element_size()
    try:
        free = torch.cuda.mem_get_info(device)[0] if torch.device(device).type == "cuda" else needed
    except (RuntimeError, AssertionError):
        free = 0
    if needed > free:
        logger.info("The Gram solves need %.1f GB; %.1f GB free on %s: solving on %s instead.", needed / 2**30,
                    free / 2**30, device, K.device)
        return K.device
    return torch.device(device)


def estimate_influence(a: torch.Tensor, K: torch.Tensor, dims: torch.Tensor, args: InfluenceArguments,
                       group_to_block: torch.Tensor, num_blocks: int, device: torch.device | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Influence per block from Gram statistics of all groups.

    Args:
        a: [groups, n], or [groups, n, R] for R validation gradients scored in one solve; K: [groups, n, n];
            dims: [groups] parameter counts.
        group_to_block: [groups] block index of each group (one group per block for ``granularity="block"``).
        device: the compute device; the solves run there when K fits (see :func:`solve_device`), in
            ``args.solve_dtype``.
    Returns:
        (influence [num_blocks, n] float64 on the CPU ([R, num_blocks, n] for a [groups, n, R]), damping [groups]
        float64, estimator settings).
    """
    estimator = get_estimator(args)
    damping = damping_from_gram(torch.diagonal(K, dim1=1, dim2=2), dims, args.damping_factor, args.damping)
    where = solve_device(K, estimator.dtype, device)
    per_group = estimator(a.to(where), K.to(where), damping.to(where)).to("cpu", torch.float64)
    if not torch.isfinite(per_group).all():
        raise FloatingPointError(
            f"The {estimator.name} estimator produced non-finite influence values; check the gradients (NaN/inf "
            "in the model?) or raise damping / damping_factor."
        )
    per_group = as_columns(per_group).permute(2, 0, 1)  # [R, groups, n]
    influence = torch.zeros(per_group.shape[0], num_blocks, a.shape[1], dtype=torch.float64)
    influence.index_add_(1, group_to_block.to(torch.long), per_group)
    if a.dim() == 2:
        influence = influence[0]
    ratio = curvature_ratio(torch.diagonal(K, dim1=1, dim2=2), damping)
    if not estimator.uses_damping:
        damping = torch.zeros_like(damping)
    return influence, damping, {"name": estimator.name, "curvature_ratio": ratio, "solve_dtype": str(estimator.dtype).removeprefix("torch."),
                                "solve_device": where.type, **estimator.settings()}


__all__ = [
    "ESTIMATORS", "register_estimator", "InfluenceEstimator", "TracInEstimator", "DataInfEstimator", "ExactEstimator", "LiSSAEstimator",
    "get_estimator", "damping_from_gram", "estimate_influence",
]
