"""Cascade distillation (``generator.distill``) and the no-leak keys it excludes, on the small synthetic
track encoded in-process (no Ray: the embedding cache is filled here, so ``prepare`` starts no actors)."""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pytest

from onesearch_ray.data import Track, load_track
from onesearch_ray.generator import distill
from onesearch_ray.generator.config import DistillConfig
from onesearch_ray.generator.leak import held_out_query_keys, query_key
from onesearch_ray.khqe import (
    KeyphraseLexicon,
    KHQEConfig,
    SemanticIdTokenizer,
    SentenceTransformerEncoder,
    catalogue_texts,
)
from onesearch_ray.khqe.cache import load_embeddings, store_embeddings
from onesearch_ray.retrieval.baselines import BM25Retriever, DenseRetriever, rrf_fuse


@pytest.fixture(scope="module")
def run(small_track, tmp_path_factory):
    from pipelines import prepare

    run = tmp_path_factory.mktemp("distill") / "run"
    config, track = KHQEConfig(), load_track(small_track)
    queries = track.queries
    train = [
        q
        for q, s in zip(*(queries.column(c).to_pylist() for c in ("query", "split")), strict=True)
        if s == "train"
    ]
    attributes = [dict(a or []) for a in track.items.column("attributes").to_pylist()]
    lexicon = KeyphraseLexicon.build(train, attributes, config.lexicon)  # as prepare builds it
    encoder = SentenceTransformerEncoder(config.encoder)
    for name, texts in (
        ("items", catalogue_texts(track.items)),
        ("queries", queries.column("query").to_pylist()),
        ("phrases", lexicon.vocabulary()),
    ):
        store_embeddings(run, name, texts, config.encoder, encoder.encode(texts))
    prepare.prepare(small_track, run, config, threads=1)
    return run


def first_test_query(queries: pa.Table) -> str:
    return queries.column("query")[queries.column("split").to_pylist().index("test")].as_py()


CONFIG = DistillConfig(pseudo_queries_per_item=2, top_k=4, depth=50, batch_size=256)


def test_pseudo_queries_are_labelled_by_the_rrf_cascade_and_cached(run, small_track, monkeypatch):
    track = load_track(small_track)
    sids = SemanticIdTokenizer.load(run / "sid_tokenizer")
    held_out = held_out_query_keys(track)
    labelled = distill.distilled_queries(run, track.items, sids, held_out, CONFIG)
    assert set(labelled.column("kind").to_pylist()) == set(distill.KINDS)
    texts = labelled.column("query").to_pylist()
    assert len({query_key(t) for t in texts}) == len(texts) and not {query_key(t) for t in texts} & held_out
    assert max(Counter(labelled.column("source_item").to_pylist()).values()) <= 2

    # the labels are exactly the project's BM25 + dense RRF top-k over the whole catalogue
    items = track.items
    ids = items.column("item_id").to_pylist()
    vectors = load_embeddings(run, "items", catalogue_texts(items), KHQEConfig().encoder)
    sample = texts[:20]
    bm25 = BM25Retriever(items.column("title").to_pylist(), ids).search(sample, 50)
    dense = DenseRetriever(ids, vectors).search_vectors(SentenceTransformerEncoder().encode(sample), 50)
    expected = [ranked[:4] for ranked in rrf_fuse(bm25, dense, depth=50)]
    assert labelled.column("labels").to_pylist()[:20] == expected

    # a rerun reads the cache instead of labelling again
    monkeypatch.setattr(distill.Cascade, "label", lambda *a, **k: pytest.fail("relabelled"))
    again = distill.distilled_queries(run, items, sids, held_out, CONFIG)
    assert again.column("labels").to_pylist() == labelled.column("labels").to_pylist()


def test_held_out_keys_are_valid_and_test_texts_that_no_train_query_shares():
    queries = pa.table(
        {
            "query_id": [1, 2, 3, 4],
            "query": ["Red  Drill", "red drill", "brass lamp", "oak sofa"],
            "split": ["train", "test", "valid", "test"],
        }
    )
    track = Track(name="t", root=None, items=pa.table({"item_id": [1]}), queries=queries)
    assert held_out_query_keys(track) == {"brass lamp", "oak sofa"}  # "red drill" is a train text too
    assert query_key("  Brass LAMP ") == "brass lamp"


def test_title_spans_are_short_reproducible_word_spans():
    title = "ironclad cordless impact driver kit with two batteries"
    spans = distill.title_spans(title, 5, seed=7)
    assert spans == distill.title_spans(title, 5, seed=7) and len(spans) == 5
    assert all(2 <= len(span.split()) <= 4 and span in title for span in spans)
    assert distill.title_spans("two words", 3, seed=0) == []
