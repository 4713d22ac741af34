"""One Ctrl-C stops every phase at once. Each command runs as the quickstart runs it, on a local Ray
cluster of its own, and gets one SIGINT to its process group, as a terminal's Ctrl-C sends: it exits
130 within seconds, leaves a checkpoint a rerun resumes from, and none of its Ray processes running.
Phases: training while its Ray Train workers start, training while it checkpoints, evaluation,
serving, and the demo page."""

from __future__ import annotations

import contextlib
import dataclasses
import os
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
import pytest
import torch

from onesearch_ray.model import load_model
from onesearch_ray.runs import write_latest_model
from onesearch_ray.train import checkpoints
from onesearch_ray.train.config import load_train_config
from onesearch_ray.train.workflow import prepare_model_init
from pipelines.common import wait_for_interrupt
from tests.ray_jobs import REPO, ray_processes, wait_for

# Issue 18 asks 10 s; 2-7 s measured on 2 shared cores. The bounds leave room for a loaded CI machine
# and still fail a Ctrl-C that was lost (the bug: the driver trained on, indefinitely).
STOPPED_WITHIN_S = 30
RAY_GONE_WITHIN_S = 30
RESUME_HINT = "onesearch train: interrupted; rerun the same command to resume"
# One stage long enough never to finish here, a checkpoint at every step: the Ctrl-C that follows the
# first checkpoint lands while later ones are being written.
TRAIN_CONFIG = (
    "train:\n  num_workers: 1\n  cpus_per_worker: 1\n  model: {size: tiny}\n"
    "  tokenizer_vocab_size: 1000\n  stages:\n"
    "    alignment: {max_steps: 5000, batch_size: 8, checkpoint_every: 1, log_every: 5}\n"
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
    """Where `onesearch train` waits (Ray Train's fit() on the main thread)."""
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
            [sys.executable, "-m", "pipelines.cli", *args],
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


def interrupt(command: Command) -> str:
    """One SIGINT to the command's process group: it must exit 130 and its Ray processes end."""
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
def initialized_run(encoded_small_run, small_track, tmp_path_factory) -> Path:
    """The encoded small run with its tokenizer and a freshly built tiny model as its latest model:
    enough to evaluate and serve (what is tested is stopping, not quality)."""
    run = tmp_path_factory.mktemp("initialized") / "run"
    shutil.copytree(encoded_small_run, run, ignore=shutil.ignore_patterns("sft", "model"))
    config = load_train_config(size="tiny")
    config.tokenizer_vocab_size = 1000
    write_latest_model(run, prepare_model_init(run, small_track, config))
    return run


def training(run: Path, small_track: Path, tmp_path: Path) -> list[str]:
    """`onesearch train` of the alignment stage on ``run`` (a copy of the initialized run)."""
    config = tmp_path / "train.yaml"
    config.write_text(TRAIN_CONFIG)
    args = ["train", "--run", str(run), "--data", str(small_track), "--stage", "alignment"]
    return [*args, "--config", str(config)]


def assert_resumable(run: Path) -> None:
    """What a rerun does first with the stage's last checkpoint, if it has one: load it."""
    latest = checkpoints.latest(run / "sft/alignment")
    if latest is not None:
        assert checkpoints.read_state(latest)["step"] < 5000
        checkpoints.restore(latest, load_model(run / "model/init")[0])


@pytest.mark.slow
def test_one_ctrl_c_stops_training_while_its_ray_train_workers_start(initialized_run, small_track, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(initialized_run, run)
    with onesearch(training(run, small_track, tmp_path), tmp_path) as command:
        wait_until(
            command,
            lambda: "Attempting to start training worker group" in command.output(),
            "Ray Train to start its workers",
        )
        assert "Started training worker group" not in command.output()
        output = interrupt(command)
    assert RESUME_HINT in output
    assert_resumable(run)


@pytest.mark.slow
def test_one_ctrl_c_stops_training_while_it_checkpoints(initialized_run, small_track, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(initialized_run, run)
    with onesearch(training(run, small_track, tmp_path), tmp_path) as command:
        wait_until(
            command, lambda: checkpoints.latest(run / "sft/alignment") is not None, "a first checkpoint"
        )
        assert ray_processes(command.ray_tmp), "the driver's Ray cluster should be running"
        output = interrupt(command)
    assert RESUME_HINT in output
    assert checkpoints.latest(run / "sft/alignment") is not None
    assert_resumable(run)


@pytest.mark.slow
def test_one_ctrl_c_stops_evaluation(initialized_run, small_track, tmp_path):
    # The train split at a wide beam: the model's decoding lasts seconds, long enough to interrupt.
    args = ["eval", "--run", str(initialized_run), "--track", "synthetic", "--data", str(small_track)]
    args += ["--split", "train", "--beam", "300", "--no-baselines"]
    with onesearch(args, tmp_path) as command:
        wait_until(command, lambda: "beam search" in command.output(), "the model's decoding")
        output = interrupt(command)
    assert "onesearch eval: interrupted" in output
    assert not (initialized_run / "eval_synthetic_train.json").exists(), "stopped before its report"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_one_ctrl_c_stops_serving(initialized_run, tmp_path):
    # The reference engine starts twice as fast as vLLM here; both run inside the Serve replica.
    port = _free_port()
    args = ["serve", "--run", str(initialized_run), "--port", str(port), "--engine", "transformers"]
    with onesearch(args, tmp_path) as command:
        wait_until(command, lambda: "search API:" in command.output(), "the search API")
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=60).status_code == 200
        output = interrupt(command)
    assert "onesearch serve: interrupted" in output


@pytest.mark.slow
def test_one_ctrl_c_stops_the_demo_page(tmp_path):
    # The quickstart's last phase serves this page beside the API; it needs no API to start.
    args = ["demo", "--api", f"http://127.0.0.1:{_free_port()}", "--port", str(_free_port())]
    with onesearch(args, tmp_path) as command:
        wait_until(command, lambda: "Running on local URL" in command.output(), "the demo page")
        output = interrupt(command)
    assert "onesearch demo: interrupted" in output


def test_a_checkpoint_cut_short_is_not_resumed_from(initialized_run, tmp_path):
    """Ray Train copies a checkpoint's files in parallel: a Ctrl-C can leave state.json beside
    weights cut short, or state.json itself cut short. Resume skips such a checkpoint."""
    model = load_model(initialized_run / "model/init")[0]
    optimizer = torch.optim.AdamW(model.parameters())
    for step in (1, 2):
        checkpoints.write(tmp_path / checkpoints.dir_name(step), model, optimizer, step, {})
    weights = tmp_path / checkpoints.dir_name(2) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert checkpoints.latest(tmp_path) == tmp_path / checkpoints.dir_name(1)
    state = tmp_path / checkpoints.dir_name(1) / checkpoints.STATE
    state.write_text(state.read_text()[:10])
    assert checkpoints.latest(tmp_path) is None
