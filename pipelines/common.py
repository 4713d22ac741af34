"""Ray wiring shared by the jobs: the cluster connection, Ctrl-C around Ray's blocking calls."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time

import ray
import ray.train.torch

log = logging.getLogger(__name__)

# How often a waiting main thread runs Python code, so it sees a Ctrl-C another thread received.
SIGNAL_POLL_S = 0.2


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to ``address`` (or RAY_ADDRESS, as under ``ray job submit``), else start a local cluster.

    No OMP_WAIT_POLICY is forced on workers: PASSIVE makes every small torch op wake sleeping
    OpenMP threads, which slowed tiny-model SFT steps 1.7x (the test script sets it for itself).
    """
    if ray.is_initialized():
        return
    kwargs = {"address": address} if address else {}
    if not address and not os.environ.get("RAY_ADDRESS"):
        if _recorded_cluster_is_gone():
            kwargs["address"] = "local"
        if num_cpus:
            kwargs["num_cpus"] = num_cpus
    sigterm = signal.getsignal(signal.SIGTERM)
    ray.init(
        **kwargs,
        logging_level=logging.WARNING,
        runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1"}},
    )
    if callable(sigterm) and threading.current_thread() is threading.main_thread():
        # ray.init puts its own SIGTERM handlers in place (a bare exit, and a crash report that
        # aborts the process): a command that stops on `kill` as on Ctrl-C keeps its own
        signal.signal(signal.SIGTERM, sigterm)
    ray.data.DataContext.get_current().enable_progress_bars = bool(
        os.environ.get("ONESEARCH_PROGRESS", "1") == "1"
    )


def _recorded_cluster_is_gone(timeout: float = 2.0) -> bool:
    """Whether ``ray start`` recorded a cluster on this machine that no longer answers. ``ray.init()``
    would join it and wait minutes on "Failed to connect to GCS" (after an unclean stop); this
    finds out in seconds, says what to do, and the caller starts a local cluster instead."""
    recorded = ray._private.utils.read_ray_address()
    if not recorded:
        return False
    host, _, port = recorded.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
        return False
    except (OSError, ValueError):
        log.warning(
            "the Ray cluster `ray start` recorded at %s does not answer (stopped uncleanly?): starting "
            "a local cluster instead; `ray stop` clears the record, `ray start --head` starts a new one",
            recorded,
        )
        return True


def wait_for_interrupt() -> None:
    """Block the main thread until Ctrl-C (KeyboardInterrupt), in short sleeps.

    The kernel hands a process's SIGINT to any of its threads that does not block it, at times one of
    Ray's gRPC threads. CPython's C handler there only flags the signal; the main thread raises
    KeyboardInterrupt when it next runs Python code, which a wait with no timeout (a bare
    ``join()``, ``sleep(3600)``) never does: that is how one Ctrl-C was lost. (``ray.get`` on the
    main thread checks for flagged signals itself.)
    """
    while True:
        time.sleep(SIGNAL_POLL_S)


class TorchTrainer(ray.train.torch.TorchTrainer):
    """Ray Train's ``TorchTrainer`` whose ``fit()`` leaves Ctrl-C to the driver.

    On the main thread, Ray Train's ``fit()`` installs a SIGINT handler that only asks the run's
    controller to abort: on a busy machine the first two Ctrl-C did nothing visible and the third
    exited. Without it, Ctrl-C raises KeyboardInterrupt inside ``fit()``'s ``ray.get`` (which sees a
    signal any thread received); the driver exits, and ``ray.shutdown`` at exit stops the run and a
    local cluster the driver started. (``fit()`` ran on a helper thread to the same end; a bare
    ``join()`` there lost a Ctrl-C that a Ray thread received, and a helper still inside ``ray.get``
    when Ray shut down made the driver exit with status 1.)
    """

    def _register_sigint_handler(self, controller: ray.actor.ActorHandle) -> None:
        """Install nothing (Ray Train's own hook, called by ``fit()`` on the main thread)."""
