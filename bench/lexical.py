"""The lexical term at catalogue scale: the generator's own postings against engines built for BM25.

On a trained Home Depot run's catalogue grown to ``--items`` (``bench/scale.py``'s near-duplicates
and unrelated items), CPU ms per test query (400 queries, process CPU time, median of 3 rounds) of:

- ``generator_lexical``: the lexical work inside the generator's search, which only scores the
  items under the kept prefixes: planning's block-max bounds (``Segment.group_facts``) and the
  postings of the query's terms inside the kept row ranges (``Segment._add_lexical``), timed inside
  a full search (``generator_search``, the whole search, beside it);
- ``bm25s``: BM25 top 350 over the whole catalogue on bm25s's inverted index (the scale stand-in);
- ``tantivy``: BM25 top 350 over the whole catalogue with tantivy (block-max WAND: dynamic pruning),
  one indexing thread, the queries parsed leniently (doc addresses only, no stored fields read).

    pip install -e '.[bench]'      # tantivy
    python bench/lexical.py --run runs/hd --data ../shared/data/homedepot --items 1000000 \\
        --out docs/bench_lexical.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.scale import K, _Generator, _grow, _TestQueries  # noqa: E402

QUERIES = 400
ROUNDS = 3


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    test = _TestQueries(args.run, args.data)
    grown = _grow(test.base, args.run, args.items - test.base.n, 0.5)
    texts, vectors = test.texts[:QUERIES], test.vectors[:QUERIES]
    titles = list(test.base.titles) + grown["titles"]
    result: dict = {"items": len(titles), "queries": len(texts), "k": K}
    result["generator_search"], result["generator_lexical"] = _generator(args, test, grown, texts, vectors)
    result["bm25s"] = _bm25s(titles, texts)
    result["tantivy"] = _tantivy(titles, texts)
    print(json.dumps(result, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))


def _rounds(search) -> float:
    """Median CPU ms per query over ROUNDS rounds (a warm-up first)."""
    search()
    times = []
    for _ in range(ROUNDS):
        started = time.process_time()
        search()
        times.append(1000 * (time.process_time() - started) / QUERIES)
    return statistics.median(times)


def _generator(args, test, grown, texts, vectors) -> tuple[float, float]:
    """The whole search and, timed inside it, its lexical work (ms per query)."""
    from onesearch_ray.catalogue import segment

    generator = _Generator(args.run, test.base, {"vector_dtype": None})
    generator.add(grown)
    spent = [0.0]

    def timed(function):
        def wrapper(*a, **kw):
            started = time.process_time()
            try:
                return function(*a, **kw)
            finally:
                spent[0] += time.process_time() - started

        return wrapper

    whole = _rounds(lambda: generator.rank(texts, vectors))
    originals = segment.Segment.group_facts, segment.Segment._add_lexical
    segment.Segment.group_facts, segment.Segment._add_lexical = (timed(f) for f in originals)
    try:
        generator.rank(texts, vectors)
        spent[0] = 0.0
        generator.rank(texts, vectors)
    finally:
        segment.Segment.group_facts, segment.Segment._add_lexical = originals
    return whole, 1000 * spent[0] / QUERIES


def _bm25s(titles: list[str], texts: list[str]) -> float:
    import bm25s

    from onesearch_ray.text import tokenize

    model = bm25s.BM25(k1=1.5, b=0.75, method="lucene")
    model.index(tokenize(titles), show_progress=False)
    vocabulary = model.vocab_dict
    queries = [[vocabulary[t] for t in tokens if t in vocabulary] for tokens in tokenize(texts)]
    return _rounds(lambda: [model.get_scores(ids).argsort()[-K:] for ids in queries if ids])


def _tantivy(titles: list[str], texts: list[str]) -> float:
    import tantivy

    builder = tantivy.SchemaBuilder()
    builder.add_text_field("title", stored=False)
    index = tantivy.Index(builder.build())
    writer = index.writer(heap_size=500_000_000, num_threads=1)
    for title in titles:
        writer.add_document(tantivy.Document(title=title))
    writer.commit()
    writer.wait_merging_threads()
    index.reload()
    searcher = index.searcher()
    queries = [index.parse_query_lenient(text, ["title"])[0] for text in texts]
    return _rounds(lambda: [searcher.search(query, K) for query in queries])


if __name__ == "__main__":
    main()
