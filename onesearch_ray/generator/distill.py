"""Cascade distillation: pseudo-queries for every item, labelled by the project's own retrieval cascade.

The paper's generator learns from logs its cascade produced; this is the offline analogue. For each
item a few pseudo-queries are drawn from its title (round robin over three kinds, so each is used):

- ``keyphrases``: two of the item's keyphrases together: lexicon phrases found in the title (the
  lexicon holds train-query n-grams and attribute values, ``pipelines/prepare.py``) and the item's
  own attribute values (brand, colour, ...), e.g. "ironclad impact driver";
- ``ngram``: one lexicon phrase found in the title (a train-query n-gram, what users type; or an
  attribute value that users type too);
- ``span``: a short contiguous span of the title (:func:`title_spans`).

Each distinct pseudo-query is labelled by reciprocal-rank fusion of BM25 and dense retrieval over the
whole catalogue (``retrieval.baselines``: the "rrf" baseline, with the run's cached raw item vectors and
the run's text encoder for the queries); its top-k items become the targets of one training search
(``generator.examples.distilled_searches``: the rank-r item with gain 1 / (r + 1)). The source item
only seeds the text; it is a target only if the cascade ranks it. Items held out of the run
(``encode --holdout-cold``: no SID) neither seed pseudo-queries nor are ranked.

No valid/test text: a pseudo-query whose :func:`~onesearch_ray.generator.leak.query_key` equals a
valid or test query's is dropped (as is one equal to a train query: the human label covers it).
Labelling is the slow part (encoder + BM25 + faiss per pseudo-query), so the labelled table is cached
in ``RUN/distill/pseudo_queries.parquet`` with a digest of everything it depends on.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import time
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from onesearch_ray.generator.config import DistillConfig
from onesearch_ray.generator.leak import query_key
from onesearch_ray.io import write_parquet
from onesearch_ray.khqe import SemanticIdTokenizer
from onesearch_ray.khqe.build import EncodedTexts, catalogue_texts, enhance
from onesearch_ray.khqe.cache import load_embeddings
from onesearch_ray.khqe.keywords import KeyphraseLexicon
from onesearch_ray.khqe.online import RunTextEncoder
from onesearch_ray.retrieval.baselines import BM25Retriever, DenseRetriever, rrf_fuse
from onesearch_ray.runs import texts_digest
from onesearch_ray.text import normalize_text

log = logging.getLogger(__name__)

CACHE = "distill/pseudo_queries.parquet"
KINDS = ("keyphrases", "ngram", "span")
_DIGEST_KEY = b"onesearch.distill.digest"


def title_spans(title: str, count: int, seed: int, lengths: tuple[int, int] = (2, 4)) -> list[str]:
    """``count`` short contiguous word spans of a title, reproducible from ``seed``: stand-ins for
    the short queries that find the item (search queries are mostly title fragments)."""
    words = title.split()
    if len(words) <= lengths[0]:
        return []
    rng = np.random.default_rng(seed)
    spans = []
    for _ in range(count):
        length = int(rng.integers(lengths[0], min(lengths[1], len(words) - 1) + 1))
        start = int(rng.integers(0, len(words) - length + 1))
        spans.append(" ".join(words[start : start + length]))
    return spans


def item_attribute_values(items: pa.Table) -> list[list[str]]:
    """Attribute values of each item (the ``attributes`` map, else the brand), normalised."""
    if "attributes" in items.column_names:
        rows = [[v for _, v in (a or [])] for a in items.column("attributes").to_pylist()]
    elif "brand" in items.column_names:
        rows = [[b] if b else [] for b in items.column("brand").to_pylist()]
    else:
        rows = [[] for _ in range(items.num_rows)]
    return [[n for v in values if (n := normalize_text(v or ""))] for values in rows]


def item_candidates(
    title: str, attributes: Sequence[str], lexicon: KeyphraseLexicon | None, count: int, seed: int
) -> dict[str, list[str]]:
    """Candidate pseudo-queries of one item by kind, each list shuffled reproducibly from ``seed``."""
    matched = lexicon.match(title) if lexicon is not None else []
    phrases = list(dict.fromkeys([*matched, *attributes]))
    rng = np.random.default_rng(seed)
    candidates = {
        "keyphrases": [f"{a} {b}" for a, b in itertools.combinations(phrases, 2)],
        "ngram": matched,
        "span": title_spans(title, count, seed),
    }
    return {kind: [texts[i] for i in rng.permutation(len(texts))] for kind, texts in candidates.items()}


def pseudo_queries(
    items: pa.Table,
    lexicon: KeyphraseLexicon | None,
    per_item: int,
    exclude: Collection[str],
    seed: int = 0,
) -> pa.Table:
    """Up to ``per_item`` pseudo-queries per item, round robin over :data:`KINDS`, distinct over the
    whole catalogue (first item wins), none whose :func:`query_key` is in ``exclude``.

    Columns: ``query``, ``kind``, ``source_item``.
    """
    seen, rows = set(exclude), {"query": [], "kind": [], "source_item": []}
    titles, ids = items.column("title").to_pylist(), items.column("item_id").to_pylist()
    for item_id, title, attributes in zip(ids, titles, item_attribute_values(items), strict=True):
        item_seed = int(np.random.SeedSequence([seed, abs(item_id)]).generate_state(1)[0])
        by_kind = item_candidates(title, attributes, lexicon, per_item, item_seed)
        taken = 0
        for kind, text in _round_robin(by_kind):
            if taken == per_item:
                break
            key = query_key(text)
            if key and key not in seen:
                seen.add(key)
                rows["query"].append(text)
                rows["kind"].append(kind)
                rows["source_item"].append(item_id)
                taken += 1
    return pa.table(
        {
            "query": pa.array(rows["query"], pa.string()),
            "kind": pa.array(rows["kind"], pa.string()),
            "source_item": pa.array(rows["source_item"], pa.int64()),
        }
    )


def _round_robin(by_kind: dict[str, list[str]]):
    """(kind, text) pairs taking one text of each kind in turn until all are used."""
    for column in itertools.zip_longest(*([(k, t) for t in by_kind[k]] for k in KINDS)):
        yield from (entry for entry in column if entry is not None)


@dataclass
class Cascade:
    """The labelling cascade: BM25 over titles + dense over the run's item vectors, fused by RRF."""

    bm25: BM25Retriever
    dense: DenseRetriever
    encoder: RunTextEncoder

    def label(
        self, texts: list[str], top_k: int, depth: int
    ) -> tuple[list[list[int]], np.ndarray, np.ndarray]:
        """(RRF top-``top_k`` item ids, raw query vectors, keyword-fused query vectors) of ``texts``.

        Dense retrieval uses raw vectors on both sides, as the evaluation's dense baseline does; the
        fused vectors are what the query SID is computed from (as ``encode`` does for queries)."""
        raw = self.encoder.encoder.encode(texts)
        fused, _ = enhance(
            EncodedTexts(texts, raw),
            self.encoder.lexicon,
            self.encoder.phrase_vectors,
            self.encoder.text_weight,
        )
        fusion = rrf_fuse(self.bm25.search(texts, depth), self.dense.search_vectors(raw, depth), depth=depth)
        return [ranked[:top_k] for ranked in fusion], raw, fused


def label_pseudo_queries(
    queries: pa.Table, cascade: Cascade, sids: SemanticIdTokenizer, config: DistillConfig
) -> pa.Table:
    """``queries`` plus ``labels`` (cascade top-k item ids, best first) and ``query_codes`` (the
    pseudo-query's SID), labelled ``config.batch_size`` at a time."""
    texts = queries.column("query").to_pylist()
    labels: list[list[int]] = []
    codes: list[list[int]] = []
    started = time.perf_counter()
    for start in range(0, len(texts), config.batch_size):
        batch = texts[start : start + config.batch_size]
        top, _, fused = cascade.label(batch, config.top_k, config.depth)
        labels.extend(top)
        codes.extend(sids.encode(fused).tolist())
        done, elapsed = start + len(batch), time.perf_counter() - started
        log.info(
            "distill: labelled %d/%d pseudo-queries (%.1f ms each, %.0f s left)",
            done,
            len(texts),
            1000 * elapsed / done,
            elapsed / done * (len(texts) - done),
        )
    return queries.append_column("labels", pa.array(labels, pa.list_(pa.int64()))).append_column(
        "query_codes", pa.array(codes, pa.list_(pa.int32()))
    )


def cache_digest(
    items: pa.Table,
    lexicon: KeyphraseLexicon | None,
    sids: SemanticIdTokenizer,
    exclude: Collection[str],
    config: DistillConfig,
    encoder_name: str,
) -> str:
    """Hash of everything the labelled table depends on."""
    digest = hashlib.sha256(json.dumps([asdict(config), encoder_name], sort_keys=True).encode())
    digest.update(texts_digest(items.column("title").to_pylist()).encode())
    digest.update(np.asarray(items.column("item_id").to_numpy(), np.int64).tobytes())
    phrases = sorted(lexicon.phrases.items()) if lexicon is not None else []
    digest.update(texts_digest(f"{phrase}\t{kind}" for phrase, kind in phrases).encode())
    digest.update(texts_digest(sorted(exclude)).encode())
    digest.update(np.ascontiguousarray(sids.item_codes(), np.int64).tobytes())
    return digest.hexdigest()


def read_cache(run: Path, digest: str) -> pa.Table | None:
    """The cached labelled table when it was built from exactly these inputs, else None."""
    path = Path(run) / CACHE
    if not path.exists():
        return None
    table = pq.read_table(path)
    return table if (table.schema.metadata or {}).get(_DIGEST_KEY) == digest.encode() else None


def write_cache(run: Path, table: pa.Table, digest: str) -> None:
    write_parquet(Path(run) / CACHE, table.replace_schema_metadata({_DIGEST_KEY: digest}))


def distilled_queries(
    run: Path, items: pa.Table, sids: SemanticIdTokenizer, exclude: Collection[str], config: DistillConfig
) -> pa.Table:
    """The run's labelled pseudo-queries: from the cache when still valid, else built, labelled by
    the cascade (the run's lexicon, text encoder and cached item vectors) and cached.

    Only the items ``sids`` knows seed and rank them: items held out of the run (``encode
    --holdout-cold``) lend no title text and are never a label."""
    run = Path(run)
    encoder = RunTextEncoder.from_run(run)
    known = np.array([sids.has_item(int(i)) for i in items.column("item_id").to_pylist()], dtype=bool)
    trained = items.filter(pa.array(known))
    queries = pseudo_queries(trained, encoder.lexicon, config.pseudo_queries_per_item, exclude, config.seed)
    if config.max_pseudo_queries and queries.num_rows > config.max_pseudo_queries:
        keep = np.random.default_rng(config.seed).choice(
            queries.num_rows, config.max_pseudo_queries, replace=False
        )
        queries = queries.take(np.sort(keep))
    digest = cache_digest(trained, encoder.lexicon, sids, exclude, config, encoder.encoder.name)
    cached = read_cache(run, digest)
    if cached is not None:
        log.info("distill: %d labelled pseudo-queries from %s", cached.num_rows, run / CACHE)
        return cached
    item_vectors = load_embeddings(run, "items", catalogue_texts(items), encoder.encoder.config)
    if item_vectors is None:
        raise FileNotFoundError(
            f"{run}/embeddings/items.npy: missing or computed from another catalogue/encoder; "
            "run `onesearch encode` on this track first (distillation's dense side reads it)"
        )
    ids = trained.column("item_id").to_pylist()
    cascade = Cascade(
        BM25Retriever(trained.column("title").to_pylist(), ids),
        DenseRetriever(ids, item_vectors[known]),
        encoder,
    )
    kinds = Counter(queries.column("kind").to_pylist())
    log.info("distill: labelling %d pseudo-queries (%s)", queries.num_rows, dict(kinds))
    labelled = label_pseudo_queries(queries, cascade, sids, config)
    write_cache(run, labelled, digest)
    return labelled
