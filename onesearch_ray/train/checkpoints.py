"""Training checkpoints: HF weights (safetensors) + optimizer state + ``state.json`` written LAST.

A checkpoint directory counts only once its ``state.json`` exists and every file it lists has the
size recorded there (Ray Train copies a checkpoint's files in parallel, so ``state.json`` may land
first), so a checkpoint cut short by a kill or a Ctrl-C is ignored and the job resumes from the
previous complete one. With selection on valid (``train.selection``), the best-scoring weights so
far are also kept in ``<stage>/best/`` (written whole or not at all), apart from the newest
checkpoints that resume uses and retention prunes.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import torch

from onesearch_ray.io import atomic_dir, read_json, write_json

STATE = "state.json"
KEEP = 2  # complete checkpoints kept per stage (the newest ones)
BEST = "best"  # the best-on-valid weights of a stage, beside its checkpoints
_STEP_DIR = re.compile(r"^step_(\d{7})$")


def dir_name(step: int) -> str:
    return f"step_{step:07d}"


def write(
    directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int, metrics: dict
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    torch.save(optimizer.state_dict(), directory / "optimizer.pt")
    files = {path.name: path.stat().st_size for path in directory.iterdir() if path.is_file()}
    write_json(directory / STATE, {"step": step, "metrics": metrics, "files": files})


def is_complete(directory: Path) -> bool:
    """``state.json`` is there and whole, and so is every file it lists (older ones list none)."""
    try:
        files = read_state(directory).get("files", {})
    except (FileNotFoundError, ValueError):  # not written yet, or cut short
        return False
    return all(
        (directory / name).is_file() and (directory / name).stat().st_size == size
        for name, size in files.items()
    )


def complete(stage_dir: Path) -> list[tuple[int, Path]]:
    """(step, directory) of every complete checkpoint under ``stage_dir`` (at any depth: Ray Train
    nests them in its trial folders), oldest first."""
    if not stage_dir.exists():
        return []
    return sorted(
        (int(m.group(1)), p)
        for p in stage_dir.rglob("step_*")
        if (m := _STEP_DIR.match(p.name)) and is_complete(p)
    )


def latest(stage_dir: Path) -> Path | None:
    """The complete checkpoint with the highest step under ``stage_dir``."""
    found = complete(stage_dir)
    return found[-1][1] if found else None


def read_state(directory: Path) -> dict:
    return read_json(directory / STATE)


def write_best(stage_dir: Path, model: torch.nn.Module, step: int, metrics: dict) -> Path:
    """Replace ``<stage_dir>/best`` with these weights (no optimizer: it is never resumed from)."""
    with atomic_dir(stage_dir / BEST) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        write_json(tmp / STATE, {"step": step, "metrics": metrics})
    return stage_dir / BEST


def best(stage_dir: Path) -> Path | None:
    """The stage's best-on-valid weights, if selection on valid wrote any."""
    path = stage_dir / BEST
    return path if (path / STATE).exists() else None


def load_weights(directory: Path, model: torch.nn.Module) -> int:
    """Load a checkpoint's (or ``best``'s) weights into ``model``; return its step."""
    from safetensors.torch import load_file

    weights = directory / "model.safetensors"
    try:
        state = load_file(str(weights))
    except Exception as err:  # safetensors raises several types for truncated/corrupt files
        raise ValueError(f"{weights}: corrupt or unreadable checkpoint weights ({err})") from err
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:  # lm_head may be tied to embeddings
        raise ValueError(
            f"{weights}: does not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return int(read_state(directory)["step"])


def restore(directory: Path, model: torch.nn.Module) -> tuple[int, dict]:
    """Load weights into ``model``; return (step, optimizer state dict). Errors name the bad file."""
    step = load_weights(directory, model)
    try:
        optimizer_state = torch.load(directory / "optimizer.pt", map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{directory / 'optimizer.pt'}: corrupt optimizer state ({err})") from err
    return step, optimizer_state


def prune(stage_dir: Path, keep: int) -> None:
    """Delete all but the ``keep`` newest complete checkpoints (Ray Train does this itself)."""
    for _, path in complete(stage_dir)[:-keep]:
        shutil.rmtree(path)
