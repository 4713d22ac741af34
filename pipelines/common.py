"""Ray wiring shared by the jobs: cluster connection and quiet faiss/OpenMP defaults."""

from __future__ import annotations

import logging
import os

import ray


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to ``address`` (or RAY_ADDRESS, as under ``ray job submit``), else start a local cluster."""
    # faiss' OpenMP threads spin-wait and starve other work on small machines.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if ray.is_initialized():
        return
    kwargs = {"address": address} if address else {}
    if not address and not os.environ.get("RAY_ADDRESS") and num_cpus:
        kwargs["num_cpus"] = num_cpus
    ray.init(
        **kwargs,
        logging_level=logging.WARNING,
        runtime_env={"env_vars": {"OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1"}},
    )
    ray.data.DataContext.get_current().enable_progress_bars = bool(
        os.environ.get("ONESEARCH_PROGRESS", "1") == "1"
    )
