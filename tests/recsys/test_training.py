"""The training loop: seeded determinism, best weights restored, budget and patience stops."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from recsys.data.batches import eval_query_arrays, sequence_batches
from recsys.data.splits import Split
from recsys.errors import RecsysError
from recsys.models import MODELS, build_model
from recsys.models.base import Query, torch_scorer
from recsys.models.sasrec import SASRecConfig
from recsys.training import TrainConfig, train, train_config_with, validate

SMALL = TrainConfig(
    learning_rate=3e-3, batch_size=64, max_epochs=6, patience=100, threads=1, progress=False
)


def _sasrec(data: Split) -> torch.nn.Module:
    torch.manual_seed(123)  # a different init than the run's seed, to show the seed decides
    return build_model(
        "sasrec", data.num_users, data.num_items, config=SASRecConfig(max_len=30, dropout=0.2)
    )


def test_training_same_seed_same_model(small_split: Split) -> None:
    first, second = _sasrec(small_split), _sasrec(small_split)
    a = train(first, small_split, SMALL)
    b = train(second, small_split, SMALL)
    assert [e.loss for e in a.history] == [e.loss for e in b.history]
    for (name, x), (_, y) in zip(
        first.state_dict().items(), second.state_dict().items(), strict=True
    ):
        assert torch.equal(x, y), name


def test_training_restores_the_best_weights(small_split: Split) -> None:
    model = _sasrec(small_split)
    result = train(model, small_split, replace(SMALL, max_epochs=8))
    assert result.best_valid == max(e.valid for e in result.history)
    assert validate(model, small_split) == pytest.approx(result.best_valid)
    assert result.history[0].loss > result.history[-1].loss


def test_an_averaged_run_validates_and_ships_the_moving_average(small_split: Split) -> None:
    plain, averaged = _sasrec(small_split), _sasrec(small_split)
    base = replace(SMALL, max_epochs=4)
    plain_result = train(plain, small_split, base)
    result = train(averaged, small_split, replace(base, ema_epochs=1.0))
    # The same steps (same seed, same losses), a different model validated and shipped.
    assert [e.loss for e in result.history] == [e.loss for e in plain_result.history]
    assert [e.valid for e in result.history] != [e.valid for e in plain_result.history]
    assert validate(averaged, small_split) == pytest.approx(result.best_valid)
    assert not torch.equal(
        averaged.get_parameter("items.weight"), plain.get_parameter("items.weight")
    )
    with pytest.raises(RecsysError, match="ema_epochs must be positive"):
        replace(SMALL, ema_epochs=0.0)


def test_an_unvalidated_averaged_run_keeps_the_average_of_its_steps(small_split: Split) -> None:
    epochs = 0.25
    model = _sasrec(small_split)
    weights: list[torch.Tensor] = []

    def note(*_: object) -> None:  # after every optimiser step of the run
        weights.append(model.get_parameter("positions.weight").detach().clone())

    hook = register_optimizer_step_post_hook(note)
    try:
        config = replace(SMALL, max_epochs=2, batch_size=32, ema_epochs=epochs)
        train(model, small_split, config, validating=False)
    finally:
        hook.remove()
    assert len(weights) > 3
    steps = len(weights) // 2  # per epoch
    assert 0 < 1.0 - 1.0 / (epochs * steps) < (1 + steps) / (10 + steps)  # the decay binds
    expected = weights[0]
    for n, current in enumerate(weights[1:], start=1):
        # Warm-up only in the first epoch; then the decay of a quarter-epoch horizon.
        decay = 1.0 if n < steps else 1.0 - 1.0 / max(1.0, epochs * steps)
        keep = min(decay, (1 + n) / (10 + n))
        expected = keep * expected + (1 - keep) * current
    torch.testing.assert_close(model.get_parameter("positions.weight"), expected)


def test_training_stops_on_patience_and_budget(small_split: Split) -> None:
    patient = train(_sasrec(small_split), small_split, replace(SMALL, max_epochs=50, patience=1))
    assert patient.stopped in ("patience", "max_epochs")
    assert patient.epochs_run - patient.best_epoch <= 1

    budget = train(_sasrec(small_split), small_split, replace(SMALL, budget_seconds=0.01))
    assert budget.stopped == "budget" and budget.epochs_run == 1


def test_ease_chooses_its_l2_on_validation_inside_the_range_searched(small_split: Split) -> None:
    model = build_model("ease", small_split.num_users, small_split.num_items)
    result = train(model, small_split, SMALL)
    tried = [trial["l2"] for trial in result.searched]
    assert len(result.history) == len(tried) >= 3 and len(set(tried)) == len(tried)
    chosen = result.chosen["l2"]
    assert model.config.l2 == chosen and result.stopped == "fit"
    assert min(tried) < chosen < max(tried)  # a worse neighbour on each side
    assert [e.valid for e in result.history] == [trial["valid"] for trial in result.searched]
    best = max(result.searched, key=lambda trial: trial["valid"])
    assert chosen == best["l2"] and result.best_valid == best["valid"]
    assert validate(model, small_split) == pytest.approx(result.best_valid)  # the best kept


def test_ease_with_an_l2_fits_it_without_a_search(small_split: Split) -> None:
    model = build_model("ease", small_split.num_users, small_split.num_items)
    model.config = replace(model.config, l2=30.0)  # as --set l2=30 builds it
    result = train(model, small_split, SMALL)
    assert result.searched == [] and result.chosen == {} and result.epochs_run == 1
    assert model.config.l2 == 30.0


def test_train_config_with_defaults_then_overrides() -> None:
    config = train_config_with({"learning_rate": 0.5, "unknown": 1}, {"batch_size": 7})
    assert (config.learning_rate, config.batch_size) == (0.5, 7)


def test_sequence_batches_hold_every_user_once_grouped_by_length(small_split: Split) -> None:
    lengths = small_split.train.sequences.lengths()
    expected = set(np.flatnonzero(lengths >= 2).tolist())
    for pool, seed in ((8, 0), (1, 1)):
        rows: list[np.ndarray] = []
        for batch in sequence_batches(
            small_split.train, 16, 30, np.random.default_rng(seed), pool=pool
        ):
            history = batch["history"].numpy()
            assert history.shape[1] == 30 and (batch["target"].numpy()[history == 0] == 0).all()
            rows.append((history > 0).sum(axis=1))
        assert sum(len(r) for r in rows) == len(expected)
    # Grouped, a batch spans a narrow range of history lengths; by default (plain), it doesn't.
    grouped = list(sequence_batches(small_split.train, 16, 30, np.random.default_rng(0), pool=8))
    plain = list(sequence_batches(small_split.train, 16, 30, np.random.default_rng(0)))

    def mean_spread(batches: list[dict[str, torch.Tensor]]) -> float:
        used = [(b["history"] > 0).sum(dim=1) for b in batches]
        return float(np.mean([int(u.max() - u.min()) for u in used]))

    assert mean_spread(grouped) < mean_spread(plain) / 2
    with pytest.raises(ValueError, match="pool"):
        next(sequence_batches(small_split.train, 16, 30, np.random.default_rng(0), pool=0))


def test_grouped_batches_weigh_every_position_alike(small_split: Split) -> None:
    """weight x (mean over a batch's positions) = (sum over them) / (mean positions per batch)."""
    grouped = list(sequence_batches(small_split.train, 16, 30, np.random.default_rng(0), pool=8))
    assert all(
        "weight" not in b
        for b in sequence_batches(small_split.train, 16, 30, np.random.default_rng(0))
    )
    positions = np.array([int((b["target"] > 0).sum()) for b in grouped], dtype=np.float64)
    weights = np.array([float(b["weight"]) for b in grouped])
    assert positions.std() > 0  # short and long batches really differ in size
    np.testing.assert_allclose(weights, positions / positions.mean(), rtol=1e-6)
    np.testing.assert_allclose(weights.mean(), 1.0, rtol=1e-6)


def test_length_grouping_is_sasrecs_default_only() -> None:
    assert MODELS["sasrec"].train_defaults["length_pool"] == 8
    for name in ("gru4rec", "caser"):
        assert train_config_with(MODELS[name].train_defaults, {}).length_pool == 1
    with pytest.raises(RecsysError, match="length_pool must be at least 1"):
        train_config_with({}, {"length_pool": 0})


def test_chunked_scoring_of_a_padding_invariant_model_matches_plain_scoring(
    small_split: Split,
) -> None:
    model = _sasrec(small_split).eval()
    assert model.padding_invariant
    history, users = eval_query_arrays(small_split.valid, np.arange(len(small_split.valid)), 30)
    chunked = torch_scorer(model, chunk=16)(history, users)
    with torch.inference_mode():
        plain = model.score(Query(history=torch.from_numpy(history))).numpy()
    np.testing.assert_allclose(chunked, plain, atol=1e-5, rtol=0)


# Where the steps run: the model, the batches and the loss on the configured device, bf16
# autocast where asked for (auto: CUDA only), the model back on the CPU afterwards.
DEVICES = [
    pytest.param("cpu", "off", id="cpu"),
    pytest.param("cpu", "bf16", id="cpu-bf16"),
    pytest.param("cuda", "auto", id="cuda", marks=pytest.mark.cuda),
    pytest.param("cuda", "off", id="cuda-fp32", marks=pytest.mark.cuda),
]


def _record_steps(model: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Wrap ``model.loss`` to note where each step's model, batch and loss were."""
    steps: list[dict] = []
    loss = model.loss

    def recorded(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        value = loss(batch)
        kind = value.device.type
        steps.append(
            {
                "model": {p.device.type for p in model.parameters()},
                "batch": {t.device.type for t in batch.values()},
                "loss": kind,
                "autocast": torch.get_autocast_dtype(kind)
                if torch.is_autocast_enabled(kind)
                else None,
            }
        )
        return value

    monkeypatch.setattr(model, "loss", recorded)
    return steps


@pytest.mark.parametrize(("device", "amp"), DEVICES)
def test_training_runs_on_the_configured_device(
    small_split: Split, device: str, amp: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _sasrec(small_split)
    steps = _record_steps(model, monkeypatch)
    result = train(model, small_split, replace(SMALL, max_epochs=1, device=device, amp=amp))
    bf16 = amp == "bf16" or (amp == "auto" and device == "cuda")
    assert steps and all(
        step
        == {"model": {device}, "batch": {device}, "loss": device, "autocast": None}
        | ({"autocast": torch.bfloat16} if bf16 else {})
        for step in steps
    ), steps[0]
    assert np.isfinite(result.history[0].loss) and result.best_valid >= 0
    assert torch.device(result.device).type == device
    assert result.precision == ("bfloat16" if bf16 else "float32")
    assert {p.device.type for p in model.parameters()} == {"cpu"}  # ready to export


def test_auto_trains_on_the_cpu_without_cuda(
    small_split: Split, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model = _sasrec(small_split)
    steps = _record_steps(model, monkeypatch)
    result = train(model, small_split, replace(SMALL, max_epochs=1, device="auto"))
    assert result.device == "cpu" and result.precision == "float32"
    assert {step["loss"] for step in steps} == {"cpu"}


def test_training_on_cuda_without_cuda_is_a_clear_error(
    small_split: Split, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model = _sasrec(small_split)
    before = {name: t.clone() for name, t in model.state_dict().items()}
    with pytest.raises(RecsysError, match=r"device 'cuda' asked for, but .* sees no CUDA device"):
        train(model, small_split, replace(SMALL, device="cuda"))
    assert all(torch.equal(before[name], t) for name, t in model.state_dict().items())


@pytest.mark.cuda
def test_cuda_scores_and_fp32_training_match_the_cpu(small_split: Split) -> None:
    """Same weights score alike on both; with no dropout a fp32 epoch is the same epoch."""
    config = SASRecConfig(max_len=30, dropout=0.0)
    models = []
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        model = build_model("sasrec", small_split.num_users, small_split.num_items, config=config)
        result = train(model, small_split, replace(SMALL, max_epochs=2, device=device, amp="off"))
        models.append((model, result))
    (cpu_model, cpu_result), (cuda_model, cuda_result) = models
    np.testing.assert_allclose(
        [e.loss for e in cuda_result.history], [e.loss for e in cpu_result.history], rtol=2e-3
    )
    history, users = eval_query_arrays(small_split.valid, np.arange(len(small_split.valid)), 30)
    cpu_scores = torch_scorer(cpu_model)(history, users)
    same_weights_on_cuda = torch_scorer(cpu_model.to("cuda"))(history, users)
    np.testing.assert_allclose(same_weights_on_cuda, cpu_scores, atol=1e-4, rtol=0)
    cuda_scores = torch_scorer(cuda_model.to("cuda"))(history, users)
    np.testing.assert_allclose(cuda_scores, cpu_scores, atol=5e-3, rtol=0)
    assert validate(cuda_model, small_split) == pytest.approx(cuda_result.best_valid)
    assert cuda_result.best_valid == pytest.approx(cpu_result.best_valid, abs=0.02)


@pytest.mark.cuda
def test_bf16_training_on_cuda_stays_close_to_fp32(small_split: Split) -> None:
    losses = {}
    for amp in ("off", "auto"):
        torch.manual_seed(0)
        model = build_model(
            "sasrec", small_split.num_users, small_split.num_items, config=SASRecConfig(max_len=30)
        )
        result = train(model, small_split, replace(SMALL, max_epochs=3, device="cuda", amp=amp))
        losses[amp] = [e.loss for e in result.history]
    assert all(np.isfinite(losses["auto"]))
    np.testing.assert_allclose(losses["auto"], losses["off"], rtol=0.05)


@pytest.mark.cuda
def test_sampled_softmax_with_popularity_trains_on_cuda(
    small_split: Split, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = SASRecConfig(max_len=30, loss="sampled", num_negatives=16, sampler="popularity")
    model = build_model("sasrec", small_split.num_users, small_split.num_items, config=config)
    tables: list[set[str]] = []
    loss = model.loss

    def recorded(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        tables.append({model.objective.cdf.device.type, model.objective.log_q.device.type})
        return loss(batch)

    monkeypatch.setattr(model, "loss", recorded)
    result = train(model, small_split, replace(SMALL, max_epochs=2, device="cuda"))
    assert tables and all(t == {"cuda"} for t in tables)
    assert all(np.isfinite(e.loss) for e in result.history)


def test_training_without_validation_runs_every_epoch_and_keeps_the_last_weights(
    small_split: Split, monkeypatch: pytest.MonkeyPatch
) -> None:
    import recsys.training as training

    def never(*args: object, **kwargs: object) -> float:
        raise AssertionError("a refit must not validate")

    monkeypatch.setattr(training, "validate", never)
    model = _sasrec(small_split)
    result = train(model, small_split, replace(SMALL, max_epochs=3, patience=1), validating=False)
    assert result.epochs_run == result.best_epoch == 3 and result.stopped == "max_epochs"
    assert model.training is False

    from recsys.models.ease import EASEConfig

    ease = build_model(
        "ease", small_split.num_users, small_split.num_items, config=EASEConfig(l2=250.0)
    )
    fitted = train(ease, small_split, SMALL, validating=False)
    assert fitted.epochs_run == 1 and fitted.chosen == {} and fitted.stopped == "fit"


def test_the_recency_setting_reaches_the_families_that_weigh_events_by_recency(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from recsys.experiment import with_recency
    from recsys.models.ease import EASEConfig

    assert with_recency(EASEConfig()).half_life_days is None  # unset: every event alike
    monkeypatch.setenv("RECSYS_RECENCY_HALF_LIFE_DAYS", "3.5")
    assert with_recency(EASEConfig()).half_life_days == 3.5
    assert with_recency(EASEConfig(half_life_days=1.0)).half_life_days == 1.0  # --set wins
    sasrec = SASRecConfig(max_len=30)
    assert with_recency(sasrec) is sasrec  # no half-life to take
