"""A simulated A/B test: the shared traffic against each system, then metrics per slice.

Slices: ``all``; ``cold_start_items`` (searches whose query has a held-out item among its exact
matches, counting only the held-out items' impressions, clicks and orders; absent when the world
has no cold items); ``cold_start_users`` (users served without id or history);
``long_tail_queries`` (queries seen at most ``long_tail_max_count`` times in the log).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict

import numpy as np

from onesearch_ray.sim.config import SimulationConfig
from onesearch_ray.sim.metrics import Slice, compare, user_sums
from onesearch_ray.sim.session import Traffic, draw_traffic, long_tail_queries, run_system
from onesearch_ray.sim.systems import SearchSystem
from onesearch_ray.sim.world import World

log = logging.getLogger(__name__)

CPU_NOTE = (
    "CPU ms per query: user + system CPU time of this process and its live child processes (psutil) "
    "around each batch's search call, divided by the searches; excludes set-up (index, model load, "
    "adding cold items) and the simulated users. vLLM runs in-process here "
    "(VLLM_ENABLE_V1_MULTIPROCESSING=0), so it is included."
)


def simulate(
    world: World, systems: Mapping[str, Callable[[], SearchSystem]], config: SimulationConfig
) -> dict:
    """Run every system (built one at a time, in order; the first is the control) on the same
    traffic; the report: config, world sizes, per-system cost, and per slice the metrics with
    intervals and the differences to the control."""
    if not systems:
        raise ValueError("simulate: no system to compare")
    traffic = draw_traffic(world, config)
    outcomes, info = {}, {}
    for name, build in systems.items():
        started = time.perf_counter()
        system = build()
        setup = time.perf_counter() - started
        log.info("%s: built in %.1f s; simulating %d searches", name, setup, len(traffic))
        run = run_system(system, world, traffic, config)
        outcomes[name] = run.outcomes
        info[name] = {
            "description": system.description,
            "setup_seconds": setup,
            "cpu_ms_per_query": 1000 * run.cpu_seconds / len(traffic),
            "wall_ms_per_query": 1000 * run.wall_seconds / len(traffic),
        }
        del system
    control = next(iter(systems))
    report = {
        "config": asdict(config),
        "world": _world_summary(world, traffic),
        "control": control,
        "cpu_note": CPU_NOTE,
        "systems": info,
        "slices": {},
    }
    for index, piece in enumerate(slices(world, traffic, config)):
        sums = {name: user_sums(o, traffic.user, piece, world.n_users) for name, o in outcomes.items()}
        rng = np.random.default_rng((config.seed, index))
        report["slices"][piece.name] = {
            "n_searches": int(piece.searches.sum()),
            "n_users": int((sums[control][:, 0] > 0).sum()),
            "systems": compare(sums, control, config.bootstrap, config.confidence, rng),
        }
    return report


def slices(world: World, traffic: Traffic, config: SimulationConfig) -> list[Slice]:
    tail = np.zeros(len(world.query_ids), dtype=bool)
    tail[long_tail_queries(world, config)] = True
    out = [Slice("all", np.ones(len(traffic), dtype=bool))]
    if world.cold_items:
        cold = np.array(sorted(world.cold_items))
        exact = {
            q: bool((world.relevance(int(world.query_ids[q]), cold) == 3).any()) for q in set(traffic.query)
        }
        out.append(Slice("cold_start_items", np.array([exact[q] for q in traffic.query]), True))
    out.append(Slice("cold_start_users", traffic.cold_user[traffic.user]))
    out.append(Slice("returning_users", ~traffic.cold_user[traffic.user]))
    out.append(Slice("long_tail_queries", tail[traffic.query]))  # valid/test and rare train queries
    out.append(Slice("head_queries", ~tail[traffic.query]))
    return out


def _world_summary(world: World, traffic: Traffic) -> dict:
    return {
        "track": str(world.track.root),
        "n_items": len(world.item_ids),
        "n_cold_items": len(world.cold_items),
        "n_users": world.n_users,
        "n_cold_users": int(traffic.cold_user.sum()),
        "n_queries": len(world.query_ids),
        "n_searches": len(traffic),
    }
