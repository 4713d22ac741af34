"""Ctrl-C stops a training run at once: `onesearch train` on its own local Ray cluster, as the
quickstart runs it, gets one SIGINT mid-stage and exits, leaving no Ray process behind."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest

from onesearch_ray.train import checkpoints
from tests.ray_jobs import REPO, ray_processes, wait_for


@pytest.mark.slow
def test_one_ctrl_c_stops_training_and_its_ray_cluster(encoded_small_run, small_track, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(encoded_small_run, run, ignore=shutil.ignore_patterns("sft", "model"))
    config = tmp_path / "train.yaml"
    config.write_text(
        "train:\n  num_workers: 1\n  cpus_per_worker: 1\n  model: {size: tiny}\n"
        "  tokenizer_vocab_size: 1000\n  stages:\n"
        "    alignment: {max_steps: 5000, batch_size: 8, checkpoint_every: 5, log_every: 5}\n"
    )
    ray_tmp = tempfile.mkdtemp(prefix="ray_int_")  # short: Ray's socket paths live under it
    env = {**os.environ, "RAY_TMPDIR": ray_tmp}
    env.pop("RAY_ADDRESS", None)  # a local cluster of its own, as `onesearch quickstart` starts
    command = [sys.executable, "-m", "pipelines.cli", "train", "--run", str(run), "--data", str(small_track)]
    command += ["--stage", "alignment", "--config", str(config)]
    log = tmp_path / "driver.log"  # a file, not a pipe: Ray's output would fill a pipe and block it
    # A session of its own, so the SIGINT goes to its whole process group as a terminal's Ctrl-C does.
    with log.open("wb") as out:
        driver = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        stage_dir = run / "sft/alignment"

        def checkpointed_or_ended() -> bool:
            return checkpoints.latest(stage_dir) is not None or driver.poll() is not None

        wait_for(checkpointed_or_ended, 600, "a first checkpoint")
        assert driver.poll() is None, log.read_text()[-3000:]
        assert ray_processes(ray_tmp), "the driver's Ray cluster should be running"

        os.killpg(driver.pid, signal.SIGINT)  # once
        driver.wait(timeout=120)
        output = log.read_text()
        assert driver.returncode == 130, output[-3000:]
        assert "onesearch train: interrupted; rerun the same command to resume" in output
        assert checkpoints.read_state(checkpoints.latest(stage_dir))["step"] < 5000
        wait_for(lambda: not ray_processes(ray_tmp), 30, "the driver's Ray processes to end")
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        shutil.rmtree(ray_tmp, ignore_errors=True)
