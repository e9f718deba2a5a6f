"""recsys side by side with RecBole, RecTools and implicit: one split, one scorer, one budget.

For a dataset, the script exports the leave-last-out split (benchmarks/peer_split.py), makes
each peer's own virtualenv under benchmarks/.peers/venvs/ from its pinned requirements
(benchmarks/peers/<peer>_env.txt; their pins conflict with ours), runs every system with the
same training budget in a subprocess (benchmarks/peers/<peer>_runner.py, ours through
benchmarks/peers/recsys_runner.py), and scores every system's top-20 lists with
recsys.evaluation on the same test targets (full ranking, seen items excluded, bootstrap CIs,
paired comparisons). Writes results/peers-<dataset>.{json,md} and two plots.

    .venv/bin/python benchmarks/peers.py --dataset ml-100k --budget-seconds 600
    .venv/bin/python benchmarks/peers.py --dataset amazon-toys --budget-seconds 900
    .venv/bin/python benchmarks/peers.py --dataset ml-100k --budget-seconds 20 --systems \\
        recsys:sasrec,recbole:SASRec        # the smallest configuration, a few minutes
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import REPO_ROOT, RESULTS_DIR, machine_info, markdown_table
from peer_split import DATASETS, DEFAULT_DATA_ROOT, evaluate_lists, export_split, load_snapshot

from recsys.data.splits import split
from recsys.evaluation import EvalResult, compare, eval_digest
from recsys.models import MODELS

PEERS_DIR = Path(__file__).resolve().parent / "peers"
WORK = REPO_ROOT / "benchmarks" / ".peers"
SYSTEMS = (
    "recsys:sasrec",
    "recsys:gru4rec",
    "recsys:caser",
    "recsys:multvae",
    "recsys:ease",
    "recbole:SASRec",
    "recbole:GRU4Rec",
    "recbole:Caser",
    "recbole:MultiVAE",
    "recbole:EASE",
    "rectools:sasrec",
    "rectools:bert4rec",
    "implicit:als",
    "implicit:bpr",
)
# Our model -> its RecBole namesake (the "matches or beats" target).
NAMESAKES = {
    "sasrec": "SASRec",
    "gru4rec": "GRU4Rec",
    "caser": "Caser",
    "multvae": "MultiVAE",
    "ease": "EASE",
}
PEER_ENV = {"PEER_THREADS": str(os.cpu_count() or 2), "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
K = 20


def python311() -> str:
    for candidate in ("python3.11", "/usr/bin/python3.11", sys.executable):
        try:
            out = subprocess.run(
                [candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 11))"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            continue
        if out == "True":
            return candidate
    raise SystemExit("the peer virtualenvs need Python 3.11")


def ensure_env(peer: str) -> Path:
    """The peer's virtualenv, created or refreshed from benchmarks/peers/<peer>_env.txt."""
    requirements = PEERS_DIR / f"{peer}_env.txt"
    venv = WORK / "venvs" / peer
    python = venv / "bin" / "python"
    stamp = venv / ".requirements.sha256"
    wanted = hashlib.sha256(requirements.read_bytes()).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    print(
        f"[{peer}] creating {venv.relative_to(REPO_ROOT)} from {requirements.name} ...", flush=True
    )
    subprocess.run([python311(), "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "-r", str(requirements)], check=True
    )
    stamp.write_text(wanted)
    return python


def run_system(system: str, args: argparse.Namespace, split_dir: Path) -> dict[str, Any]:
    peer, model = system.split(":")
    out = split_dir / "runs" / f"{peer}-{model}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    common = [
        "--split",
        str(split_dir),
        "--budget-seconds",
        str(args.budget_seconds),
        "--out",
        str(out),
    ]
    if peer == "recsys":
        command = [
            sys.executable,
            str(PEERS_DIR / "recsys_runner.py"),
            "--dataset",
            args.dataset,
            "--model",
            model,
            *common,
        ]
        command += [item for setting in ours_settings(model, args) for item in ("--set", setting)]
    else:
        python = ensure_env(peer)
        command = [
            str(python),
            str(PEERS_DIR / f"{peer}_runner.py"),
            "--model",
            model,
            "--k",
            str(K),
            *common,
        ]
        if peer in ("recbole", "rectools"):
            command += ["--max-len", str(args.max_len)]
    print(f"[{system}] training (budget {args.budget_seconds:g}s) ...", flush=True)
    started = time.perf_counter()
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env={**os.environ, **PEER_ENV},
        timeout=args.budget_seconds * 4 + 900,
    )
    wall = time.perf_counter() - started
    if done.returncode != 0 or not out.exists():
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        print(f"[{system}] FAILED: {' | '.join(tail)}", flush=True)
        return {"system": system, "error": " | ".join(tail), "wall_seconds": wall}
    result: dict[str, Any] = json.loads(out.read_text())
    result["wall_seconds"] = round(wall, 1)
    result["system"] = system
    return result


def ours_settings(model: str, args: argparse.Namespace) -> list[str]:
    """``--ours-set`` plus the peers' history window for our models that have one.

    Every sequence model reads the same last ``--max-len`` items (RecBole's
    MAX_ITEM_LIST_LENGTH, RecTools' session_max_len), ours included: SASRec's own default of
    200 would otherwise see four times the history the peer SASRecs get.
    """
    settings = list(args.ours_set)
    fields = {f.name for f in dataclasses.fields(MODELS[model].config)}
    if "max_len" in fields and not any(s.startswith("max_len=") for s in settings):
        settings.append(f"max_len={args.max_len}")
    return settings


def reused_run(system: str, args: argparse.Namespace, split_dir: Path) -> dict[str, Any]:
    """The last run of ``system`` on this split, if it had the same budget; else train it."""
    peer, model = system.split(":")
    out = split_dir / "runs" / f"{peer}-{model}.json"
    if out.exists():
        result: dict[str, Any] = json.loads(out.read_text())
        if float(result.get("budget_seconds") or -1) == args.budget_seconds:
            when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(out.stat().st_mtime))
            print(f"[{system}] reusing the run of {when} (budget {args.budget_seconds:g}s)")
            result.update(system=system, reused=when)
            return result
    print(f"[{system}] no run at budget {args.budget_seconds:g}s to reuse; training it")
    return run_system(system, args, split_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), required=True)
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    parser.add_argument("--budget-seconds", type=float, default=120.0)
    parser.add_argument(
        "--max-len",
        type=int,
        default=50,
        help="history window of every sequence model, ours included (RecBole's default 50)",
    )
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--ours-set", action="append", default=[], help="key=value for ours")
    parser.add_argument(
        "--reuse",
        default="",
        help="comma-separated systems whose last run at this budget is read back instead of "
        "trained again (labelled as reused in the report)",
    )
    args = parser.parse_args()
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]

    split_dir = WORK / args.dataset
    with tempfile.TemporaryDirectory() as scratch:
        snapshot = load_snapshot(args.dataset, args.data_root, Path(scratch))
    exported = export_split(snapshot, split_dir, args.dataset)
    data = split(snapshot, "loo")
    assert eval_digest(data.test) == exported.meta["test_digest"]
    print(
        f"{args.dataset}: {exported.train_rows:,} training events, {exported.test_rows:,} test "
        f"users, {data.num_items:,} items; budget {args.budget_seconds:g}s per system",
        flush=True,
    )

    reuse = {s.strip() for s in args.reuse.split(",") if s.strip()}
    runs = [
        reused_run(system, args, split_dir)
        if system in reuse
        else run_system(system, args, split_dir)
        for system in systems
    ]
    scored: dict[str, EvalResult] = {}
    rows = []
    for run in runs:
        row: dict[str, Any] = {"system": run["system"]}
        if "error" in run:
            row["error"] = run["error"]
            rows.append(row)
            continue
        result = evaluate_lists(data, snapshot, run["lists"])
        scored[run["system"]] = result
        summary = result.summary()
        covered = len(set(run["lists"]) & {str(snapshot.users.ids[u]) for u in data.test.users})
        row.update(
            {
                "ndcg@10": summary["ndcg@10"],
                "hr@10": summary["hr@10"],
                "ndcg@20": summary["ndcg@20"]["value"],
                "users_listed": covered,
                "train_seconds": run.get("train_seconds"),
                "seconds_to_best": run.get("seconds_to_best"),
                "stopped": run.get("stopped") or run.get("stopped_by"),
                "reused": run.get("reused"),
                "peak_rss_mb": run.get("peak_rss_mb"),
                "config_source": run.get("config_source"),
                "library_version": run.get("library_version"),
                "own_metrics": run.get("own_metrics"),
            }
        )
        rows.append(row)
        print(
            f"[{run['system']}] ndcg@10 {summary['ndcg@10']['value']:.4f} "
            f"hr@10 {summary['hr@10']['value']:.4f} to-best {run.get('seconds_to_best')}s",
            flush=True,
        )
    targets = check_targets(scored, rows)
    write(args, systems, rows, targets, exported.meta)


def check_targets(
    scored: dict[str, EvalResult], rows: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Our sasrec vs the best peer SASRec; each of our models vs its RecBole namesake.

    "At least as accurate" / "matches or beats" is read statistically: PASS unless ours is
    significantly worse, i.e. unless the paired-bootstrap 95% CI of (ours - theirs) lies
    entirely below 0.
    """
    by_system = {row["system"]: row for row in rows if "error" not in row}
    out: list[dict[str, Any]] = []
    peer_sasrec = [s for s in scored if s in ("recbole:SASRec", "rectools:sasrec")]
    if "recsys:sasrec" in scored and peer_sasrec:
        best = max(peer_sasrec, key=lambda s: scored[s].mean("ndcg@10"))
        for metric in ("ndcg@10", "hr@10"):
            c = compare(scored[best], scored["recsys:sasrec"], metric)
            out.append(
                {
                    "target": f"recsys sasrec {metric} not worse than best peer SASRec ({best})",
                    "measured": f"{c['mean_b']:.4f} vs {c['mean_a']:.4f}, diff {c['diff']:+.4f} "
                    f"[{c['ci_low']:+.4f}, {c['ci_high']:+.4f}]",
                    "verdict": "PASS" if c["ci_high"] >= 0 else "FAIL",
                }
            )
        out.append(time_to_best_target(by_system["recsys:sasrec"], by_system[best], best))
    for ours, theirs in NAMESAKES.items():
        a, b = f"recbole:{theirs}", f"recsys:{ours}"
        if a in scored and b in scored:
            c = compare(scored[a], scored[b], "ndcg@10")
            out.append(
                {
                    "target": f"recsys {ours} ndcg@10 not worse than RecBole {theirs}",
                    "measured": f"{c['mean_b']:.4f} vs {c['mean_a']:.4f}, diff {c['diff']:+.4f} "
                    f"[{c['ci_low']:+.4f}, {c['ci_high']:+.4f}], p={c['p_value']:.3f}",
                    "verdict": "PASS" if c["ci_high"] >= 0 else "FAIL",
                }
            )
    return out


def time_to_best_target(ours: dict[str, Any], theirs: dict[str, Any], name: str) -> dict[str, Any]:
    """Ours reaches its best validation epoch in at most half the peer's time.

    A run that the budget stopped may not have reached its best yet, so its time is only a
    lower bound: a budget-stopped peer can still be beaten (its real time is no shorter), but
    a budget-stopped recsys run cannot be credited with a PASS.
    """
    ours_t, theirs_t = ours.get("seconds_to_best"), theirs.get("seconds_to_best")
    target = f"recsys sasrec reaches its best in <= half of {name}'s time"
    if ours_t is None or not theirs_t:
        return {"target": target, "measured": "no time recorded", "verdict": "FAIL"}
    notes = [
        f"{who} stopped by the budget (a lower bound)"
        for who, row in (("recsys", ours), (name, theirs))
        if row.get("stopped") == "budget"
    ]
    measured = f"{ours_t:.0f}s vs {theirs_t:.0f}s" + (f"; {'; '.join(notes)}" if notes else "")
    if ours_t > theirs_t / 2:
        verdict = "FAIL"
    elif ours.get("stopped") == "budget":
        verdict = "INCONCLUSIVE"
    else:
        verdict = "PASS"
    return {"target": target, "measured": measured, "verdict": verdict}


def write(
    args: argparse.Namespace,
    systems: list[str],
    rows: list[dict[str, Any]],
    targets: list[dict[str, Any]],
    meta: dict[str, Any],
) -> None:
    info = machine_info(["benchmarks/peers.py", "benchmarks/peer_split.py", "benchmarks/peers"])
    name = f"peers-{args.dataset}"
    RESULTS_DIR.mkdir(exist_ok=True)
    payload = {
        "machine": info,
        "split": meta,
        "budget_seconds": args.budget_seconds,
        "rows": rows,
        "targets": targets,
    }
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    ok = [r for r in rows if "error" not in r]
    table = [
        [
            r["system"],
            _ci(r["ndcg@10"]),
            _ci(r["hr@10"]),
            f"{r['ndcg@20']:.4f}",
            _num(r.get("seconds_to_best")),
            _num(r.get("train_seconds")),
            str(r.get("stopped") or "-"),
            _num(r.get("peak_rss_mb")),
            str(r.get("config_source") or ""),
        ]
        for r in sorted(ok, key=lambda r: -r["ndcg@10"]["value"])
    ]
    lines = [
        f"# Side by side on {args.dataset}: recsys, RecBole, RecTools, implicit",
        "",
        f"Leave-last-out, {meta['test_rows']:,} test users, {meta['num_items']:,} items, scored by "
        "recsys.evaluation from each system's top-20 (full ranking, seen items excluded, "
        f"95% bootstrap CI). Same training data, same budget ({args.budget_seconds:g}s) for all.",
        "",
        "'s to best' is the wall time of the best validation epoch; 'stopped by' tells whether a "
        "run converged (patience, early_stopping) or ran out of budget, in which case its time "
        "to best is only a lower bound.",
        "",
        markdown_table(
            [
                "system",
                "NDCG@10 [95% CI]",
                "HR@10 [95% CI]",
                "NDCG@20",
                "s to best",
                "train s",
                "stopped by",
                "peak MB",
                "configuration",
            ],
            table,
        ),
        "",
    ]
    reused = [r for r in ok if r.get("reused")]
    if reused:
        lines += [
            "Reused runs (same split, same budget, not retrained by this command): "
            + ", ".join(f"{r['system']} ({r['reused']})" for r in reused),
            "",
        ]
    failed = [r for r in rows if "error" in r]
    if failed:
        lines += ["Failed runs:", ""] + [f"- {r['system']}: {r['error']}" for r in failed] + [""]
    if targets:
        lines += [
            'Accuracy targets are read statistically: "not worse" passes unless the paired-'
            "bootstrap 95% CI of (recsys - peer) lies entirely below 0.",
            "",
        ]
        lines += [
            markdown_table(
                ["target", "measured", "verdict"],
                [[t["target"], t["measured"], t["verdict"]] for t in targets],
            ),
            "",
        ]
    lines += [
        f"![accuracy](peers-{args.dataset}-accuracy.png)",
        f"![accuracy vs time](peers-{args.dataset}-time.png)",
        "",
        f"Machine: {info['machine']}, {info['cpu_count']} cores; {info['date']}.",
        f"Command: `{info['command']}`",
        "",
    ]
    (RESULTS_DIR / f"{name}.md").write_text("\n".join(lines))
    plot(ok, args.dataset)
    print("\n".join(lines))


def plot(rows: list[dict[str, Any]], dataset: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda r: -r["ndcg@10"]["value"])
    names = [r["system"] for r in rows]
    colors = ["tab:orange" if n.startswith("recsys") else "tab:blue" for n in names]
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.4 * len(rows) + 2))
    for ax, metric in zip(axes, ("ndcg@10", "hr@10"), strict=True):
        values = [r[metric]["value"] for r in rows]
        low = [r[metric]["value"] - r[metric]["ci_low"] for r in rows]
        high = [r[metric]["ci_high"] - r[metric]["value"] for r in rows]
        ax.barh(names, values, xerr=[low, high], color=colors, capsize=3)
        ax.invert_yaxis()
        ax.set(title=f"{metric.upper()} (95% CI), {dataset}", xlabel=metric)
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(RESULTS_DIR / f"peers-{dataset}-accuracy.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 5))
    for r, color in zip(rows, colors, strict=True):
        t = r.get("seconds_to_best") or r.get("train_seconds")
        if t is None:
            continue
        ax.scatter(t, r["ndcg@10"]["value"], color=color)
        ax.annotate(
            r["system"],
            (t, r["ndcg@10"]["value"]),
            fontsize=8,
            xytext=(4, 2),
            textcoords="offset points",
        )
    ax.set(
        xscale="log",
        xlabel="seconds to the best validation epoch (log)",
        ylabel="NDCG@10",
        title=f"Accuracy vs training time, {dataset}",
    )
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(RESULTS_DIR / f"peers-{dataset}-time.png", dpi=110)
    plt.close(fig)


def _ci(stats: dict[str, float]) -> str:
    return f"{stats['value']:.4f} [{stats['ci_low']:.4f}, {stats['ci_high']:.4f}]"


def _num(value: Any) -> str:
    return "-" if value is None else f"{float(value):,.0f}"


if __name__ == "__main__":
    main()
