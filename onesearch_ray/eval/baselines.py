"""The baselines of an evaluation, on a run's cached vectors: BM25, dense and RRF on a search track's
split; popularity, co-occurrence and dense history on a next-item track's (``onesearch_ray.retrieval``
runs them; this module finds their inputs in the run)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa

from onesearch_ray.data import Track
from onesearch_ray.eval.config import EvalConfig
from onesearch_ray.khqe import EncoderConfig, catalogue_texts
from onesearch_ray.khqe.cache import encoded_vectors, load_embeddings
from onesearch_ray.khqe.config import E5_ENCODER, run_khqe_config
from onesearch_ray.khqe.encoder import make_encoder
from onesearch_ray.retrieval.tracks import DenseInputs, run_next_item_baselines, run_search_baselines

log = logging.getLogger(__name__)


def search_baselines(
    run: Path, track: Track, config: EvalConfig, kept_ids: set[int] | None = None
) -> dict[str, dict]:
    """BM25, dense and RRF, with ``config.e5`` also dense e5 and RRF-e5, on the split's queries
    (only ``kept_ids`` when given), item vectors from the run's cache. Dense uses the run's own
    encoder (MiniLM by default; e5 for a Chinese track's config), as the model does."""
    encoders = {"": run_khqe_config(run).encoder}
    if config.e5 and encoders[""].model != E5_ENCODER:
        encoders[E5_ENCODER] = EncoderConfig(model=E5_ENCODER)
    dense = {name: _dense_inputs(run, track, encoder) for name, encoder in encoders.items()}
    if kept_ids is not None:  # baselines on exactly the queries the model saw
        mask = np.isin(np.asarray(track.queries.column("query_id").to_pylist()), sorted(kept_ids))
        track = dataclasses.replace(track, queries=track.queries.filter(pa.array(mask)))
        for inputs in dense.values():
            if inputs.query_vectors is not None:
                inputs.query_vectors = inputs.query_vectors[mask]
    minilm = dense.pop("")
    return run_search_baselines(
        track,
        config.split,
        item_vectors=minilm.item_vectors,
        query_vectors=minilm.query_vectors,
        encoder=minilm.encoder,
        k=config.k,
        dense_variants=dense,
    )


def _dense_inputs(run: Path, track: Track, config: EncoderConfig) -> DenseInputs:
    """One dense system's inputs: item vectors cached in the run (encoded on first use); query
    vectors from the encode stage's cache when it used this encoder, else the split's queries are
    encoded during the timed search, as a served query would be."""
    queries = load_embeddings(run, "queries", track.queries.column("query").to_pylist(), config)
    encoder = make_encoder(config) if queries is None else None
    items = encoded_vectors(run, "items", catalogue_texts(track.items), config, "passage", encoder)
    return DenseInputs(items, queries, encoder)


def next_item_baselines(run: Path, track: Track, config: EvalConfig) -> dict[str, dict]:
    """Popularity, co-occurrence and dense history on the split (item vectors from the run's cache)."""
    vectors = encoded_vectors(run, "items", catalogue_texts(track.items), EncoderConfig(), "passage")
    if config.limit:
        log.warning("--limit applies to the model only; baselines cover the whole split")
    return run_next_item_baselines(track, config.split, item_vectors=vectors)
