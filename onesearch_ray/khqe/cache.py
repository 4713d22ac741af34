"""The run's embedding cache: ``RUN/embeddings/<name>.npy`` plus the digest of the texts and
encoder settings it was computed from, so any stage can reuse it only when it still applies."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from onesearch_ray.io import atomic_path
from onesearch_ray.khqe.config import EncoderConfig
from onesearch_ray.khqe.encoder import TextEncoder, TextKind, make_encoder
from onesearch_ray.runs import texts_digest

log = logging.getLogger(__name__)


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


def encoded_vectors(
    run: Path,
    name: str,
    texts: list[str],
    encoder: EncoderConfig,
    kind: TextKind,
    text_encoder: TextEncoder | None = None,
) -> np.ndarray:
    """Vectors of ``texts`` under ``encoder``: the encode stage's cache ``name`` when it used this
    encoder, else the evaluation's own cache ``<name>_<model>``, else encoded now (with
    ``text_encoder`` when given) and cached there, so a slow encoder is paid once per run."""
    own = f"{name}_{encoder.model}"
    for cache in (name, own):
        vectors = load_embeddings(run, cache, texts, encoder)
        if vectors is not None:
            return vectors
    log.info("encoding %d texts with %s (cached as embeddings/%s.npy)", len(texts), encoder.model, own)
    started = time.perf_counter()
    vectors = (text_encoder or make_encoder(encoder)).encode(texts, kind)
    log.info("encoded in %.0f s", time.perf_counter() - started)
    store_embeddings(run, own, texts, encoder, vectors)
    return vectors
