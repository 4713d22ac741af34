"""SFT on Ray Train: a 2-worker DDP job sent with `ray job submit` to a `ray start --head` cluster,
stopped mid-stage, resubmitted, resumed from its last checkpoint, completed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from onesearch_ray.model import load_model
from onesearch_ray.train import checkpoints

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def submit(dashboard: str, args: list[str]) -> str:
    result = subprocess.run(
        [
            RAY,
            "job",
            "submit",
            "--address",
            dashboard,
            "--no-wait",
            "--",
            sys.executable,
            "-m",
            "pipelines.train",
            *args,
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        env={**os.environ, "RAY_ADDRESS": ""},
    )
    assert result.returncode == 0, result.stderr
    return next(word for word in result.stdout.split() if word.startswith("raysubmit_"))


def job_status(dashboard: str, job_id: str) -> str:
    result = subprocess.run(
        [RAY, "job", "status", "--address", dashboard, job_id], capture_output=True, text=True
    )
    out = result.stdout + result.stderr  # the CLI logs the status to stderr
    return next((s for s in TERMINAL if s in out), "RUNNING")


def job_logs(dashboard: str, job_id: str) -> str:
    return subprocess.run(
        [RAY, "job", "logs", "--address", dashboard, job_id], capture_output=True, text=True
    ).stdout


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_two_worker_job_stops_and_resumes(ray_cluster, encoded_small_run, small_track, tmp_path):
    _, dashboard = ray_cluster
    config = tmp_path / "train.yaml"
    config.write_text(
        "train:\n  num_workers: 2\n  cpus_per_worker: 1\n  model: {size: tiny}\n"
        "  tokenizer_vocab_size: 1000\n  stages:\n"
        "    alignment: {max_steps: 120, batch_size: 8, checkpoint_every: 10, log_every: 10}\n"
    )
    args = [
        "--run",
        str(encoded_small_run),
        "--data",
        str(small_track),
        "--stage",
        "alignment",
        "--config",
        str(config),
    ]
    stage_dir = encoded_small_run / "sft/alignment"

    first = submit(dashboard, args)
    wait_for(
        lambda: checkpoints.latest(stage_dir) is not None or job_status(dashboard, first) in TERMINAL,
        240,
        "a first checkpoint",
    )
    subprocess.run([RAY, "job", "stop", "--address", dashboard, first], capture_output=True, timeout=60)
    wait_for(lambda: job_status(dashboard, first) in TERMINAL, 60, "the job to stop")
    stopped_at = checkpoints.read_state(checkpoints.latest(stage_dir))["step"]
    assert 10 <= stopped_at < 120, f"stopped at {stopped_at}: the stop came too late to test resuming"

    second = submit(dashboard, args)
    wait_for(lambda: job_status(dashboard, second) in TERMINAL, 300, "the resumed job")
    logs = job_logs(dashboard, second)
    assert job_status(dashboard, second) == "SUCCEEDED", logs[-3000:]
    assert "resuming from step_" in logs
    final = checkpoints.latest(stage_dir)
    assert checkpoints.read_state(final)["step"] == 120
    logged_steps = [
        json.loads(line)["step"] for line in (stage_dir / "metrics.jsonl").read_text().splitlines()
    ]
    assert logged_steps[-1] == 120 and len(logged_steps) < 2 * 12  # resumed, not restarted from zero
    model, tokenizer = load_model(encoded_small_run / "model/alignment")  # the stage's final HF model
    assert model.config.architectures == ["Qwen3ForCausalLM"] and len(tokenizer) == model.config.vocab_size
    assert (encoded_small_run / "model/latest.json").exists()
