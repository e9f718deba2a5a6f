"""The tuning report: the trials of a study as markdown and a PNG beside it.

The PNG has two panels: validation NDCG@10 per trial (pruned trials at the last value they
reported, the best so far as a line) and the parameter importances. It is written under the
home's reports folder; the tune flow publishes both as Prefect artifacts.
"""

from __future__ import annotations

import base64
import math
from pathlib import Path

from recsys.retrain import REPORTS_FOLDER
from recsys.tuned import TunedSettings
from recsys.tuning import TuneResult


def report_paths(home: Path, model: str, run_id: str | None) -> tuple[Path, Path]:
    """``reports/tune-<model>-<flow run id | local>.md`` and the ``.png`` beside it."""
    path = home / REPORTS_FOLDER / f"tune-{model}-{run_id or 'local'}.md"
    return path, path.with_suffix(".png")


def plot(result: TuneResult, path: Path) -> Path:
    """The two panels (see the module doc) as a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")  # no display: flows and servers draw to files
    from matplotlib import pyplot as plt

    figure, (trials_axis, importance_axis) = plt.subplots(1, 2, figsize=(11, 4))
    best_line: list[float] = []
    best = -math.inf
    for state, marker, colour in (("COMPLETE", "o", "tab:blue"), ("PRUNED", "x", "tab:grey")):
        rows = [t for t in result.trials if t["state"] == state and _shown(t) is not None]
        trials_axis.scatter(
            [t["number"] for t in rows],
            [_shown(t) for t in rows],
            marker=marker,
            color=colour,
            label=state.lower(),
        )
    numbers = []
    for t in sorted(result.trials, key=lambda t: t["number"]):
        if t["state"] == "COMPLETE" and t["value"] is not None:
            best = max(best, t["value"])
        if best > -math.inf:
            numbers.append(t["number"])
            best_line.append(best)
    trials_axis.step(numbers, best_line, where="post", color="tab:orange", label="best so far")
    trials_axis.set_xlabel("trial")
    trials_axis.set_ylabel(f"validation {result.metric}")
    trials_axis.set_title(f"{result.model}: {result.finished} trials, {result.pruned} pruned")
    trials_axis.legend(loc="best")
    names = list(result.importances)[::-1]
    importance_axis.barh(names, [result.importances[n] for n in names], color="tab:green")
    importance_axis.set_xlabel("importance (share of the variation)")
    importance_axis.set_title("parameter importances" if names else "too few trials to say")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _shown(trial: dict[str, object]) -> float | None:
    """A trial's point: its value, or a pruned trial's last reported epoch."""
    if trial["value"] is not None:
        return float(trial["value"])  # type: ignore[arg-type]
    epochs = trial["epochs"]
    return float(epochs[-1]) if isinstance(epochs, list) and epochs else None


def render(result: TuneResult, settings: TunedSettings, image: str | None) -> str:
    """The report in markdown: the best settings, the importances, every trial."""
    lines = [
        f"# Tune {result.model}: valid {result.metric} {result.best_valid:.4f}",
        "",
        f"Study `{result.study_name}` ({result.protocol} split, snapshot "
        f"`{result.snapshot_digest[:16]}`): {result.finished} finished trials "
        f"({result.pruned} pruned), {result.ran} in this run of {result.seconds:.0f} s. "
        "Selection is on validation only; no test metric was computed.",
        "",
        f"Recorded as tuned settings #{settings.id}: the next retrain trains {result.model} "
        "with them.",
        "",
        f"## Best trial #{result.best_trial}",
        "",
    ]
    lines += [f"- `{k}` = {_value(v)}" for k, v in sorted(result.best_params.items())]
    lines += ["", "## Parameter importances", ""]
    if result.importances:
        lines += [f"- `{k}`: {v:.3f}" for k, v in result.importances.items()]
    else:
        lines.append("Too few completed trials to say.")
    if image:
        lines += ["", f"![validation {result.metric} per trial and importances]({image})"]
    keys = sorted({k for t in result.trials for k in t["params"]})
    lines += ["", "## Trials", "", "| trial | state | valid | epochs | " + " | ".join(keys) + " |"]
    lines.append("|" + "---|" * (4 + len(keys)))
    for t in result.trials:
        cells = [str(t["number"]), t["state"].lower(), _value(t["value"]), str(len(t["epochs"]))]
        cells += [_value(t["params"].get(k)) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


def write_report(
    result: TuneResult, settings: TunedSettings, *, home: Path, run_id: str | None = None
) -> tuple[Path, Path, str]:
    """The PNG and the markdown (which shows it) under ``home``; returns both paths and the
    markdown."""
    markdown_path, png_path = report_paths(home, result.model, run_id)
    plot(result, png_path)
    report = render(result, settings, png_path.name)
    markdown_path.write_text(report, encoding="utf-8")
    return markdown_path, png_path, report


def data_url(png: Path) -> str:
    """The PNG as a ``data:`` URL: what an image artifact shows where no server hosts it."""
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")


def _value(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-3 and value != 0 else f"{value:.4g}"
    return str(value)
