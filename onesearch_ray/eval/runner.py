"""Evaluate a trained run on a track, beside the baselines, exactly per evaluation.md.

Search tracks (queries + judgments: Home Depot, synthetic): the generator ranks the whole catalogue
for each query of the split (planned code beams, then the item step; torch engine); BM25, dense and
RRF run on the same queries and corpus. Next-item tracks (Amazon): the generator ranks from each
row's history; the popularity, co-occurrence and dense-history baselines run beside it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from onesearch_ray.catalogue import Snapshot
from onesearch_ray.data import Track, load_track
from onesearch_ray.data.query_file import read_query_file
from onesearch_ray.eval.config import EvalConfig
from onesearch_ray.generator.catalogue import Catalogue, load_catalogue
from onesearch_ray.generator.evaluate import judged_split, next_item_split, search_split
from onesearch_ray.generator.model import CodeItemGenerator
from onesearch_ray.generator.store import load_generator
from onesearch_ray.khqe import EncoderConfig, catalogue_texts
from onesearch_ray.khqe.cache import encoded_vectors, load_embeddings
from onesearch_ray.khqe.config import E5_ENCODER, run_khqe_config
from onesearch_ray.khqe.encoder import make_encoder
from onesearch_ray.retrieval.baselines import normalise_rows
from onesearch_ray.retrieval.tracks import DenseInputs, run_next_item_baselines, run_search_baselines
from onesearch_ray.runs import is_generator_dir, served_model_dir, texts_digest

log = logging.getLogger(__name__)
TRACK_KINDS = {"homedepot": "search", "synthetic": "search", "kuaisearch": "search", "amazon18": "next_item"}


def evaluate(
    run: str | Path,
    data: str | Path,
    track_kind: str,
    config: EvalConfig,
    live: tuple[CodeItemGenerator, Sequence[int], Snapshot] | None = None,
) -> dict[str, dict]:
    """The run's served generator (``runs.served_model_dir``, or ``config.model_dir``; torch engine) on
    a track's split, beside the baselines.

    ``live``: that generator as served (its item ids, the live catalogue's snapshot it searches) when
    items joined the catalogue after training (a cold-start hold-out added live); by default it is
    loaded as saved and searches its own items."""
    if track_kind not in ("search", "next_item"):
        raise ValueError(f"unknown track kind {track_kind!r} (expected search or next_item)")
    run, track = Path(run), load_track(data)
    model_dir = Path(config.model_dir) if config.model_dir else served_model_dir(run)
    if not is_generator_dir(model_dir):
        raise FileNotFoundError(f"{model_dir}: not a trained generator (weights.safetensors, codes.npz)")
    model, item_ids, items = live or (*load_generator(model_dir), None)
    catalogue = dataclasses.replace(load_catalogue(run, track), item_ids=np.asarray(item_ids))
    if config.queries:
        if track_kind != "search":
            raise ValueError(f"--queries {config.queries}: new queries need a search track")
        track, catalogue = with_new_queries(run, track, catalogue, config)
    beam = {"beam": model.config.search.beams[-1]}
    if track_kind == "next_item":
        rows = None
        if config.limit:  # the first N rows of the split
            rows = np.flatnonzero(np.asarray(track.sequences["split"].to_pylist()) == config.split)[
                : config.limit
            ]
        metrics = next_item_split(model, catalogue, track, config.split, config.k, rows=rows, items=items)
        results = {"model": metrics | beam}
        if config.baselines:
            results.update(next_item_baselines(run, track, config))
        return results
    metrics = search_split(model, catalogue, track, config.split, config.k, limit=config.limit, items=items)
    results = {"model": metrics | beam}
    if config.baselines:
        kept_ids = (
            set(judged_split(catalogue, track, config.split, config.limit)[0]) if config.limit else None
        )
        results.update(search_baselines(run, track, config, kept_ids))
    return results


def with_new_queries(
    run: Path, track: Track, catalogue: Catalogue, config: EvalConfig
) -> tuple[Track, Catalogue]:
    """The track and catalogue with the queries of ``config.queries`` (all of ``config.split``) in
    place of the track's own: encoded now with the run's encoder, cached in the run by the texts'
    digest; the SIDs and the model are untouched."""
    known = set(track.items["item_id"].to_pylist())
    queries, judgments = read_query_file(config.queries, config.split, known)
    texts = queries["query"].to_pylist()
    cache = f"queries_{texts_digest(texts)[:12]}"
    vectors = encoded_vectors(run, cache, texts, run_khqe_config(run).encoder, "query")
    track = dataclasses.replace(track, queries=queries, judgments=judgments)
    return track, dataclasses.replace(catalogue, query_vectors=normalise_rows(vectors))


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
