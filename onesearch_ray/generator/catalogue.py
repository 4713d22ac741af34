"""What a generator is built from: an encoded run (cached text vectors, KHQE SIDs) and its track.

``onesearch encode`` leaves ``RUN/embeddings/items.npy`` (one vector per ``track.items`` row),
``RUN/embeddings/queries.npy`` (one per ``track.queries`` row, all splits) and the SID tokenizer.
The generator holds the items the tokenizer knows (a cold-start hold-out leaves some out; they
join later through ``add_items``), in track order. ``catalogue_of`` builds the same from a tokenizer
and vectors in memory (a layout sweep's trial, on the SIDs it has just fitted).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onesearch_ray.behavior.copurchase import copurchase_counts
from onesearch_ray.catalogue.lexical import LexicalIndex
from onesearch_ray.data import Track
from onesearch_ray.generator.codes import CodeTree
from onesearch_ray.generator.config import GeneratorConfig
from onesearch_ray.generator.model import CodeItemGenerator
from onesearch_ray.generator.train import Example
from onesearch_ray.khqe import SemanticIdTokenizer
from onesearch_ray.retrieval.baselines import normalise_rows


@dataclass
class Catalogue:
    item_ids: np.ndarray  # (items,) the generator's rows
    titles: list[str]
    item_vectors: np.ndarray  # (items, dim) unit rows
    item_codes: np.ndarray  # (items, sid length) full KHQE SIDs
    level_sizes: tuple[int, ...]
    query_vectors: np.ndarray | None  # (track queries, dim) unit rows, track.queries order

    def row_of_item(self) -> dict[int, int]:
        return {int(item): row for row, item in enumerate(self.item_ids)}


def load_catalogue(run: str | Path, track: Track) -> Catalogue:
    """The catalogue of an encoded run: its SID tokenizer and cached text vectors."""
    run = Path(run)
    tokenizer = SemanticIdTokenizer.load(run / "sid_tokenizer")
    item_vectors = _vectors(run / "embeddings/items.npy", track.items.num_rows, "track.items rows")
    query_vectors = None
    if track.queries is not None:
        query_vectors = _vectors(run / "embeddings/queries.npy", track.queries.num_rows, "track.queries rows")
    return catalogue_of(track, tokenizer, item_vectors, query_vectors)


def catalogue_of(
    track: Track,
    tokenizer: SemanticIdTokenizer,
    item_vectors: np.ndarray,
    query_vectors: np.ndarray | None = None,
) -> Catalogue:
    """The catalogue of ``track`` under ``tokenizer``'s SIDs, from vectors in memory (one row per
    ``track.items`` row; ``query_vectors`` one per ``track.queries`` row): what ``load_catalogue``
    reads from a run, or a layout sweep's trial builds from the SIDs it has just fitted."""
    all_ids = np.asarray(track.items["item_id"].to_pylist())
    if len(item_vectors) != len(all_ids):
        raise ValueError(f"{len(item_vectors)} item vectors for {len(all_ids)} track.items rows")
    if query_vectors is not None and (track.queries is None or len(query_vectors) != track.queries.num_rows):
        rows = 0 if track.queries is None else track.queries.num_rows
        raise ValueError(f"{len(query_vectors)} query vectors for {rows} track.queries rows")
    known = np.array([tokenizer.has_item(int(i)) for i in all_ids], dtype=bool)
    if not known.any():
        raise ValueError("the SID tokenizer knows none of the track's items: was it fitted on this track?")
    titles = [t for t, keep in zip(track.items["title"].to_pylist(), known, strict=True) if keep]
    ids = all_ids[known]
    return Catalogue(
        ids,
        titles,
        normalise_rows(item_vectors)[known],
        np.asarray(tokenizer.item_codes(ids.tolist())),
        tuple(tokenizer.layout.level_sizes),
        None if query_vectors is None else normalise_rows(query_vectors),
    )


def build_generator(
    catalogue: Catalogue,
    config: GeneratorConfig,
    searches: Sequence[Example] = (),
    lexical: LexicalIndex | None = None,
) -> CodeItemGenerator:
    """An untrained generator over the catalogue: it already searches (see ``generator.model``).
    Its lexical view is ``lexical`` (a trained model's, for its untrained start) or the titles' plus
    the co-purchase terms counted over the training ``searches``."""
    levels = config.code_levels
    if levels > len(catalogue.level_sizes):
        raise ValueError(f"code_levels {levels}: the run's SIDs have {len(catalogue.level_sizes)} levels")
    tree = CodeTree.build(
        catalogue.item_codes[:, :levels], catalogue.level_sizes[:levels], catalogue.item_vectors
    )
    lexical = lexical or lexical_index(catalogue, config, searches)
    return CodeItemGenerator(config, catalogue.item_vectors, tree, lexical)


def lexical_index(catalogue: Catalogue, config: GeneratorConfig, searches: Sequence[Example]) -> LexicalIndex:
    """The titles' BM25 index and, with ``config.copurchase_window``, the co-purchase terms of the
    training ``searches`` (their recent items -> their targets)."""
    index = LexicalIndex.build(catalogue.titles)
    if config.repeat_window:
        index = index.with_repeat(config.repeat_window)
    if not config.copurchase_window:
        return index
    counts = copurchase_counts(
        [s.history for s in searches],
        [s.targets for s in searches],
        len(catalogue.item_ids),
        config.copurchase_window,
    )
    return index.with_copurchase(counts)


def _vectors(path: Path, rows: int, what: str) -> np.ndarray:
    if not path.is_file():
        raise ValueError(f"{path} is missing: run `onesearch encode` on this track first")
    vectors = np.load(path, allow_pickle=False)
    if vectors.ndim != 2 or len(vectors) != rows:
        raise ValueError(f"{path} holds {vectors.shape} vectors for {rows} {what}: re-encode the run")
    return vectors
