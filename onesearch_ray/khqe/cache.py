"""The run's embedding cache: ``RUN/embeddings/<name>.npy`` plus the digest of the texts and
encoder settings it was computed from, so any stage can reuse it only when it still applies."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from onesearch_ray.io import atomic_path
from onesearch_ray.khqe.encoder import EncoderConfig
from onesearch_ray.runs import texts_digest


def _paths(run: Path, name: str) -> tuple[Path, Path]:
    return Path(run) / f"embeddings/{name}.npy", Path(run) / f"embeddings/{name}.sha256"


def _digest(texts: list[str], encoder: EncoderConfig) -> str:
    return texts_digest(texts, salt=f"{encoder.model}|{encoder.max_seq_length}")


def load_embeddings(run: Path, name: str, texts: list[str], encoder: EncoderConfig) -> np.ndarray | None:
    """The cached vectors of exactly these texts under this encoder, else None."""
    vectors_path, digest_path = _paths(run, name)
    if not vectors_path.exists() or not digest_path.exists():
        return None
    if digest_path.read_text().strip() != _digest(texts, encoder):
        return None
    return np.load(vectors_path, allow_pickle=False)


def store_embeddings(
    run: Path, name: str, texts: list[str], encoder: EncoderConfig, vectors: np.ndarray
) -> None:
    vectors_path, digest_path = _paths(run, name)
    with atomic_path(vectors_path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, vectors, allow_pickle=False)
    with atomic_path(digest_path) as tmp:
        tmp.write_text(_digest(texts, encoder) + "\n")
