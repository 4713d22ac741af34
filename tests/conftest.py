"""Shared fixtures: a real local Ray cluster (started with `ray start --head`) and small tracks."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from onesearch_ray.data import SyntheticConfig, write_synthetic
from tests.ray_jobs import RAY, free_port, stop_head, wait_for

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ONESEARCH_PROGRESS", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Ray 2.60's `ray start` enables token auth by default while a driver given an explicit address does
# not; token mode on both sides makes them share Ray's own token file.
os.environ.setdefault("RAY_AUTH_MODE", "token")

SMALL_TRACK = SyntheticConfig(seed=3, n_items=400, n_users=40, n_queries=120, n_sessions=600)


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """A head node started as a user would (`ray start --head`); yields (gcs_address, dashboard_url).

    It runs under `ray start --block` with a temp dir of its own, and teardown stops exactly its
    processes (`stop_head`): other Ray clusters on the machine, a user's own jobs, are left running.
    """
    import ray

    port, dashboard_port = free_port(), free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray_")  # short: Ray's socket paths (<= 107 bytes) live under it
    log = tmp_path_factory.mktemp("ray_start") / "ray_start.log"
    command = [RAY, "start", "--head", "--block", f"--port={port}", "--num-cpus=2", f"--temp-dir={temp_dir}"]
    command += [f"--dashboard-port={dashboard_port}", "--dashboard-host=127.0.0.1", "--disable-usage-stats"]
    command += ["--include-dashboard=true"]
    # Ports of its own for the agents: the defaults (e.g. 52365 for the job agent) are taken when
    # another Ray cluster runs on the machine, and `ray job submit` then finds no agent.
    for agent in ("dashboard-agent-listen", "dashboard-agent-grpc", "runtime-env-agent", "metrics-export"):
        command.append(f"--{agent}-port={free_port()}")
    with log.open("wb") as out:
        head = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=os.environ.copy())
    try:
        wait_for(
            lambda: "Ray runtime started" in log.read_text() or head.poll() is not None, 180, "ray start"
        )
        if head.poll() is not None:
            raise RuntimeError(f"ray start --head failed:\n{log.read_text()[-3000:]}")
        ray.init(address=f"127.0.0.1:{port}", logging_level="WARNING")
        yield f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard_port}"
    finally:
        ray.shutdown()
        stop_head(head, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def small_track(tmp_path_factory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("track") / "synthetic", SMALL_TRACK)


@pytest.fixture(scope="session")
def encoded_small_run(ray_cluster, small_track, tmp_path_factory) -> Path:
    """The small synthetic track after `encode` (KHQE on the real Ray cluster)."""
    from onesearch_ray.khqe import KHQEConfig
    from pipelines import prepare

    run = tmp_path_factory.mktemp("encoded") / "run"
    prepare.prepare(small_track, run, KHQEConfig())
    return run


@pytest.fixture(scope="session")
def generator_small_run(encoded_small_run, small_track, tmp_path_factory) -> Path:
    """A copy of the encoded small run with the CPU-first generator trained briefly (in process) as
    RUN/generator, and its untrained start as RUN/generator-untrained (a second model to swap to)."""
    from onesearch_ray.data import load_track
    from onesearch_ray.generator.catalogue import build_generator, load_catalogue
    from onesearch_ray.generator.config import GeneratorJobConfig
    from onesearch_ray.generator.job import train_on_worker
    from onesearch_ray.generator.store import save_generator

    run = tmp_path_factory.mktemp("generator") / "run"
    shutil.copytree(encoded_small_run, run)
    config = GeneratorJobConfig(select_queries=20)
    config.train.epochs, config.train.batch_size = 1, 64
    train_on_worker(run, small_track, config)
    catalogue = load_catalogue(run, load_track(small_track))
    save_generator(build_generator(catalogue, config.model), catalogue.item_ids, run / "generator-untrained")
    return run


@pytest.fixture(scope="session")
def toy_sids():
    """SIDs of 300 random 16-d vectors, layout 16-16-16+opq2x16: for tokenizer and model tests."""
    import numpy as np

    from onesearch_ray.khqe import QuantizerConfig, SemanticIdTokenizer

    vectors = np.random.default_rng(0).standard_normal((300, 16)).astype(np.float32)
    return SemanticIdTokenizer.fit(np.arange(300), vectors, config=QuantizerConfig(layout="16-16-16+opq2x16"))


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (``--dist loadgroup``, scripts/test.sh) a file's tests stay on one worker, as
    they share its module fixtures; the interrupt tests each start processes of their own, so they
    spread over the workers (one file of them is the suite's longest)."""
    for item in items:
        if item.path.name != "test_interrupt.py":
            item.add_marker(pytest.mark.xdist_group(item.path.stem))
