"""The A/B session loop: one seeded stream of searches, replayed against every system.

Each simulated search is a user of the world issuing a query; the system under test returns a
page of items; the user clicks and orders by the generator's behaviour model. All systems see the
same searches and the same random draws per position (common random numbers), so their
differences are paired and not noise from different traffic. Searches are independent: a
simulated click does not enter the user's history for a later search.

Traffic mix: a user is picked by log activity (users absent from the log still search); a share
``cold_user_fraction`` of the users is served as new users (no user id, no history), all their
searches included. A share ``long_tail_share`` of the searches issues a rare query (seen at most
``long_tail_max_count`` times in the log: valid/test queries and rare train queries, uniformly),
the rest a head query by its log frequency; like the log, a share ``preferred_query_fraction``
stays within the user's preferred categories.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import psutil

from onesearch_ray.sim.config import SimulationConfig
from onesearch_ray.sim.systems import FeedbackRecorder, SearchSystem, SimRequest
from onesearch_ray.sim.world import World

log = logging.getLogger(__name__)

# Per-search outcome columns; the cold_* columns count only the world's cold items.
OUTCOME_COLUMNS = (
    "impressions",
    "clicks",
    "orders",
    "relevance_sum",
    "expected_orders",
    "cold_impressions",
    "cold_clicks",
    "cold_orders",
    "cold_relevance_sum",
    "cold_expected_orders",
)


@dataclass
class Traffic:
    """The searches of one simulation, shared by every system."""

    user: np.ndarray  # row in the users table
    query: np.ndarray  # row in the queries table
    cold_user: np.ndarray  # per user: served without id or history
    u_click: np.ndarray  # (searches, page) uniform draws per position
    u_order: np.ndarray

    def __len__(self) -> int:
        return len(self.user)

    def requests(self, world: World, rows: Sequence[int]) -> list[SimRequest]:
        return [
            SimRequest(
                query_id=int(world.query_ids[self.query[i]]),
                query=world.query_texts[self.query[i]],
                user_id=None if self.cold_user[self.user[i]] else world.user_ids[self.user[i]],
            )
            for i in rows
        ]


def long_tail_queries(world: World, config: SimulationConfig) -> np.ndarray:
    """Rows of the queries seen at most ``long_tail_max_count`` times in the log."""
    return np.flatnonzero(world.query_log_count <= config.long_tail_max_count)


def draw_traffic(world: World, config: SimulationConfig) -> Traffic:
    """``config.searches`` searches, deterministic given ``config.seed``."""
    rng = np.random.default_rng(config.seed)
    cold_user = rng.random(world.n_users) < config.cold_user_fraction
    cold_user |= np.array([u not in world.behaviour_index for u in world.user_ids])
    users = rng.choice(world.n_users, size=config.searches, p=world.user_activity / world.user_activity.sum())
    tail = np.zeros(len(world.query_ids), dtype=bool)
    tail[long_tail_queries(world, config)] = True
    pools = {True: (np.flatnonzero(tail), None), False: (np.flatnonzero(~tail), world.query_log_count[~tail])}
    queries = np.array([_choose_query(world, config, pools, int(u), rng) for u in users], dtype=np.int64)
    shape = (config.searches, config.page_size)
    return Traffic(users, queries, cold_user, rng.random(shape), rng.random(shape))


def _choose_query(
    world: World,
    config: SimulationConfig,
    pools: dict[bool, tuple[np.ndarray, np.ndarray | None]],
    user: int,
    rng: np.random.Generator,
) -> int:
    use_tail = rng.random() < config.long_tail_share
    rows, weights = pools[use_tail] if len(pools[use_tail][0]) else pools[not use_tail]
    weights = np.ones(len(rows)) if weights is None else weights.astype(np.float64)
    preferred = world.preferences[0][user, world.query_category[rows]]
    if preferred.any() and rng.random() < config.preferred_query_fraction:
        weights = weights * preferred
    return int(rows[rng.choice(len(rows), p=weights / weights.sum())])


@dataclass
class SystemRun:
    """One system's outcomes on the traffic: ``outcomes`` (searches, OUTCOME_COLUMNS) and its cost."""

    outcomes: np.ndarray
    cpu_seconds: float
    wall_seconds: float


def cpu_times_by_process() -> dict[int, float]:
    """CPU time (user + system) of this process and of each of its live child processes, by pid (an
    engine that decodes in a child, as vLLM's engine core can, is counted): see :func:`cpu_used`."""
    process = psutil.Process(os.getpid())
    times = {process.pid: sum(process.cpu_times()[:2])}
    for child in process.children(recursive=True):
        try:
            times[child.pid] = sum(child.cpu_times()[:2])
        except psutil.NoSuchProcess:
            continue
    return times


def cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds between two :func:`cpu_times_by_process` snapshots: each process's own increase (a
    child started meanwhile counts whole, as does one that took the pid of a child that ended; one
    that ended meanwhile drops out, so that its whole past never comes off the sum)."""
    used = 0.0
    for pid, seconds in after.items():
        earlier = before.get(pid, 0.0)
        used += seconds - earlier if seconds >= earlier else seconds
    return used


def run_system(system: SearchSystem, world: World, traffic: Traffic, config: SimulationConfig) -> SystemRun:
    """Replay ``traffic`` against ``system``: pages, then the users' clicks and orders."""
    outcomes = np.zeros((len(traffic), len(OUTCOME_COLUMNS)))
    recorder = system if isinstance(system, FeedbackRecorder) else None
    cpu = wall = 0.0
    for start in range(0, len(traffic), config.batch_size):
        rows = range(start, min(start + config.batch_size, len(traffic)))
        requests = traffic.requests(world, rows)
        cpu_start, wall_start = cpu_times_by_process(), time.perf_counter()
        pages = system.search(requests, config.page_size)
        cpu += cpu_used(cpu_start, cpu_times_by_process())
        wall += time.perf_counter() - wall_start
        unknown = {int(item) for page in pages for item in page} - world.item_set
        if unknown:
            raise ValueError(
                f"system {system.name!r} returned item ids not in the catalogue: {sorted(unknown)[:5]}"
            )
        for row, (i, request, page) in enumerate(zip(rows, requests, pages, strict=True)):
            events = page_events(world, traffic, i, request.query_id, page, config.page_size)
            outcomes[i] = events.outcome(world)
            if recorder is not None:
                recorder.record_feedback(row, events.clicked_items(), events.ordered_items())
        if start // config.batch_size % 25 == 0:
            log.info("%s: %d / %d searches", system.name, rows[-1] + 1, len(traffic))
    return SystemRun(outcomes, cpu, wall)


@dataclass
class PageEvents:
    """What one simulated user did with one page: the items shown (best first) and, per item, its
    relevance, whether it was clicked and ordered, and its P(order) under the behaviour model."""

    shown: list[int]
    relevance: np.ndarray
    clicked: np.ndarray
    ordered: np.ndarray
    p_order: np.ndarray

    def clicked_items(self) -> list[int]:
        return [item for item, hit in zip(self.shown, self.clicked, strict=True) if hit]

    def ordered_items(self) -> list[int]:
        return [item for item, hit in zip(self.shown, self.ordered, strict=True) if hit]

    def outcome(self, world: World) -> np.ndarray:
        """The page's OUTCOME_COLUMNS."""
        if not self.shown:
            return np.zeros(len(OUTCOME_COLUMNS))
        cold = np.array([item in world.cold_items for item in self.shown])
        return np.array(
            [
                len(self.shown),
                self.clicked.sum(),
                self.ordered.sum(),
                self.relevance.sum(),
                self.p_order.sum(),
                cold.sum(),
                (self.clicked & cold).sum(),
                (self.ordered & cold).sum(),
                self.relevance[cold].sum(),
                self.p_order[cold].sum(),
            ],
            dtype=np.float64,
        )


def page_events(
    world: World, traffic: Traffic, i: int, query_id: int, page: Sequence[int], page_size: int
) -> PageEvents:
    """The user of search ``i`` of ``traffic`` shown the first ``page_size`` distinct items of ``page``."""
    shown = [int(item) for item in dict.fromkeys(page)][:page_size]
    if not shown:
        empty = np.zeros(0)
        return PageEvents([], empty, empty.astype(bool), empty.astype(bool), empty)
    relevance, clicked, ordered, p_order = world.outcome(
        int(traffic.user[i]), query_id, shown, traffic.u_click[i], traffic.u_order[i]
    )
    return PageEvents(shown, relevance, clicked, ordered, p_order)


def page_outcome(
    world: World, traffic: Traffic, i: int, query_id: int, page: Sequence[int], page_size: int
) -> np.ndarray:
    """OUTCOME_COLUMNS of search ``i`` of ``traffic`` showing the first ``page_size`` of ``page``."""
    return page_events(world, traffic, i, query_id, page, page_size).outcome(world)
