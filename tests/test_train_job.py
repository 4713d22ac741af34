"""SFT on Ray Train: a 2-worker DDP job sent with `ray job submit` to a `ray start --head` cluster,
stopped mid-stage, resubmitted, resumed from its last checkpoint, completed."""

from __future__ import annotations

import json
import subprocess

import pytest

from onesearch_ray.model import load_model
from onesearch_ray.train import checkpoints
from tests.ray_jobs import RAY, TERMINAL, submit, wait_for
from tests.ray_jobs import logs as job_logs
from tests.ray_jobs import status as job_status


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

    first = submit(dashboard, "pipelines.train", args)
    wait_for(
        lambda: checkpoints.latest(stage_dir) is not None or job_status(dashboard, first) in TERMINAL,
        240,
        "a first checkpoint",
    )
    subprocess.run([RAY, "job", "stop", "--address", dashboard, first], capture_output=True, timeout=60)
    wait_for(lambda: job_status(dashboard, first) in TERMINAL, 60, "the job to stop")
    stopped_at = checkpoints.read_state(checkpoints.latest(stage_dir))["step"]
    assert 10 <= stopped_at < 120, f"stopped at {stopped_at}: the stop came too late to test resuming"

    second = submit(dashboard, "pipelines.train", args)
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
