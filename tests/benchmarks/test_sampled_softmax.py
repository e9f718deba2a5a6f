"""The sampled-softmax benchmark's memory counter: what it counts is what the step allocates."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from sampled_softmax import LiveBytes, loss_step


def test_live_bytes_counts_new_storages_until_they_are_freed() -> None:
    base = torch.zeros(1000)  # 4000 bytes that exist before: never counted
    with LiveBytes(apart=(10, 10)) as counter:
        a = base + 1  # 4000 new
        view = a[:10]  # a view: no new memory
        b = torch.ones(10, 10)  # 400, of the shape kept apart
        a.add_(1)  # in place: no new memory
        del a, view
        c = base * 2  # 4000 more once a is gone: the peak stays 4400
    assert (counter.peak, counter.peak_rest, counter.largest) == (4400, 4000, 4000)
    assert b.numel() == 100 and c.numel() == 1000


def test_loss_step_memory_of_the_full_softmax_grows_and_the_sampled_one_does_not() -> None:
    torch.manual_seed(0)
    rows = {
        (kind, items): loss_step(kind, items, positions=32, negatives=16)
        for kind in ("full", "sampled")
        for items in (500, 5000)
    }
    logits = 32 * 5000 * 4
    assert rows[("full", 5000)]["peak_without_weight_grad_bytes"] >= 2 * logits
    full_growth = (
        rows[("full", 5000)]["peak_without_weight_grad_bytes"]
        / rows[("full", 500)]["peak_without_weight_grad_bytes"]
    )
    assert full_growth > 8
    assert (
        rows[("sampled", 5000)]["peak_without_weight_grad_bytes"]
        == rows[("sampled", 500)]["peak_without_weight_grad_bytes"]
    )
    # What grows with the catalogue in a sampled step is the embedding gradient alone.
    sampled = rows[("sampled", 5000)]
    assert sampled["peak_bytes"] <= sampled["weight_grad_bytes"] + 2 * logits
