"""Encode texts exactly as the encode stage did (encoder + keyword fusion), for queries at serving
time and for NEW items added to a live catalogue (frozen codebooks: cold start)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from onesearch_ray.io import read_json
from onesearch_ray.khqe.build import EncodedTexts, enhance
from onesearch_ray.khqe.config import KHQEConfig, run_khqe_config
from onesearch_ray.khqe.encoder import TextEncoder, TextKind, make_encoder
from onesearch_ray.khqe.keywords import KeyphraseLexicon


class RunTextEncoder:
    """The run's text encoder, lexicon and keyphrase vectors, applied like ``pipelines/prepare.py``."""

    def __init__(
        self,
        encoder: TextEncoder,
        lexicon: KeyphraseLexicon | None,
        phrase_vectors: np.ndarray | None,
        text_weight: float = 0.5,
    ) -> None:
        self.encoder, self.lexicon, self.phrase_vectors, self.text_weight = (
            encoder,
            lexicon,
            phrase_vectors,
            text_weight,
        )

    @classmethod
    def from_run(cls, run: str | Path, config: KHQEConfig | None = None) -> RunTextEncoder:
        """The encoder, lexicon and fusion weight the run's encode stage used (its recorded config)."""
        run = Path(run)
        config = config or run_khqe_config(run)
        lexicon = phrases = None
        if config.keyword_enhancement and (run / "lexicon.json").exists():
            lexicon = KeyphraseLexicon.from_json(read_json(run / "lexicon.json"))
            phrases = np.load(run / "embeddings/phrases.npy", allow_pickle=False)
        return cls(make_encoder(config.encoder), lexicon, phrases, config.keyword_text_weight)

    def encode(self, texts: list[str], kind: TextKind = "query") -> np.ndarray:
        """Fused vectors of search queries (``kind="query"``) or item texts (``"passage"``)."""
        return self.fuse(texts, self.encoder.encode(texts, kind))

    def fuse(self, texts: list[str], vectors: np.ndarray) -> np.ndarray:
        """The keyword fusion of the encode stage, on vectors the encoder already made for ``texts``."""
        fused, _ = enhance(EncodedTexts(texts, vectors), self.lexicon, self.phrase_vectors, self.text_weight)
        return fused
