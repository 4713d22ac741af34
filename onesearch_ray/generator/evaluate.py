"""The generator on a track's held-out searches, scored with docs/evaluation.md's metrics."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from onesearch_ray.catalogue import Snapshot
from onesearch_ray.data import Track
from onesearch_ray.generator.catalogue import Catalogue
from onesearch_ray.generator.config import SearchConfig
from onesearch_ray.generator.items import model_catalogue
from onesearch_ray.generator.model import CodeItemGenerator
from onesearch_ray.generator.prompts import build_prompts
from onesearch_ray.generator.search import DecodingEngine, beam_search
from onesearch_ray.metrics import next_item_metrics, relevant_items, search_metrics
from onesearch_ray.retrieval.tracks import search_eval_inputs

BATCH = 64


def rank(
    model: CodeItemGenerator,
    texts: Sequence[str],
    query_vectors: np.ndarray,
    k: int,
    config: SearchConfig | None = None,
    histories: Sequence[Sequence[int]] | None = None,
    decoder: DecodingEngine | None = None,
    items: Snapshot | None = None,
) -> list[list[int]]:
    """The top-``k`` items of each search, in batches: ids of ``items`` (the catalogue snapshot searched;
    default: the model's own rows). ``histories``: model rows; ``decoder``: the torch engine if None."""
    items = items or model_catalogue(model).snapshot
    out: list[list[int]] = []
    for start in range(0, len(texts), BATCH):
        end = start + BATCH
        prompts = build_prompts(
            items,
            model.config.hash_buckets,
            texts[start:end],
            query_vectors[start:end],
            model.item_vectors.numpy(),
            None if histories is None else histories[start:end],
            model.config.history,
            model.config.copurchase_window,
            repeat_window=model.config.repeat_window,
        )
        rankings = beam_search(model, prompts, k, config, decoder, items)
        out.extend([item for item, _ in ranking] for ranking in rankings)
    return out


def judged_split(
    catalogue: Catalogue, track: Track, split: str, limit: int = 0
) -> tuple[list[int], list[str], np.ndarray, dict]:
    """The ``split`` queries that have a relevant item (the first ``limit`` when set): their ids, texts,
    cached query vectors, and the split's judgments."""
    query_ids, texts, judgments = search_eval_inputs(track, split)
    keep = [i for i, qid in enumerate(query_ids) if relevant_items(judgments.get(qid, {}))]
    keep = keep[:limit] if limit else keep
    if not keep:
        raise ValueError(f"split {split!r} has no query with a relevant item")
    row_of_query = {qid: row for row, qid in enumerate(track.queries["query_id"].to_pylist())}
    kept_ids = [query_ids[i] for i in keep]
    vectors = catalogue.query_vectors[[row_of_query[qid] for qid in kept_ids]]
    return kept_ids, [texts[i] for i in keep], vectors, judgments


def search_split(
    model: CodeItemGenerator,
    catalogue: Catalogue,
    track: Track,
    split: str,
    k: int = 350,
    config: SearchConfig | None = None,
    limit: int = 0,
    decoder: DecodingEngine | None = None,
    items: Snapshot | None = None,
) -> dict:
    """Metrics of ``split``'s queries that have a relevant item (the first ``limit`` when set),
    plus ``ms_per_query`` (prompt building and search, query vectors cached). ``items``: the
    catalogue searched (default: the model's items, under ``catalogue``'s ids)."""
    query_ids, texts, vectors, judgments = judged_split(catalogue, track, split, limit)
    items = items or model_catalogue(model, item_ids=catalogue.item_ids).snapshot
    started = time.perf_counter()
    ranked = rank(model, texts, vectors, k, config, decoder=decoder, items=items)
    elapsed = time.perf_counter() - started
    rankings = dict(zip(query_ids, ranked, strict=True))
    return search_metrics(rankings, judgments) | {"ms_per_query": 1000 * elapsed / len(query_ids)}


def next_item_split(
    model: CodeItemGenerator,
    catalogue: Catalogue,
    track: Track,
    split: str,
    k: int = 350,
    rows: Sequence[int] | None = None,
    decoder: DecodingEngine | None = None,
    items: Snapshot | None = None,
) -> dict:
    """Next-item metrics of ``split``'s sequence rows (or of the rows at positions ``rows``): each row
    is a search without query text, its history as the behaviour views; plus ``ms_per_query``."""
    if track.sequences is None:
        raise ValueError(f"track {track.name!r} has no sequences (not a personalisation track)")
    table = track.sequences.take(list(rows)) if rows is not None else track.sequences
    if rows is None:
        table = table.filter(np.asarray(table["split"].to_pylist()) == split)
    if not table.num_rows:
        raise ValueError(f"split {split!r} has no sequence rows")
    row_of_item = catalogue.row_of_item()
    histories = [
        [row_of_item[i] for i in h if i in row_of_item] for h in table["history_item_ids"].to_pylist()
    ]
    empty = np.zeros((len(histories), catalogue.item_vectors.shape[1]), dtype=np.float32)
    items = items or model_catalogue(model, item_ids=catalogue.item_ids).snapshot
    started = time.perf_counter()
    rankings = rank(
        model, [""] * len(histories), empty, max(k, 10), histories=histories, decoder=decoder, items=items
    )
    elapsed = time.perf_counter() - started
    metrics = next_item_metrics(rankings, table["item_id"].to_pylist())
    return metrics | {"ms_per_query": 1000 * elapsed / len(rankings)}
