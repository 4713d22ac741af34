"""What a fine-tuning run changed, as one small safetensors file, and its merge back onto the base.

A GPU run moves data through narrow transfers: a fine-tuned 135M model (540 MB) does not fit, but
what it changed does when training touched little (``trainable: new_tokens`` plus a few top layers:
the new SID rows and those layers' weights). :func:`save_adapter` stores, against the model directory
the run started from (``RUN/model/init``), every parameter that differs: changed ROWS only for a
matrix where fewer than half the rows changed (the embedding after ``new_tokens``), the whole tensor
otherwise. :func:`merge_adapter` rebuilds the trained model from the same base, bit for bit; the
base's checksum is recorded so an adapter is never merged onto another base.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel

from onesearch_ray.io import atomic_path, file_sha256, read_json
from onesearch_ray.model.decoder import MANIFEST, load_model, save_model
from onesearch_ray.prompts.tokenizer import SID_VOCABULARY_FILE, SidVocabulary

ADAPTER_FORMAT = "onesearch-adapter"
WEIGHTS = "model.safetensors"
_ROWS, _VALUES = ".rows", ".values"


def base_checksum(base_dir: str | Path) -> str:
    """sha256 of the base's weights (from its manifest when it has one: no re-hash of 540 MB)."""
    base_dir = Path(base_dir)
    manifest = base_dir / MANIFEST
    if manifest.is_file():
        digest = (read_json(manifest).get("sha256") or {}).get(WEIGHTS)
        if digest:
            return digest
    if not (base_dir / WEIGHTS).is_file():
        raise FileNotFoundError(
            f"{base_dir / WEIGHTS}: missing (the adapter's base must be one safetensors file)"
        )
    return file_sha256(base_dir / WEIGHTS)


@torch.no_grad()
def save_adapter(model: PreTrainedModel, base_dir: str | Path, path: str | Path) -> dict[str, int]:
    """Write what ``model`` changed against ``base_dir`` to ``path``; returns {parameter: stored rows
    (or -1 for a whole tensor)}. Raises ValueError when a parameter's shape differs from the base."""
    base_dir = Path(base_dir)
    base = load_file(base_dir / WEIGHTS)
    tensors: dict[str, torch.Tensor] = {}
    stored: dict[str, int] = {}
    for name, param in model.named_parameters():
        if name not in base:
            raise ValueError(f"{name}: not in {base_dir / WEIGHTS} (was the model trained from this base?)")
        value, reference = param.detach().cpu(), base[name]
        if value.shape != reference.shape:
            raise ValueError(f"{name}: shape {tuple(value.shape)} but {tuple(reference.shape)} in {base_dir}")
        changed = (
            (value != reference).reshape(len(value), -1).any(dim=1) if value.dim() else value != reference
        )
        if not changed.any():
            continue
        if value.dim() >= 2 and 2 * int(changed.sum()) < len(value):
            rows = torch.nonzero(changed).flatten()
            tensors[name + _ROWS], tensors[name + _VALUES] = rows, value[rows].contiguous()
            stored[name] = len(rows)
        else:
            tensors[name] = value.contiguous()
            stored[name] = -1
    metadata = {"format": ADAPTER_FORMAT, "base_sha256": base_checksum(base_dir)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return stored


@torch.no_grad()
def apply_adapter(model: PreTrainedModel, path: str | Path) -> None:
    """Write the adapter's tensors and rows into ``model`` (loaded from the adapter's base)."""
    params = dict(model.named_parameters())
    tensors = load_file(str(path))
    for key, value in tensors.items():
        if key.endswith(_VALUES):
            continue
        name = key.removesuffix(_ROWS)
        if name not in params:
            raise ValueError(f"{path}: parameter {name} is not in the model")
        if key.endswith(_ROWS):
            params[name][value] = tensors[name + _VALUES].to(params[name].dtype)
        else:
            params[name].copy_(value)


def merge_adapter(base_dir: str | Path, adapter: str | Path, out_dir: str | Path) -> Path:
    """The trained model as a full model directory: ``base_dir`` + ``adapter``, written atomically."""
    base_dir, adapter = Path(base_dir), Path(adapter)
    with safe_open(str(adapter), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if metadata.get("format") != ADAPTER_FORMAT:
        raise ValueError(f"{adapter}: not a {ADAPTER_FORMAT} file")
    if metadata.get("base_sha256") != base_checksum(base_dir):
        raise ValueError(f"{adapter}: made against another base than {base_dir} (weights checksum differs)")
    model, tokenizer = load_model(base_dir)
    apply_adapter(model, adapter)
    vocabulary = SidVocabulary.load(base_dir) if (base_dir / SID_VOCABULARY_FILE).is_file() else None
    metadata = {"base": str(base_dir), "adapter": adapter.name}
    return save_model(model, tokenizer, out_dir, sid_vocabulary=vocabulary, metadata=metadata)
