"""The validation samples cut into interleaved parts, and every balanced pair of halves made of them (METHOD §9).

Influence is linear in the mean validation gradient v: with the validation samples cut into P parts (sample k in
part k mod P, so a validation set sorted by topic or length still gives alike parts) of sizes m_p and means v_p,
v = Σ_p w_p v_p with w_p = m_p / m, and the influence against any union A of parts is Σ_{p∈A} w_p I_p / Σ_{p∈A} w_p,
where I_p is the influence against v_p. The engine forms I_p beside I in the same pass; the stability report
compares the rankings of every balanced split of the parts into two halves and averages their Spearman: it
estimates the agreement of two independent half-size validation sets as one split does, with about two thirds of
one split's spread across validation sets (simulated on 5 blocks; on few blocks one split's Spearman ranges over
most of [−1, 1]).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch


def validation_part_count(num_samples: int, requested: int) -> int:
    """The number of parts P for ``num_samples`` validation samples: ``requested`` (even), or fewer when there are
    fewer samples (the largest even number ≤ m); 0 when fewer than 2 (no halves)."""
    parts = min(int(requested), num_samples - num_samples % 2)
    return parts if parts >= 2 else 0


def part_weights(num_samples: int, parts: int) -> list[float]:
    """w_p = m_p / m of the interleaved parts (sample k in part k mod P), [P] summing to 1."""
    return [len(range(p, num_samples, parts)) / num_samples for p in range(parts)]


def balanced_splits(parts: int) -> list[tuple[int, ...]]:
    """Every split of P parts into two halves of P / 2 parts, each given by the half that holds part 0:
    C(P − 1, P / 2 − 1) splits (P = 2: 1, 4: 3, 6: 10, 8: 35)."""
    if parts < 2 or parts % 2:
        raise ValueError(f"the validation parts must be an even number >= 2, got {parts}")
    return [(0, *rest) for rest in itertools.combinations(range(1, parts), parts // 2 - 1)]


def half_influences(part_influence: torch.Tensor, weights: list[float] | torch.Tensor, split: tuple[int, ...]
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """The influence [L, n] float64 against each half of ``split`` (the parts in ``split``, and the others): the
    weighted mean of its parts' influence [P, L, n]."""
    w = torch.as_tensor(weights, dtype=torch.float64)
    inside = torch.zeros(len(w), dtype=torch.bool)
    inside[list(split)] = True
    influence = part_influence.to(torch.float64)
    halves = []
    for mask in (inside, ~inside):
        weight = torch.where(mask, w, torch.zeros_like(w))
        halves.append(torch.einsum("p,pln->ln", weight / weight.sum(), influence))
    return halves[0], halves[1]


def split_block_scores(part_influence: torch.Tensor, weights: list[float] | torch.Tensor,
                       aggregate: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Block scores [S, 2, L] float64 of both halves of each of the S balanced splits of the parts
    (:func:`balanced_splits` order); ``aggregate`` maps [2, L, n] influences to [2, L] block scores. Memory: two
    [L, n] float64 matrices at a time."""
    out = []
    for split in balanced_splits(part_influence.shape[0]):
        out.append(aggregate(torch.stack(half_influences(part_influence, weights, split))).to(torch.float64))
    return torch.stack(out)
