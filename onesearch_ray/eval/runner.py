"""Evaluate a trained run on a track, beside the baselines, exactly per evaluation.md.

Search tracks (queries + judgments: Home Depot, synthetic): the generator ranks the whole catalogue
for each query of the split (planned code beams, then the item step; torch engine); BM25, dense and
RRF run on the same queries and corpus. Next-item tracks (Amazon): the generator ranks from each
row's history; the popularity, co-occurrence and dense-history baselines run beside it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np

from onesearch_ray.data import Track, load_track
from onesearch_ray.data.query_file import read_query_file
from onesearch_ray.eval.baselines import next_item_baselines, search_baselines
from onesearch_ray.eval.coldstart import cold_start_report
from onesearch_ray.eval.config import EvalConfig
from onesearch_ray.generator.catalogue import Catalogue, load_catalogue
from onesearch_ray.generator.evaluate import judged_split, next_item_split, search_split
from onesearch_ray.generator.served import join_held_out, load_served
from onesearch_ray.khqe.cache import encoded_vectors
from onesearch_ray.khqe.config import run_khqe_config
from onesearch_ray.retrieval.baselines import normalise_rows
from onesearch_ray.runs import texts_digest

log = logging.getLogger(__name__)
TRACK_KINDS = {"homedepot": "search", "synthetic": "search", "kuaisearch": "search", "amazon18": "next_item"}


def evaluate(
    run: str | Path, data: str | Path, track_kind: str, config: EvalConfig
) -> tuple[dict, dict | None]:
    """The run's served generator (``runs.served_model_dir``, or ``config.model_dir``; torch engine) on
    a track's split, beside the baselines: ``(results, cold-start report)``.

    A search run that holds items out (``onesearch encode --holdout-cold``) serves them as new items:
    they join the generator's live catalogue before anything is scored (else the model could never
    show them while the baselines index them), and the cold-start report scores them
    (``eval.coldstart``; None for a run without a hold-out)."""
    if track_kind not in ("search", "next_item"):
        raise ValueError(f"unknown track kind {track_kind!r} (expected search or next_item)")
    run, track = Path(run), load_track(data)
    served, live = load_served(run, Path(config.model_dir) if config.model_dir else None)
    report = None
    if track_kind == "search":
        started = time.perf_counter()
        held_out = join_held_out(served, live, track)
        if held_out:
            added_in = time.perf_counter() - started
            report = cold_start_report(
                served, live.snapshot, run, track, held_out, config.cold_start(), added_in
            )
    model, items = served.model, live.snapshot
    catalogue = dataclasses.replace(load_catalogue(run, track), item_ids=np.asarray(served.item_ids))
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
        return results, report
    metrics = search_split(model, catalogue, track, config.split, config.k, limit=config.limit, items=items)
    results = {"model": metrics | beam}
    if config.baselines:
        kept_ids = (
            set(judged_split(catalogue, track, config.split, config.limit)[0]) if config.limit else None
        )
        results.update(search_baselines(run, track, config, kept_ids))
    return results, report


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
