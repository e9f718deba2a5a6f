"""Experiments in the scorer: a stable split by user and session, arms in every answer and
impression, status with an interval and p-value, stop with the decision, and a challenger
that cannot load leaving all traffic on the champion."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from recsys import registry
from recsys.artifacts import ONNX_FILE
from recsys.db.events import Event
from recsys.online.experiments import ExperimentError, get_experiment, start_experiment
from recsys.online.outcomes import experiment_status, stop_experiment
from serving.impressions import ImpressionLog
from serving.scorer import RecommendQuery, Scorer

sys.path.insert(0, str(Path(__file__).parent))
from conftest import Home, make_home

USERS = [f"u{n}" for n in range(1, 61)]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Home:
    return make_home(tmp_path_factory.mktemp("experiments") / "home")


def _status(home: Home, experiment_id: int) -> object:
    return experiment_status(
        home.engine,
        get_experiment(home.engine, experiment_id),
        click_events=["click"],
        conversion_events=["purchase"],
        window_seconds=3600,
    )


def test_an_experiment_splits_users_stably_and_is_measured(home: Home) -> None:
    challenger = home.register("pop")
    log = ImpressionLog(home.engine, interval=60)
    scorer = Scorer(home.engine, impressions=log)
    scorer.reload()
    assert scorer.refresh_experiment() == {"changed": False, "experiment": None}
    alone = scorer.recommend("u5", k=5)
    assert alone.arm is None and alone.model_version == home.champion

    with pytest.raises(ExperimentError, match="is the champion"):
        start_experiment(home.engine, home.champion, 0.5, actor="tests", reason="x")
    with pytest.raises(ExperimentError, match="between 0 and 1"):
        start_experiment(home.engine, challenger, 1.5, actor="tests", reason="x")
    experiment = start_experiment(home.engine, challenger, 0.5, actor="tests", reason="pop?")
    with pytest.raises(ExperimentError, match="is running: stop it first"):
        start_experiment(home.engine, challenger, 0.2, actor="tests", reason="again")
    assert scorer.refresh_experiment()["changed"] is True
    assert scorer.info()["challenger_version"] == challenger

    answers = {user: scorer.recommend(user, k=5) for user in USERS}
    arms = {user: answer.arm for user, answer in answers.items()}
    assert set(arms.values()) == {"champion", "challenger"}
    for user, answer in answers.items():
        wanted = challenger if experiment.arm(user) == "challenger" else home.champion
        assert (answer.arm, answer.model_version) == (experiment.arm(user), wanted)
    together = scorer.recommend_many([RecommendQuery(user, k=5) for user in USERS])
    assert [(a.arm, a.item_ids) for a in together] == [  # type: ignore[union-attr]
        (answers[u].arm, answers[u].item_ids) for u in USERS
    ]
    restarted = Scorer(home.engine)  # a restart: the same users in the same arms
    restarted.reload()
    restarted.refresh_experiment()
    assert {user: restarted.recommend(user, k=5).arm for user in USERS} == arms
    session = scorer.recommend_session(["i1", "i2"], k=3, session_id="visit-9")
    assert session.arm == experiment.arm("visit-9")
    anonymous = scorer.recommend_session(["i1", "i2"], k=3)
    assert anonymous.arm is None and anonymous.model_version == home.champion

    # Users click the challenger's first item and ignore the champion's.
    clicks = [
        Event(user, answer.item_ids[0], "click", recommendation_id=answer.recommendation_id)
        for user, answer in answers.items()
        if answer.arm == "challenger"
    ]
    scorer.record_events(clicks)
    log.close()
    with home.engine.connect() as conn:
        logged = conn.execute(
            sa.text("SELECT arm, count(*) FROM impressions WHERE experiment_id = :e GROUP BY arm"),
            {"e": experiment.id},
        ).all()
    assert {arm: n for arm, n in logged} == {
        "champion": 2 * list(arms.values()).count("champion") + (session.arm == "champion"),
        "challenger": 2 * list(arms.values()).count("challenger") + (session.arm == "challenger"),
    }
    status = _status(home, experiment.id)
    ctr = status.differences[0]  # type: ignore[attr-defined]
    # Each user saw two lists (alone and batched); the click named one of them.
    assert ctr.metric == "ctr@10" and ctr.a == 0.0 and ctr.b == len(clicks) / ctr.n_b
    assert ctr.ci_low > 0 and ctr.p_value < 0.05

    stopped = stop_experiment(
        home.engine,
        "promote",
        actor="tests",
        reason="users click it",
        status=status,  # type: ignore[arg-type]
    )
    assert (stopped.status, stopped.decision, stopped.decided_by) == ("stopped", "promote", "tests")
    assert stopped.results is not None and stopped.results["differences"][0]["p_value"] < 0.05
    assert registry.alias_version(home.engine, registry.CHAMPION) == challenger
    assert scorer.refresh_experiment() == {"changed": True, "experiment": None}
    assert scorer.recommend("u5", k=5).arm is None
    registry.promote(home.engine, home.champion, actor="tests", reason="back for the next test")


def test_a_challenger_that_cannot_load_leaves_all_traffic_on_the_champion(home: Home) -> None:
    broken = home.register("pop")
    folder = registry.get_version(home.engine, broken).artifact_path
    (Path(folder) / ONNX_FILE).write_bytes(b"not a graph")
    scorer = Scorer(home.engine)
    scorer.reload()
    experiment = start_experiment(home.engine, broken, 0.5, actor="tests", reason="broken")
    outcome = scorer.refresh_experiment()
    assert outcome["changed"] is False and "all traffic stays on the champion" in outcome["error"]
    assert scorer.info()["experiment_error"] == outcome["error"]
    assert "/" not in outcome["error"]  # no paths
    assert {scorer.recommend(u, k=3).model_version for u in USERS[:20]} == {home.champion}
    assert {scorer.recommend(u, k=3).arm for u in USERS[:20]} == {None}
    stop_experiment(
        home.engine, "keep", actor="tests", reason="it does not load",
        status=_status(home, experiment.id),  # type: ignore[arg-type]
    )  # fmt: skip
    assert scorer.refresh_experiment()["experiment"] is None and scorer.experiment_error is None
