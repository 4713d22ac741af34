"""Ray wiring shared by the jobs: the cluster connection."""

from __future__ import annotations

import logging
import os

import ray


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to ``address`` (or RAY_ADDRESS, as under ``ray job submit``), else start a local cluster.

    No OMP_WAIT_POLICY is forced on workers: PASSIVE makes every small torch op wake sleeping
    OpenMP threads, which slowed tiny-model SFT steps 1.7x (the test script sets it for itself).
    """
    if ray.is_initialized():
        return
    kwargs = {"address": address} if address else {}
    if not address and not os.environ.get("RAY_ADDRESS") and num_cpus:
        kwargs["num_cpus"] = num_cpus
    ray.init(
        **kwargs,
        logging_level=logging.WARNING,
        runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1"}},
    )
    ray.data.DataContext.get_current().enable_progress_bars = bool(
        os.environ.get("ONESEARCH_PROGRESS", "1") == "1"
    )
