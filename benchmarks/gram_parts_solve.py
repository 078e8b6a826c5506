"""The Gram route's solve with validation parts: the full a and every part's a_p in one call (K factorised once)
against one call per right-hand side (the route before multi-column solves). Not a test.

Synthetic Gram statistics of the given shape (K = G Gᵀ of random G, positive definite), so only the solve is timed;
both ways run in the same process, alternating, and the ratio is per pair.

    OMP_NUM_THREADS=1 python benchmarks/gram_parts_solve.py --estimator exact --groups 30 --n 1024 --parts 8
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from hf_layerif.influence.arguments import InfluenceArguments
from hf_layerif.influence.estimators import estimate_influence


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--estimator", default="exact", choices=["exact", "lissa", "datainf"])
    parser.add_argument("--groups", type=int, default=30)
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--d", type=int, default=256, help="columns of the random G behind K")
    parser.add_argument("--parts", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    gen = torch.Generator().manual_seed(0)
    G = torch.randn(args.groups, args.n, args.d, generator=gen, dtype=torch.float64)
    K = G @ G.transpose(1, 2)
    columns = torch.randn(args.groups, args.n, args.parts + 1, generator=gen, dtype=torch.float64)
    dims = torch.full((args.groups,), args.d)
    group_to_block = torch.arange(args.groups)
    options = InfluenceArguments(estimator=args.estimator)

    def one_call() -> torch.Tensor:
        return estimate_influence(columns, K, dims, options, group_to_block, args.groups)[0]

    def per_column() -> torch.Tensor:
        return torch.stack([estimate_influence(columns[..., r], K, dims, options, group_to_block, args.groups)[0]
                            for r in range(columns.shape[2])])

    torch.testing.assert_close(one_call(), per_column(), rtol=1e-8, atol=1e-10)
    times: dict[str, list[float]] = {"one call": [], "per column": []}
    for _ in range(args.repeats):
        for name, fn in (("one call", one_call), ("per column", per_column)):
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    ratios = [b / a for a, b in zip(times["one call"], times["per column"])]
    print(f"{args.estimator}: {args.groups} groups, n {args.n}, {args.parts} parts + the full a; "
          f"one call {statistics.median(times['one call']):.2f} s, one call per column "
          f"{statistics.median(times['per column']):.2f} s; per column / one call {statistics.median(ratios):.2f} "
          f"[{min(ratios):.2f}, {max(ratios):.2f}] over {args.repeats} pairs")


if __name__ == "__main__":
    main()
