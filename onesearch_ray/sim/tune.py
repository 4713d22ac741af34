"""Tune the cascade's personalised re-rank on the simulator, so the control is the best it can be.

A grid over the facet weights and the re-ranked depth, scored by orders on traffic of its own (the
simulation's seed + 1: not the searches the A/B compares on). The RRF lists are computed once;
each grid point only re-ranks them, so a grid of ~50 points costs seconds.
"""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np

from onesearch_ray.sim.config import RerankConfig, SimulationConfig
from onesearch_ray.sim.session import OUTCOME_COLUMNS, draw_traffic, page_outcome
from onesearch_ray.sim.systems import CascadeSystem
from onesearch_ray.sim.world import World

RERANK_GRID = {
    "depth": (20, 50),
    "brand": (0.0, 0.15, 0.3, 0.6),
    "colour": (0.0, 0.1, 0.2),
    "category": (0.0, 0.1),
}


def tune_rerank(
    world: World,
    cascade: CascadeSystem,
    config: SimulationConfig,
    grid: dict[str, tuple] = RERANK_GRID,
) -> tuple[RerankConfig, list[dict]]:
    """The grid point with the most expected orders on the tuning traffic (ties: the earlier point)
    and every point's expected orders per 1,000 searches; ``cascade`` is left with the best re-rank."""
    traffic = draw_traffic(world, replace(config, seed=config.seed + 1))
    requests = traffic.requests(world, range(len(traffic)))
    fused = [
        ranked
        for start in range(0, len(requests), config.batch_size)
        for ranked in cascade.fuse(requests[start : start + config.batch_size])
    ]
    # Expected orders, not drawn ones: the grid's points differ by little, and the draws' noise
    # would pick a point by luck.
    orders = OUTCOME_COLUMNS.index("expected_orders")
    results = []
    for values in itertools.product(*grid.values()):
        point = dict(zip(grid, values, strict=True))
        cascade.set_rerank(RerankConfig(**point))
        total = sum(
            page_outcome(
                world, traffic, i, r.query_id, cascade.personalise(ranked, r.user_id), config.page_size
            )[orders]
            for i, (r, ranked) in enumerate(zip(requests, fused, strict=True))
        )
        results.append({**point, "expected_orders_per_1k": float(1000 * total / len(traffic))})
    best = int(np.argmax([r["expected_orders_per_1k"] for r in results]))
    chosen = RerankConfig(**{k: results[best][k] for k in grid})
    cascade.set_rerank(chosen)
    return chosen, results
