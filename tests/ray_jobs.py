"""Helpers for tests that drive `ray job submit` against the session cluster, as a user would, and
that stop the Ray processes a test started (and only those: never `ray stop`, which ends every
Ray cluster on the machine)."""

from __future__ import annotations

import os
import re
import signal
import socket
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


# Ray's default ports (GCS, client, dashboard, its agents, metrics): a node started without an
# explicit port takes these, so a port handed to a test's server must not be one of them
RAY_DEFAULT_PORTS = frozenset({6379, 8076, 8265, 10001, 44217, 44227, 52365, 52366})


def free_port() -> int:
    """A TCP port free on loopback now (for a server a test starts), never one of Ray's defaults."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in RAY_DEFAULT_PORTS:
            return port


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(2)
    raise AssertionError(f"timed out waiting for {what}")


def ray_processes(temp_dir: str) -> list[int]:
    """Live processes of the Ray node(s) whose temp dir is ``temp_dir`` (``--temp-dir``, or
    ``RAY_TMPDIR``): each has a path under it in its command line, or (agents and workers, which
    retitle themselves ``ray::...``) its output open in a log file there. Never this process (a
    driver connected to the node has its log open there too)."""
    under = os.path.join(temp_dir, "")
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        if proc.name == str(os.getpid()):
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if under in cmdline or any(os.readlink(fd).startswith(under) for fd in (proc / "fd").iterdir()):
                found.append(int(proc.name))
        except OSError:  # ended meanwhile, or not ours to read
            continue
    return found


def stop_head(head: subprocess.Popen, temp_dir: str, grace: float = 60) -> None:
    """Stop a head node started with ``ray start --head --block --temp-dir=temp_dir``.

    SIGTERM to the blocking ``ray start`` makes it stop the processes it started (its own shutdown
    hook); what of that node still runs after ``grace`` seconds is killed.
    """
    if head.poll() is None:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            head.kill()
    deadline = time.time() + grace
    while ray_processes(temp_dir) and time.time() < deadline:
        time.sleep(1)
    for pid in ray_processes(temp_dir):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
