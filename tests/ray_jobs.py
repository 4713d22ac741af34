"""Helpers for tests that drive `ray job submit` against the session cluster, as a user would."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def submit(dashboard: str, module: str, args: list[str], timeout: float = 120) -> str:
    """Submit ``python -m module args``; retries while the fresh cluster's job agent is not up yet."""
    command = [
        RAY,
        "job",
        "submit",
        "--address",
        dashboard,
        "--no-wait",
        "--",
        sys.executable,
        "-m",
        module,
        *args,
    ]
    deadline = time.time() + timeout
    while True:
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=120,
            env={**os.environ, "RAY_ADDRESS": ""},
        )
        if result.returncode == 0:
            return re.search(r"raysubmit_[A-Za-z0-9]+", result.stdout).group(0)
        if "No available agent" not in result.stderr or time.time() > deadline:
            raise AssertionError(result.stderr[-3000:])
        time.sleep(3)


def status(dashboard: str, job_id: str) -> str:
    """SUCCEEDED / FAILED / STOPPED / PENDING / RUNNING (the CLI prints prose; the SDK gives the enum)."""
    from ray.job_submission import JobSubmissionClient

    return str(JobSubmissionClient(dashboard).get_job_status(job_id).value)


def logs(dashboard: str, job_id: str) -> str:
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(dashboard).get_job_logs(job_id)


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(2)
    raise AssertionError(f"timed out waiting for {what}")
