"""Run directories: every stage reads and writes one, with a manifest so any stage can be rerun,
resumed or audited alone (config, package versions, input hashes, outputs, timings)."""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from onesearch_ray.io import atomic_path, read_json, write_json

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LATEST_MODEL = "latest_model.json"  # names the newest trained model: what eval and serve load
OLD_LATEST_MODEL = "model/latest.json"  # where runs made before 2026-12-07 name it (still read)
_TRACKED_PACKAGES = (
    "onesearch-ray",
    "numpy",
    "torch",
    "faiss-cpu",
    "faiss-gpu",
    "ray",
    "transformers",
    "vllm",
)


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def texts_digest(texts: Iterable[str], salt: str = "") -> str:
    """Stable content hash of a text corpus (decides whether cached embeddings still apply)."""
    digest = hashlib.sha256(salt.encode())
    for text in texts:
        digest.update(text.encode("utf-8", "surrogatepass"))
        digest.update(b"\x00")
    return digest.hexdigest()


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def manifest(self) -> dict[str, Any]:
        target = self.path / MANIFEST
        return read_json(target) if target.exists() else {"stages": {}}

    def stage(self, name: str) -> dict[str, Any] | None:
        return self.manifest()["stages"].get(name)

    def record_stage(
        self, name: str, *, config: Any, inputs: dict[str, str], outputs: dict[str, Any]
    ) -> None:
        manifest = self.manifest()
        manifest["stages"][name] = {
            "config": json.loads(json.dumps(config, default=str)),
            "inputs": inputs,
            "outputs": outputs,
            "versions": package_versions(),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        write_json(self.path / MANIFEST, manifest)


GENERATOR_DIR = "generator"  # RUN/generator: the CPU-first generator (``generator.job.MODEL_DIR``)


def write_latest_model(run: str | Path, model_dir: str | Path) -> None:
    """Point the run at ``model_dir``; relative to the run when inside it, so a run dir can move."""
    run, model_dir = Path(run).resolve(), Path(model_dir).resolve()
    target = model_dir.relative_to(run) if model_dir.is_relative_to(run) else model_dir
    with atomic_path(run / LATEST_MODEL) as tmp:
        tmp.write_text(json.dumps({"model": str(target)}) + "\n")


def is_generator_dir(path: str | Path) -> bool:
    """Whether ``path`` holds a saved generator (``generator.store``)."""
    return all((Path(path) / name).is_file() for name in ("weights.safetensors", "codes.npz"))


def model_name(run: str | Path, directory: str | Path) -> str:
    """A model's name in a run: its directory relative to the run (absolute when outside it)."""
    path, root = Path(directory).resolve(), Path(run).resolve()
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def served_model_dir(run: str | Path) -> Path:
    """The model a run serves and evaluates by default: its latest model (``onesearch generator``
    points it at ``RUN/generator``, an alignment at ``RUN/generator-NAME``), else ``RUN/generator``."""
    pointer = Path(run) / LATEST_MODEL
    if not pointer.exists():
        pointer = Path(run) / OLD_LATEST_MODEL
    generator = Path(run) / GENERATOR_DIR
    if pointer.exists():
        latest = Path(run) / json.loads(pointer.read_text())["model"]  # an absolute path stays as it is
        if is_generator_dir(latest):
            return latest
        log.warning("%s: the run's latest model %s is gone; using %s", run, latest, generator)
    if not is_generator_dir(generator):
        raise FileNotFoundError(f"{run}: no trained generator in this run (run `onesearch generator` first)")
    return generator


# --- the cold-start hold-out of docs/evaluation.md: which items a run leaves out of KHQE fitting
# (and so of training), and where the run records them (RUN/holdout.json)
HOLDOUT_COLD = "cold"
HOLDOUT_FILE = "holdout.json"


def is_cold_holdout(item_id: int) -> bool:
    """evaluation.md's rule: 1 item in 20 by a hash of its id, the same on every machine and run."""
    return int(hashlib.sha1(("cold:" + str(item_id)).encode()).hexdigest(), 16) % 20 == 0


def cold_holdout_mask(item_ids: Sequence[int]) -> np.ndarray:
    return np.fromiter((is_cold_holdout(int(i)) for i in item_ids), dtype=bool, count=len(item_ids))


def write_holdout(run: str | Path, item_ids: Sequence[int]) -> Path:
    path = Path(run) / HOLDOUT_FILE
    write_json(path, {"rule": HOLDOUT_COLD, "item_ids": [int(i) for i in item_ids]})
    return path


def read_holdout(run: str | Path) -> list[int]:
    path = Path(run) / HOLDOUT_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: this run holds no item out (encode it with --holdout-cold)")
    return [int(i) for i in read_json(path)["item_ids"]]
