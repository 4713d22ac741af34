"""CJK tokens for BM25: which tokens of a Chinese title the lexical view should read, measured.

On a KuaiSearch-layout Chinese track (``onesearch synth --format kuaisearch --lang zh``), the BM25
baseline (``retrieval.BM25Retriever``, the catalogue's own index) over the items' texts with each
CJK run tokenised as: single characters (what ``text.tokenize`` does), characters and bigrams,
bigrams only, and jieba's search-mode words (``pip install jieba``; skipped without it). NDCG@10,
HR@10 on the valid queries (the choice) and the test queries (the check).

    python bench/cjk_tokens.py --data DIR
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import onesearch_ray.text as text  # noqa: E402
from onesearch_ray.data import load_track  # noqa: E402
from onesearch_ray.khqe import catalogue_texts  # noqa: E402
from onesearch_ray.metrics import search_metrics  # noqa: E402
from onesearch_ray.retrieval import BM25Retriever, search_eval_inputs  # noqa: E402

Segmenter = Callable[[str], list[str]]


def segmenters() -> dict[str, Segmenter]:
    found: dict[str, Segmenter] = {
        "characters": list,
        "characters + bigrams": lambda run: [*run, *(run[i : i + 2] for i in range(len(run) - 1))],
        "bigrams": lambda run: [run[i : i + 2] for i in range(max(1, len(run) - 1))],
    }
    try:
        import jieba

        jieba.setLogLevel(logging.WARNING)
        found["jieba (search mode)"] = jieba.lcut_for_search
    except ImportError:
        print("jieba not installed: its row is skipped")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, type=Path)
    args = parser.parse_args()
    track = load_track(args.data)
    texts, ids = catalogue_texts(track.items), track.items["item_id"].to_pylist()
    lexical = sys.modules["onesearch_ray.catalogue.lexical"]
    variants = segmenters()
    print("| CJK tokens | valid NDCG@10 | valid HR@10 | test NDCG@10 | test HR@10 |\n|---|---|---|---|---|")
    for name, segment in variants.items():
        lexical.tokenize = functools.partial(text.tokenize, segment=segment)  # what LexicalIndex calls
        retriever = BM25Retriever(texts, ids)
        cells = []
        for split in ("valid", "test"):
            query_ids, queries, judgments = search_eval_inputs(track, split)
            ranked = dict(zip(query_ids, retriever.search(queries, 350), strict=True))
            metrics = search_metrics(ranked, judgments)
            cells += [f"{metrics['NDCG@10']:.3f}", f"{metrics['HR@10']:.3f}"]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
