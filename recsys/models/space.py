"""Search spaces: what ``recsys tune`` may vary of a model, declared in the model's own file.

Each model file declares ``SEARCH_SPACE`` next to its config: a mapping from a setting's
name to its range. A name is a field of the model's config dataclass (embedding size,
blocks, heads, dropout, history length, EASE's l2) or of ``TrainConfig`` (learning rate,
weight decay, batch size); a test checks every name. The types are plain data (no Optuna):
``recsys.tuning`` turns them into a trial's suggestions, so a model file never imports the
tuner.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class IntRange:
    """An integer in ``[low, high]`` by ``step`` (log scale when ``log``)."""

    low: int
    high: int
    step: int = 1
    log: bool = False


@dataclass(frozen=True)
class FloatRange:
    """A float in ``[low, high]`` (log scale when ``log``: for rates and penalties)."""

    low: float
    high: float
    log: bool = False


@dataclass(frozen=True)
class Choice:
    """One of ``options`` (sizes that must divide each other, such as dimensions and heads)."""

    options: tuple[int | float | str | bool, ...]


Dimension = IntRange | FloatRange | Choice
SearchSpace = dict[str, Dimension]

# The optimiser's side, shared by the learned models: rates and penalties on a log scale.
# Weight decay has no zero on a log scale; 1e-6 is as good as none for these models.
OPTIMISER_SPACE: SearchSpace = {
    "learning_rate": FloatRange(1e-4, 1e-2, log=True),
    "weight_decay": FloatRange(1e-6, 1e-1, log=True),
}
