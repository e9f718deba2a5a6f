"""Everything a page needs, made once per process: the engine, the settings, the values kept
fresh in the background (computed in the worker process), the champion's artifact, the admin
check, the explorer and the Prefect API."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Hashable
from functools import partial

from sqlalchemy import Engine

from recsys.config import Settings
from ui import computed
from ui.artifacts import ArtifactCache
from ui.auth import Admins
from ui.cache import Keyed, Refreshing
from ui.explorer import Explorer
from ui.prefect_api import PrefectApi
from ui.worker import Worker

# How old a value may get before a page starts a new computation, and after a change in the
# store how soon it may be recomputed (at least; ten times its last computation, see
# ui.cache).
DATA_MAX_AGE, DATA_MIN_AGE = 600.0, 2.0
ONLINE_MAX_AGE, ONLINE_MIN_AGE = 120.0, 2.0
# How long a page waits for a value that has never been computed (the first visit after a
# start, on a large store: counting 1M events takes seconds) before it renders without it,
# saying so and reloading itself (ui/templates/base.html), so no page takes longer than that.
FIRST_WAIT = 0.05
SAID_KEPT = 100  # messages of the latest actions, for the pages they redirect to


class Dashboard:
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        prefect: PrefectApi | None = None,
        *,
        first_wait: float = FIRST_WAIT,
    ) -> None:
        self.settings = settings
        self.first_wait = first_wait
        self.engine = engine
        self.worker = Worker(settings)
        self.data: Refreshing[computed.DataSummary] = Refreshing(
            "data",
            partial(self.worker.call, "data"),
            token=partial(computed.data_token, engine),
            max_age=DATA_MAX_AGE,
            min_age=DATA_MIN_AGE,
            wait=first_wait,
        )
        self.online: Keyed[computed.OnlineView] = Keyed("online", self._online)
        self.experiments: Keyed[computed.ExperimentView] = Keyed("experiment", self._experiment)
        self.drift: Refreshing[computed.DriftView] = Refreshing(
            "drift",
            partial(self.worker.call, "drift"),
            token=partial(computed.online_token, engine),
            max_age=ONLINE_MAX_AGE,
            min_age=ONLINE_MIN_AGE,
            wait=self.first_wait,
        )
        self.artifacts = ArtifactCache(engine)
        self.admins = Admins(engine, settings.admin_secret)
        self.explorer = Explorer(settings, engine, self.artifacts)
        self.prefect = prefect
        self._said: dict[str, str] = {}
        self._said_lock = threading.Lock()

    def _online(self, key: Hashable) -> Refreshing[computed.OnlineView]:
        return Refreshing(
            f"online-{key}",
            partial(self.worker.call, "online", str(key)),
            token=partial(computed.online_token, self.engine),
            max_age=ONLINE_MAX_AGE,
            min_age=ONLINE_MIN_AGE,
            wait=self.first_wait,
        )

    def _experiment(self, key: Hashable) -> Refreshing[computed.ExperimentView]:
        assert isinstance(key, int)
        return Refreshing(
            f"experiment-{key}",
            partial(self.worker.call, "experiment", key),
            token=partial(computed.online_token, self.engine),
            max_age=ONLINE_MAX_AGE,
            min_age=ONLINE_MIN_AGE,
            wait=self.first_wait,
        )

    def warm_up(self) -> None:
        """Start the slow computations now, so the first visitor finds them done."""
        self.data.start()
        self.online[computed.DEFAULT_RANGE].start()
        self.drift.start()

    def changed_online(self) -> None:
        """An action here changed the experiments or the champion: recompute what shows them."""
        self.experiments.invalidate()
        self.drift.invalidate()

    def close(self) -> None:
        self.worker.close()

    def said(self, message: str) -> str:
        """Keep what an action did for the page it leads to; the token that names it (a link
        cannot make the dashboard say what no action did)."""
        token = secrets.token_urlsafe(12)
        with self._said_lock:
            self._said[token] = message
            while len(self._said) > SAID_KEPT:
                self._said.pop(next(iter(self._said)))
        return token

    def saying(self, token: str | None) -> str | None:
        with self._said_lock:
            return None if token is None else self._said.get(token)
