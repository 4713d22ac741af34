"""One Ctrl-C stops every phase at once. Each command runs as the quickstart runs it, on a local Ray
cluster of its own, and gets one SIGINT to its process group, as a terminal's Ctrl-C sends: it exits
130 within seconds, leaves a checkpoint a rerun resumes from, and none of its Ray processes running.
Phases: the generator's training (`onesearch generator`) while its Ray Train workers start and while
it checkpoints, evaluation, serving, the demo page, and a layout sweep (`onesearch tune`)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from onesearch_ray.data import load_track
from onesearch_ray.generator.catalogue import build_generator, load_catalogue
from onesearch_ray.generator.config import TrainConfig, load_job_config
from onesearch_ray.generator.job import MODEL_DIR
from onesearch_ray.generator.store import load_generator
from onesearch_ray.generator.train import (
    Example,
    _resume,
    parameter_groups,
    read_training_state,
    train,
    write_training_state,
)
from pipelines.common import wait_for_interrupt
from tests.ray_jobs import REPO, free_port, ray_processes, wait_for

# Issue 18 asks 10 s; 2-10 s measured on 2 shared cores. The bounds leave room for a loaded CI machine
# and still fail a Ctrl-C that was lost (the bug: the driver trained on, indefinitely).
STOPPED_WITHIN_S = 30
RAY_GONE_WITHIN_S = 30
RESUME_HINT = "onesearch generator: interrupted; rerun the same command to resume"
# Training long enough never to finish here (no early stop, no time budget reached), a selection
# score and a checkpoint at every step: the Ctrl-C that follows the first checkpoint lands while
# later ones are being written. Few hash buckets keep each checkpoint a few MB.
GENERATOR_CONFIG = (
    "generator:\n  model: {hash_buckets: 1024}\n  select_queries: 4\n"
    "  train: {epochs: 1000, batch_size: 8, evaluate_every: 1, patience: 0, max_minutes: 600}\n"
)


@pytest.fixture(autouse=True)
def ctrl_c_as_in_a_terminal() -> Iterator[None]:
    """SIGINT handled, as in a terminal's foreground command. A shell without job control (a script,
    a CI step) starts a command with ``&`` with SIGINT ignored, and all it starts inherits that: the
    Ctrl-C under test would do nothing, by design, in pytest and in the commands it runs (with the old
    test, the driver ran on after it)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def ctrl_c_to_another_thread() -> Iterator[None]:
    """A SIGINT that a thread other than the main one receives, as Ray's gRPC thread
    'timer_manager' did in a driver that then trained on: CPython's handler there only flags it.
    It comes a second into the block, once the main thread waits. Should it be lost, the main thread
    gets one too after STOPPED_WITHIN_S: the test fails, not hangs.
    """
    main, stopped = threading.main_thread().ident, threading.Event()

    def receive() -> None:
        time.sleep(1)
        signal.pthread_kill(threading.get_ident(), signal.SIGINT)
        if not stopped.wait(STOPPED_WITHIN_S):
            signal.pthread_kill(main, signal.SIGINT)

    threading.Thread(target=receive, daemon=True).start()
    try:
        yield
    finally:
        stopped.set()


def test_a_ctrl_c_another_thread_receives_stops_wait_for_interrupt():
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt), ctrl_c_to_another_thread():
        wait_for_interrupt()
    assert time.monotonic() - started < STOPPED_WITHIN_S


def test_a_ctrl_c_another_thread_receives_stops_ray_get_on_the_main_thread(ray_cluster):
    """Where `onesearch generator` waits (Ray Train's fit() on the main thread)."""
    import ray

    @ray.remote(num_cpus=0)
    def sleep() -> None:
        time.sleep(2 * STOPPED_WITHIN_S)

    ref = sleep.remote()
    started = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt), ctrl_c_to_another_thread():
            ray.get(ref)
    finally:
        ray.cancel(ref, force=True)
    assert time.monotonic() - started < STOPPED_WITHIN_S


@dataclasses.dataclass
class Command:
    process: subprocess.Popen
    log: Path
    ray_tmp: str

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def onesearch(args: list[str], tmp_path: Path) -> Iterator[Command]:
    """``onesearch ARGS`` in a session of its own, so a SIGINT to its process group reaches all of
    it as a terminal's Ctrl-C does; on exit, whatever of it still runs is killed."""
    ray_tmp = tempfile.mkdtemp(prefix="ray_int_")  # short: Ray's socket paths live under it
    env = {**os.environ, "RAY_TMPDIR": ray_tmp}
    env.pop("RAY_ADDRESS", None)  # a local cluster of its own, as `onesearch quickstart` starts
    log = tmp_path / f"{args[0]}.log"  # a file, not a pipe: Ray's output would fill a pipe and block it
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "onesearch_cli", *args],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield Command(process, log, ray_tmp)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        for pid in ray_processes(ray_tmp):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def wait_until(command: Command, ready, what: str, timeout: float = 600) -> None:
    """Poll ``ready()`` often (the phases to catch can be short) until it holds; the command must
    still be running then."""
    deadline = time.monotonic() + timeout
    while not ready() and command.process.poll() is None:
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{command.output()[-3000:]}"
        time.sleep(0.1)
    assert command.process.poll() is None, f"ended before {what}:\n{command.output()[-3000:]}"


def interrupt(command: Command, kill: bool = False) -> str:
    """One SIGINT to the command's process group (a terminal's Ctrl-C), or with ``kill`` one SIGTERM
    to the command's process alone (``kill PID``): it must exit 130 and its Ray processes end."""
    if kill:
        os.kill(command.process.pid, signal.SIGTERM)
    else:
        os.killpg(command.process.pid, signal.SIGINT)  # once
    sent = time.monotonic()
    try:
        command.process.wait(timeout=STOPPED_WITHIN_S)
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"running {STOPPED_WITHIN_S} s after one Ctrl-C:\n{command.output()[-3000:]}"
        ) from None
    stopped = time.monotonic() - sent
    output = command.output()
    assert command.process.returncode == 130, output[-3000:]
    wait_for(
        lambda: not ray_processes(command.ray_tmp), RAY_GONE_WITHIN_S, "the command's Ray processes to end"
    )
    print(
        f"{command.log.stem}: exited {stopped:.1f} s after the Ctrl-C, its Ray processes gone after "
        f"{time.monotonic() - sent:.1f} s"
    )
    return output


@pytest.fixture(scope="module")
def generator_run(generator_small_run, tmp_path_factory) -> Path:
    """A copy of the session's run with a trained generator (its latest model), to evaluate and
    serve; no e5 vectors cached, so its first e5 evaluation encodes the catalogue."""
    run = tmp_path_factory.mktemp("interrupt") / "run"
    shutil.copytree(generator_small_run, run, ignore=shutil.ignore_patterns("*_e5*"))
    return run


def training(run: Path, small_track: Path, encoded_small_run: Path, tmp_path: Path) -> list[str]:
    """`onesearch generator` on ``run``, a fresh copy of the encoded small run."""
    shutil.copytree(encoded_small_run, run)
    config = tmp_path / "generator.yaml"
    config.write_text(GENERATOR_CONFIG)
    return ["generator", "--run", str(run), "--data", str(small_track), "--config", str(config)]


class FileCheckpoints:
    """The training state in one file (``train.Checkpoints``), as Ray Train's checkpoint holds it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __str__(self) -> str:
        return str(self.path)

    def load(self) -> dict | None:
        return read_training_state(self.path) if self.path.exists() else None

    def save(self, payload: dict, step: int) -> None:
        write_training_state(self.path, payload)


def latest_checkpoint(run: Path) -> Path | None:
    """The training state of the newest Ray Train checkpoint of the run's training, if any."""
    found = sorted((run / "ray_train/generator").glob("checkpoint_*/training_state.pt"))
    return found[-1] if found else None


def assert_resumable(run: Path, small_track: Path, tmp_path: Path) -> None:
    """What a rerun does first with the training state, if there is one: load it (``train._resume``:
    weights, optimizer, schedule) into the model the job builds."""
    checkpoint = latest_checkpoint(run)
    if checkpoint is None:  # stopped before its first checkpoint: a rerun starts over
        return
    job = load_job_config(tmp_path / "generator.yaml")
    model = build_generator(load_catalogue(run, load_track(small_track)), job.model)
    optimizer = torch.optim.AdamW(parameter_groups(model, job.train))
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=4
    )
    state = _resume(FileCheckpoints(checkpoint), model, optimizer, schedule)
    assert state["step"] >= 1 and state["best"] is not None


@pytest.mark.slow
def test_one_ctrl_c_stops_training_while_its_ray_train_workers_start(
    encoded_small_run, small_track, tmp_path
):
    run = tmp_path / "run"
    with onesearch(training(run, small_track, encoded_small_run, tmp_path), tmp_path) as command:
        wait_until(
            command,
            lambda: "Attempting to start training worker group" in command.output(),
            "Ray Train to start its workers",
        )
        assert "Started training worker group" not in command.output()
        output = interrupt(command)
    assert RESUME_HINT in output
    assert_resumable(run, small_track, tmp_path)


@pytest.mark.slow
def test_one_ctrl_c_stops_training_while_it_checkpoints(encoded_small_run, small_track, tmp_path):
    run = tmp_path / "run"
    with onesearch(training(run, small_track, encoded_small_run, tmp_path), tmp_path) as command:
        wait_until(command, lambda: latest_checkpoint(run) is not None, "a first checkpoint")
        assert ray_processes(command.ray_tmp), "the driver's Ray cluster should be running"
        output = interrupt(command)
    assert RESUME_HINT in output
    assert not (run / MODEL_DIR).exists(), "stopped before the model is saved"
    assert latest_checkpoint(run) is not None
    assert_resumable(run, small_track, tmp_path)


@pytest.mark.slow
def test_one_ctrl_c_stops_evaluation(generator_run, small_track, tmp_path):
    # The generator and BM25 take a second on this track; the e5 baselines' first run encodes the
    # catalogue with e5 (seconds here), long enough to interrupt.
    args = ["eval", "--run", str(generator_run), "--track", "synthetic", "--data", str(small_track), "--e5"]
    with onesearch(args, tmp_path) as command:
        wait_until(command, lambda: "texts with e5" in command.output(), "the catalogue's e5 encoding")
        output = interrupt(command)
    assert "onesearch eval: interrupted" in output
    assert not (generator_run / "eval_synthetic.json").exists(), "stopped before its report"


@pytest.mark.slow
@pytest.mark.parametrize("kill", [False, True], ids=["ctrl-c", "kill"])
def test_one_ctrl_c_stops_serving(generator_run, tmp_path, kill):
    """Ctrl-C, or one `kill` (SIGTERM, as a service manager stops it): ray.init puts its own SIGTERM
    handlers in place, and the command's must win (else a crash report and an abort, status 134)."""
    # The torch engine starts twice as fast as vLLM here; both run inside the Serve replica.
    port = free_port()
    args = ["serve", "--run", str(generator_run), "--port", str(port), "--engine", "transformers"]
    with onesearch(args, tmp_path) as command:
        wait_until(command, lambda: "search API:" in command.output(), "the search API")
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=60).status_code == 200
        output = interrupt(command, kill=kill)
    assert "onesearch serve: interrupted" in output and "SIGTERM received" not in output


@pytest.mark.slow
def test_serving_on_a_port_in_use_says_so(generator_run, tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        args = ["serve", "--run", str(generator_run), "--port", str(port), "--engine", "transformers"]
        with onesearch(args, tmp_path) as command:
            assert command.process.wait(timeout=300) == 2, command.output()[-3000:]
            wait_for(
                lambda: not ray_processes(command.ray_tmp), RAY_GONE_WITHIN_S, "its Ray processes to end"
            )
    assert f"onesearch serve: error: 127.0.0.1:{port} is in use" in command.output()


@pytest.mark.slow
def test_one_ctrl_c_stops_the_demo_page(tmp_path):
    # The quickstart's last phase serves this page beside the API; it needs no API to start.
    args = ["demo", "--api", f"http://127.0.0.1:{free_port()}", "--port", str(free_port())]
    with onesearch(args, tmp_path) as command:
        wait_until(command, lambda: "Running on local URL" in command.output(), "the demo page")
        output = interrupt(command)
    assert "onesearch demo: interrupted" in output


@pytest.mark.slow
def test_one_ctrl_c_stops_a_layout_sweep(encoded_small_run, small_track, tmp_path):
    """Ray Tune's fit() used to catch the Ctrl-C itself and return the unfinished trials, which the
    sweep then ranked: a TypeError (exit 1). It is caught while the trials are pending."""
    run, out = tmp_path / "run", tmp_path / "tune"
    shutil.copytree(encoded_small_run, run)
    args = ["tune", "--run", str(run), "--data", str(small_track), "--out", str(out), "--samples", "2"]
    args += ["--layouts", "16-32", "32-32-32", "--encoders", "minilm", "--keywords", "on"]
    with onesearch(args, tmp_path) as command:
        wait_until(command, lambda: "Trial status:" in command.output(), "Ray Tune's trials")
        output = interrupt(command)
    assert "onesearch tune: interrupted" in output
    assert not (out / "results.json").exists(), "stopped before its table"


def test_a_damaged_training_checkpoint_is_named_in_a_clear_error(generator_small_run, tmp_path):
    """The training state is replaced atomically, so a Ctrl-C leaves the last complete one; a file
    damaged otherwise (a full disk, a copy cut short) is not resumed from: the error names it and
    says how to start over. An intact one resumes."""
    model, _ = load_generator(generator_small_run / MODEL_DIR)
    example = Example("query", model.item_vectors[0].numpy(), np.array([0]), np.array([1.0]))
    config, checkpoint = TrainConfig(epochs=1, batch_size=1), tmp_path / "training_state.pt"
    checkpoints = FileCheckpoints(checkpoint)
    trained = train(model, [example], config, checkpoints=checkpoints)  # one step, one checkpoint
    assert train(model, [example], config, checkpoints=checkpoints)["steps"] == trained["steps"]  # resumed
    intact = checkpoint.read_bytes()
    for damaged in (intact[: len(intact) // 2], b""):
        checkpoint.write_bytes(damaged)
        with pytest.raises(ValueError, match=re.escape(f"{checkpoint}: cannot resume")) as error:
            train(model, [example], config, checkpoints=checkpoints)
        assert "delete it to start over" in str(error.value)


@pytest.mark.slow
def test_a_killed_ray_train_worker_is_survived_from_the_last_checkpoint(
    encoded_small_run, small_track, tmp_path
):
    """`onesearch generator --workers 2`, one Ray Train worker process killed with SIGKILL after the
    first checkpoint: Ray Train restarts the group (FailureConfig), every worker resumes from the last
    checkpoint, and the job finishes by itself, its model saved and its checkpoints removed."""
    run = tmp_path / "run"
    args = training(run, small_track, encoded_small_run, tmp_path) + ["--workers", "2", "--max-failures", "2"]
    (tmp_path / "generator.yaml").write_text(
        "generator:\n  model: {hash_buckets: 1024}\n  select_queries: 4\n"
        "  train: {epochs: 1, batch_size: 8, evaluate_every: 4, patience: 0}\n"
    )
    with onesearch(args, tmp_path) as command:
        registered = run / "ray_train/generator/checkpoint_manager_snapshot.json"
        wait_until(command, registered.exists, "a first checkpoint Ray Train has registered")
        workers = [pid for pid in ray_processes(command.ray_tmp) if b"RayTrainWorker" in _cmdline(pid)]
        assert len(workers) == 2, workers
        os.kill(workers[-1], signal.SIGKILL)
        command.process.wait(timeout=600)
        output = command.output()
    assert command.process.returncode == 0, output[-3000:]
    assert "resumed from the Ray Train checkpoint" in output
    assert (run / MODEL_DIR / "weights.safetensors").is_file()
    assert not (run / "ray_train/generator").exists()
    history = json.loads((run / MODEL_DIR / "history.json").read_text())
    assert history["steps"] and history["best"]["score"] >= history["selection"][0]["score"]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_a_cluster_ray_start_recorded_that_is_gone_is_found_in_seconds(monkeypatch, caplog):
    """``ray.init()`` would wait minutes on a recorded cluster that no longer answers; ``init_ray``
    finds out in seconds, says what to do and starts a local cluster instead."""
    import socket

    import ray._private.utils

    from pipelines.common import _recorded_cluster_is_gone

    port = free_port()
    monkeypatch.setattr(ray._private.utils, "read_ray_address", lambda: f"127.0.0.1:{port}")
    started = time.monotonic()
    assert _recorded_cluster_is_gone()
    assert time.monotonic() - started < 5
    assert "`ray stop` clears the record" in caplog.text
    with socket.create_server(("127.0.0.1", port)):  # a cluster that answers is joined as before
        assert not _recorded_cluster_is_gone()
    monkeypatch.setattr(ray._private.utils, "read_ray_address", lambda: None)
    assert not _recorded_cluster_is_gone()
