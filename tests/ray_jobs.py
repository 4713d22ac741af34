"""Helpers for tests that drive `ray job submit` against the session cluster, as a user would."""

from __future__ import annotations

import os
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
            return next(word for word in result.stdout.split() if word.startswith("raysubmit_"))
        if "No available agent" not in result.stderr or time.time() > deadline:
            raise AssertionError(result.stderr[-3000:])
        time.sleep(3)


def status(dashboard: str, job_id: str) -> str:
    result = subprocess.run(
        [RAY, "job", "status", "--address", dashboard, job_id], capture_output=True, text=True
    )
    out = result.stdout + result.stderr  # the CLI logs the status to stderr
    return next((s for s in TERMINAL if s in out), "RUNNING")


def logs(dashboard: str, job_id: str) -> str:
    result = subprocess.run(
        [RAY, "job", "logs", "--address", dashboard, job_id], capture_output=True, text=True
    )
    return result.stdout + result.stderr


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(2)
    raise AssertionError(f"timed out waiting for {what}")
