"""A moving average of a model's weights during training (``TrainConfig.ema_epochs``).

The training loop validates, keeps and reports the average in place of the raw weights; the
optimiser goes on stepping the raw ones. torch's ``AveragedModel`` holds the copy.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.optim.swa_utils import AveragedModel

from recsys.models.base import Recommender

Params = list[Tensor] | tuple[Tensor, ...]


class WeightAverage:
    """An exponential moving average of a model's weights over about ``epochs`` epochs."""

    def __init__(self, model: Recommender, epochs: float):
        self.epochs = epochs
        self.steps = 0  # steps of this process so far
        self.decay = 1.0  # until the first epoch ends (steps per epoch unknown): warm-up only
        self.model = AveragedModel(model, multi_avg_fn=self._ema)

    @torch.no_grad()
    def _ema(self, averages: Params, current: Params, count: Tensor | int) -> None:
        n = int(count)
        keep = min(self.decay, (1 + n) / (10 + n))
        torch._foreach_lerp_(averages, current, 1.0 - keep)

    def update(self, model: Recommender) -> None:
        self.model.update_parameters(model)
        self.steps += 1

    def epoch_done(self) -> None:
        if self.decay == 1.0 and self.steps:
            self.decay = 1.0 - 1.0 / max(1.0, self.epochs * self.steps)


def swap_in(model: Recommender, average: WeightAverage | None) -> None:
    """Exchange ``model``'s parameters with their moving average (no copies; buffers stay).

    Called twice, it restores them: the loop swaps the average in to validate and keep it,
    and back out to train on."""
    if average is None:
        return
    with torch.no_grad():
        pairs = zip(model.parameters(), average.model.module.parameters(), strict=True)
        for mine, averaged in pairs:
            mine.data, averaged.data = averaged.data, mine.data
