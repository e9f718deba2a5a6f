"""A/B of two checkouts on the serving and batch benchmarks, interleaved in one run.

Timings here drift by 10-20% between minutes, so a change is judged by the ratio of the two
checkouts measured turn about on the same prepared home: ``benchmarks/serve.py`` (recommend
and explain at the given concurrencies) and ``benchmarks/batch.py`` (one batch size), each
run ``--rounds`` times per checkout, alternating A, B, A, B, ... Results: the median of each
checkout's rounds and the B/A ratio, in results/ab.md and results/ab.json. The benchmark
scripts' own result files in either checkout are restored after each run.

    .venv/bin/python benchmarks/ab.py --a ../recsys-before --b . \
        --home benchmarks/.homes/amazon-toys

The two sides may also be one checkout run with different settings, e.g. the cost of the
impression log (``--a-env`` applies to A's runs only; ``--out`` names the result files):

    .venv/bin/python benchmarks/ab.py --a . --b . --a-env RECSYS_IMPRESSION_BUFFER=0 \
        --no-batch --concurrency 8 --out ab-impressions --home benchmarks/.homes/amazon-toys
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import RESULTS_DIR, format_table, machine_info, markdown_table

SERVE_POINTS = ("recommend", "explain")
SERVE_FILES = ("serve-smoke.json", "serve-smoke.md", "serve-smoke-latency.png")
BATCH_FILES = ("batch.json", "batch.md")


def _git(checkout: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(checkout), *args], capture_output=True, text=True)
    return done.stdout.strip()


def _run(
    checkout: Path,
    script: str,
    args: list[str],
    outputs: tuple[str, ...],
    extra_env: dict[str, str] | None = None,
) -> Any:
    """Run ``benchmarks/<script>`` of ``checkout`` on its own code; its JSON result.

    The result files it overwrites in that checkout are put back as they were.
    """
    results = checkout / "benchmarks" / "results"
    saved = {name: (results / name).read_bytes() for name in outputs if (results / name).exists()}
    env = {**os.environ, "PYTHONPATH": str(checkout), **(extra_env or {})}
    try:
        subprocess.run(
            [sys.executable, f"benchmarks/{script}", *args],
            cwd=checkout,
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        return json.loads((results / outputs[0]).read_text())
    finally:
        for name in outputs:
            path = results / name
            if name in saved:
                path.write_bytes(saved[name])
            elif path.exists():
                path.unlink()


def serve_round(
    checkout: Path, home: Path, args: argparse.Namespace, env: dict[str, str]
) -> dict[str, float]:
    data = _run(
        checkout,
        "serve.py",
        [
            "--quick",
            "--home",
            str(home),
            "--variants",
            ",".join(SERVE_POINTS),
            "--concurrency",
            args.concurrency,
            "--duration",
            str(args.duration),
            "--rounds",
            "1",
        ],
        SERVE_FILES,
        env,
    )
    out: dict[str, float] = {}
    for point in data["points"]:
        key = f"{point['variant']}@{point['concurrency']}"
        out[f"{key} req/s"] = point["req_per_s"]
        out[f"{key} p50 ms"] = point["p50_ms"]
        out[f"{key} p99 ms"] = point["p99_ms"]
    return out


def batch_round(
    checkout: Path, home: Path, args: argparse.Namespace, env: dict[str, str]
) -> dict[str, float]:
    data = _run(
        checkout,
        "batch.py",
        ["--home", str(home), "--batch-sizes", str(args.batch_size)],
        BATCH_FILES,
        env,
    )
    (row,) = data["rows"]
    return {
        "batch score users/s": row["score_users_per_s"],
        "batch end-to-end users/s": row["end_to_end_users_per_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", type=Path, required=True, help="checkout A (the baseline)")
    parser.add_argument("--b", type=Path, default=Path("."), help="checkout B (default: here)")
    parser.add_argument("--home", type=Path, required=True, help="a home with a champion")
    parser.add_argument("--rounds", type=int, default=3, help="runs per checkout, alternated")
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per serve point")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--no-batch", action="store_true", help="serving only")
    parser.add_argument(
        "--a-env", action="append", default=[], metavar="KEY=VALUE", help="A's environment"
    )
    parser.add_argument(
        "--b-env", action="append", default=[], metavar="KEY=VALUE", help="B's environment"
    )
    parser.add_argument("--out", default="ab", help="result files' name (default ab)")
    args = parser.parse_args()
    envs = {"A": _pairs(parser, args.a_env), "B": _pairs(parser, args.b_env)}
    checkouts = {"A": args.a.resolve(), "B": args.b.resolve()}
    home = args.home.resolve()
    if not (home / "recsys.db").exists():
        raise SystemExit(f"{home} has no recsys.db: prepare it with benchmarks/serve.py first")
    rounds: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
    started = time.time()
    for n in range(args.rounds):
        for side in ("A", "B") if n % 2 == 0 else ("B", "A"):
            merged = serve_round(checkouts[side], home, args, envs[side])
            if not args.no_batch:
                merged |= batch_round(checkouts[side], home, args, envs[side])
            rounds[side].append(merged)
            print(f"round {n + 1} {side}: {merged}", flush=True)
    rows = []
    for metric in rounds["A"][0]:
        a = statistics.median(r[metric] for r in rounds["A"])
        b = statistics.median(r[metric] for r in rounds["B"])
        rows.append([metric, f"{a:.2f}", f"{b:.2f}", f"{b / a:.3f}"])
    commits = {
        side: _git(path, "rev-parse", "--short=12", "HEAD") for side, path in checkouts.items()
    }
    headers = ["metric", "A", "B", "B/A"]
    print(format_table(headers, rows))
    result = {
        "machine": machine_info(),
        "commits": commits,
        "home": home.name,
        "config": {k: str(v) for k, v in vars(args).items() if k not in ("a", "b", "home")},
        "environments": envs,
        "seconds": round(time.time() - started),
        "rounds": rounds,
        "rows": rows,
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"{args.out}.json").write_text(json.dumps(result, indent=1) + "\n")
    settings = "".join(
        f"; {side} with `{' '.join(f'{k}={v}' for k, v in env.items())}`"
        for side, env in envs.items()
        if env
    )
    (RESULTS_DIR / f"{args.out}.md").write_text(
        "# A/B: serving and batch benchmarks of two commits\n\n"
        f"A = `{commits['A']}`, B = `{commits['B']}`{settings}; median of {args.rounds} "
        "interleaved "
        f"runs each (serve: {args.duration:g} s per point, concurrency {args.concurrency}; "
        f"batch size {args.batch_size}) on the home `{home.name}`.\n\n"
        + markdown_table(headers, rows)
        + f"\n\nMachine: {result['machine']['machine']}, {result['machine']['cpu_count']} cores,"
        f" {result['machine']['date']}.\nCommand: `{result['machine']['command']}`\n"
    )


def _pairs(parser: argparse.ArgumentParser, items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"expected KEY=VALUE, got {item!r}")
        out[key] = value
    return out


if __name__ == "__main__":
    main()
