"""Simulated A/B tests on the synthetic world: users with known preferences search against several
systems; clicks and orders follow the generator's behaviour model (``onesearch simulate``)."""

from onesearch_ray.sim.ab import simulate
from onesearch_ray.sim.config import RerankConfig, SimulationConfig
from onesearch_ray.sim.systems import (
    CascadeSystem,
    OracleSystem,
    RandomSystem,
    SearchSystem,
    ServiceSystem,
    SimRequest,
)
from onesearch_ray.sim.world import World

__all__ = [
    "CascadeSystem",
    "OracleSystem",
    "RandomSystem",
    "RerankConfig",
    "SearchSystem",
    "ServiceSystem",
    "SimRequest",
    "SimulationConfig",
    "World",
    "simulate",
]
