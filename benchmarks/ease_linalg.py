"""EASE's dense linear algebra: the ways to get P = (XᵀX + λI)⁻¹, timed on this machine.

For each catalogue size, a Gram matrix XᵀX of a random sparse binary user-item matrix (20
items per user, as many users as items, plus λ = the mean item degree on the diagonal) and:

- ``cholesky``: the factorisation alone (L Lᵀ = XᵀX + λI);
- ``cholesky + solve(I)``: P by two triangular solves of L against the identity;
- ``cholesky + inverse``: P by LAPACK's inverse from the factor (``torch.cholesky_inverse``),
  what ``EASE.fit`` uses;
- ``LU inverse``: ``torch.linalg.inv``;
- ``eigh`` (``--eigh``): one eigendecomposition, which would serve every λ of a search.

Each P is checked against the first one (max absolute difference). float32, all threads.

    .venv/bin/python benchmarks/ease_linalg.py                      # 6,000 and 12,000 items
    .venv/bin/python benchmarks/ease_linalg.py --sizes 6000 --eigh
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from _common import format_table, machine_info, write_results

SOURCES = ("recsys/models/ease.py",)


def gram_matrix(num_items: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(num_items), 20)
    items = rng.integers(0, num_items, size=len(users))
    x = torch.zeros((num_items, num_items), dtype=torch.float32)
    x[torch.from_numpy(users), torch.from_numpy(items)] = 1.0
    gram = x.T @ x
    gram.diagonal().add_(float(gram.diagonal().mean()))
    return gram


def methods(with_eigh: bool) -> dict[str, Callable[[torch.Tensor], torch.Tensor | None]]:
    def solve(system: torch.Tensor) -> torch.Tensor:
        factor = torch.linalg.cholesky(system)
        return torch.cholesky_solve(torch.eye(len(system)), factor)

    def inverse(system: torch.Tensor) -> torch.Tensor:
        return torch.cholesky_inverse(torch.linalg.cholesky(system))

    def eigh(system: torch.Tensor) -> torch.Tensor:
        values, vectors = torch.linalg.eigh(system)
        return (vectors / values) @ vectors.T

    chosen: dict[str, Callable[[torch.Tensor], torch.Tensor | None]] = {
        "cholesky": lambda system: (torch.linalg.cholesky(system), None)[1],
        "cholesky + solve(I)": solve,
        "cholesky + inverse": inverse,
        "LU inverse": torch.linalg.inv,
    }
    if with_eigh:
        chosen["eigh (+ P for one λ)"] = eigh
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="6000,12000", help="comma-separated item counts")
    parser.add_argument("--eigh", action="store_true", help="also time one eigendecomposition")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    info = machine_info(SOURCES)
    info["torch_threads"] = torch.get_num_threads()
    rows: list[dict[str, Any]] = []
    for size in sizes:
        system = gram_matrix(size)
        a = torch.randn(size, size)
        started = time.perf_counter()
        a @ a
        matmul = time.perf_counter() - started
        rows.append({"items": size, "method": "matmul (I, I) @ (I, I)", "seconds": matmul})
        print(f"{size}: matmul {matmul:.2f}s ({2 * size**3 / matmul / 1e9:.0f} GFLOP/s)")
        del a
        reference: torch.Tensor | None = None
        for name, run in methods(args.eigh).items():
            started = time.perf_counter()
            result = run(system)
            seconds = time.perf_counter() - started
            error = None
            if result is not None:
                if reference is None:
                    reference = result
                else:
                    error = float((result - reference).abs().max())
            rows.append({"items": size, "method": name, "seconds": seconds, "max_diff": error})
            print(f"{size}: {name} {seconds:.2f}s", flush=True)
        del reference, system
    headers = ["items", "method", "seconds", "max |P - P(solve)|"]
    table = [
        [
            f"{r['items']:,}",
            r["method"],
            f"{r['seconds']:.2f}",
            "" if r.get("max_diff") is None else f"{r['max_diff']:.1e}",
        ]
        for r in rows
    ]
    print(format_table(headers, table))
    write_results(
        "ease-linalg",
        "EASE: P = (XᵀX + λI)⁻¹ on this machine",
        info,
        {"rows": rows},
        [("Seconds per method (float32)", headers, table)],
    )


if __name__ == "__main__":
    main()
