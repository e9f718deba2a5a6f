"""Tuning: studies in our database (SQLite and PostgreSQL), resumed, pruned through the one
training loop, recorded, and blind to the test set."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import optuna
import pytest
from sqlalchemy import Engine, inspect

from recsys import tuned
from recsys.data.splits import Split
from recsys.errors import RecsysError
from recsys.models import MODELS, build_model
from recsys.models.space import Choice, FloatRange, IntRange
from recsys.training import TrainConfig, train
from recsys.tune_report import write_report
from recsys.tuning import default_trial, storage, study_name, tune

# A few epochs on the tiny split: enough for the pruner to compare trials, seconds to run.
QUICK = {"max_epochs": 4, "patience": 2, "threads": 1}


class Untouchable:
    """A test set that fails on any use: tuning must never read it."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"tuning read the test set ({name})")

    def __len__(self) -> int:
        raise AssertionError("tuning read the test set (len)")


@pytest.fixture
def blind(small_split: Split) -> Split:
    return dataclasses.replace(small_split, test=Untouchable())  # type: ignore[arg-type]


def test_every_search_space_names_fields_of_its_config_or_of_training() -> None:
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for name, model_spec in MODELS.items():
        model_fields = {f.name for f in dataclasses.fields(model_spec.config)}
        for key, dimension in model_spec.search_space.items():
            assert key in model_fields | train_fields, f"{name}: {key}"
            assert isinstance(dimension, IntRange | FloatRange | Choice)
    assert MODELS["ease"].search_space["l2"] == FloatRange(1.0, 1e5, log=True)
    assert {"embedding_dim", "num_blocks", "num_heads", "dropout", "max_len"} <= set(
        MODELS["sasrec"].search_space
    )
    assert not MODELS["pop"].search_space


@pytest.mark.slow
def test_tune_selects_on_validation_only_and_resumes_its_study(
    engine: Engine, blind: Split, one_thread: None
) -> None:
    first = tune(engine, "gru4rec", blind, "d" * 64, trials=2, train_overrides=QUICK)
    assert first.finished == 2 and first.ran == 2
    assert first.study_name == study_name("gru4rec", "loo", "d" * 64)
    complete = [t for t in first.trials if t["state"] == "COMPLETE"]
    # The objective is the best epoch's validation score the loop reported, nothing else.
    for trial in complete:
        assert trial["value"] == pytest.approx(max(trial["epochs"]))
    assert first.best_valid == max(t["value"] for t in complete)

    # The same study, resumed (a crash, another worker): two more trials make four.
    again = tune(engine, "gru4rec", blind, "d" * 64, trials=4, train_overrides=QUICK)
    assert again.finished == 4 and again.ran == 2
    assert [t["number"] for t in again.trials] == [0, 1, 2, 3]
    done = tune(engine, "gru4rec", blind, "d" * 64, trials=4, train_overrides=QUICK)
    assert done.ran == 0


def test_optuna_tables_stay_out_of_ours(engine: Engine) -> None:
    ours = set(inspect(engine).get_table_names())
    optuna.create_study(study_name="apart", storage=storage(engine))
    assert set(inspect(engine).get_table_names()) == ours
    assert "apart" in optuna.study.get_all_study_names(storage(engine))


def test_ease_tunes_l2_on_a_continuous_log_range(
    engine: Engine, blind: Split, one_thread: None
) -> None:
    result = tune(engine, "ease", blind, "e" * 64, trials=3)
    values = [t["params"]["l2"] for t in result.trials]
    assert len(set(values)) == 3 and all(1.0 <= v <= 1e5 for v in values)
    assert set(result.best_params) == {"l2"}


@pytest.mark.slow
def test_a_trailing_trial_is_pruned_at_an_epoch(
    engine: Engine, blind: Split, one_thread: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prune from the first comparable epoch, so few trials show it.
    monkeypatch.setattr("recsys.tuning.STARTUP_TRIALS", 1)
    monkeypatch.setattr("recsys.tuning.WARMUP_EPOCHS", 0)
    result = tune(engine, "gru4rec", blind, "p" * 64, trials=8, train_overrides=QUICK)
    pruned = [t for t in result.trials if t["state"] == "PRUNED"]
    assert pruned, "the median pruner stopped no trial"
    # A trial trailing only at its last epoch is pruned there; some stop before it.
    assert all(len(t["epochs"]) <= QUICK["max_epochs"] for t in pruned)
    assert any(len(t["epochs"]) < QUICK["max_epochs"] for t in pruned)


def test_best_trial_is_recorded_and_read_back_as_settings(
    engine: Engine, blind: Split, tmp_path: Path, one_thread: None
) -> None:
    assert tuned.latest(engine, "gru4rec") is None
    result = tune(engine, "gru4rec", blind, "r" * 64, trials=2, train_overrides=QUICK)
    settings = tuned.record(engine, result.settings())
    found = tuned.latest(engine, "gru4rec")
    assert found is not None and found.id == settings.id
    assert found.params == result.best_params and found.snapshot_digest == "r" * 64
    config, train = tuned.split_params("gru4rec", found.params)
    assert config.embedding_dim == result.best_params["embedding_dim"]
    assert train["learning_rate"] == result.best_params["learning_rate"]

    markdown, png, report = write_report(result, found, home=tmp_path)
    assert png.read_bytes().startswith(b"\x89PNG")
    assert markdown.read_text() == report and png.name in report
    assert "| trial | state | valid |" in report


def test_nothing_to_tune_and_no_test_set_needed(engine: Engine, blind: Split) -> None:
    with pytest.raises(RecsysError, match="nothing to tune"):
        tune(engine, "pop", blind, "x" * 64, trials=1)
    with pytest.raises(RecsysError, match="unknown fields"):
        tuned.split_params("sasrec", {"embedding_size": 3})


def test_two_workers_share_one_study_on_postgresql(
    fresh_postgres_url: str, blind: Split, one_thread: None
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from recsys.db.engine import create_engine
    from recsys.db.migrate import upgrade

    engine = create_engine(fresh_postgres_url)
    upgrade(engine)

    def worker(_: int) -> int:
        return tune(engine, "ease", blind, "w" * 64, trials=6).ran

    with ThreadPoolExecutor(2) as pool:
        ran = list(pool.map(worker, range(2)))
    trials = optuna.load_study(
        study_name=study_name("ease", "loo", "w" * 64), storage=storage(engine)
    ).get_trials()
    # Each stops once the study has six; the other may be finishing one more meanwhile.
    assert 6 <= len(trials) <= 7 and sum(ran) == len(trials)
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    engine.dispose()


@pytest.mark.slow
def test_a_crashed_workers_running_trial_is_failed_and_the_study_goes_on(
    engine: Engine, blind: Split, one_thread: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    monkeypatch.setattr("recsys.tuning.HEARTBEAT_SECONDS", 1)  # stale after 2 s unheard
    name = study_name("ease", "loo", "c" * 64)
    crashed = optuna.create_study(study_name=name, storage=storage(engine), direction="maximize")
    trial = crashed.ask()  # a worker began this trial, beat once, then died
    crashed._storage.record_heartbeat(trial._trial_id)  # type: ignore[attr-defined]
    time.sleep(2.5)
    result = tune(engine, "ease", blind, "c" * 64, trials=2)
    states = {t["number"]: t["state"] for t in result.trials}
    assert states[trial.number] == "FAIL"
    assert result.finished == 2 and result.ran == 2


def test_a_tuned_ease_l2_is_trained_as_it_is(small_split: Split) -> None:
    """The retrain builds EASE from tuned settings with ``l2`` set: one fit, no search."""
    config, train_params = tuned.split_params("ease", {"l2": 37.5})
    model = build_model("ease", small_split.num_users, small_split.num_items, config=config)
    result = train(model, small_split, TrainConfig(threads=1, progress=False, **train_params))
    assert result.searched == [] and result.epochs_run == 1
    assert model.config.l2 == 37.5


def test_a_new_study_tries_the_defaults_first(
    engine: Engine, blind: Split, one_thread: None
) -> None:
    point = default_trial("sasrec")
    assert point == {
        "embedding_dim": 128,
        "num_blocks": 2,
        "num_heads": 2,
        "dropout": 0.5,
        "max_len": 200,
        "learning_rate": 2e-3,
        "weight_decay": 1e-6,  # no zero on a log scale: the nearest bound
        "batch_size": 128,
    }
    assert default_trial("ease") == {}  # l2 unset by default: nothing to start from
    result = tune(engine, "gru4rec", blind, "d" * 64, trials=2, train_overrides=QUICK)
    first = min(result.trials, key=lambda t: t["number"])
    assert first["params"] == default_trial("gru4rec")
