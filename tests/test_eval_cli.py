"""`onesearch eval` end to end on the small run's generators: any split, any generator directory."""

from __future__ import annotations

import json
import shutil


def test_eval_valid_split_of_another_generator(generator_small_run, small_track, tmp_path):
    from onesearch_cli import main as cli

    run = tmp_path / "run"
    shutil.copytree(generator_small_run, run)
    argv = ["eval", "--run", str(run), "--track", "synthetic", "--data", str(small_track), "--split", "valid"]
    argv += ["--model", str(run / "generator-untrained"), "--k", "20", "--limit", "5"]
    assert cli.main(argv) == 0
    results = json.loads((run / "eval_synthetic_valid.json").read_text())
    assert results["model"]["n_queries"] == 5 and 0 <= results["model"]["NDCG@10"] <= 1
    assert {"bm25", "dense", "rrf"} <= set(results) and results["bm25"]["n_queries"] == 5
    assert not (run / "eval_synthetic.json").exists()  # the test split's file is left alone

    missing = ["eval", "--run", str(run), "--track", "synthetic", "--data", str(small_track)]
    assert cli.main([*missing, "--model", str(tmp_path / "no_model")]) == 2  # a clear error, exit 2


def test_eval_of_new_queries_matches_the_same_queries_scored_inside_the_run(
    generator_small_run, small_track, tmp_path
):
    from onesearch_cli import main as cli
    from onesearch_ray.data import load_track
    from onesearch_ray.metrics import relevant_items
    from onesearch_ray.retrieval import search_eval_inputs

    run = tmp_path / "run"
    shutil.copytree(generator_small_run, run)
    query_ids, texts, judgments = search_eval_inputs(load_track(small_track), "valid")
    kept = [(q, t) for q, t in zip(query_ids, texts, strict=True) if relevant_items(judgments[q])][:6]
    rows = [
        {"query_id": q, "query": text, "item_id": item, "relevance": grade}
        for q, text in kept
        for item, grade in judgments[q].items()
    ]
    rows.append({"query": kept[0][1], "query_id": kept[0][0], "item_id": 10**9})  # not in the track: dropped
    queries = tmp_path / "new_queries.jsonl"
    queries.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    base = ["eval", "--run", str(run), "--track", "synthetic", "--data", str(small_track), "--split", "valid"]
    assert cli.main([*base, "--limit", "6", "--no-baselines"]) == 0
    assert cli.main([*base, "--queries", str(queries)]) == 0
    inside = json.loads((run / "eval_synthetic_valid.json").read_text())["model"]
    new = json.loads((run / "eval_synthetic_valid_new_queries.json").read_text())
    for metric in ("NDCG@10", "HR@10", "HR@350", "MRR@10", "n_queries"):
        assert abs(new["model"][metric] - inside[metric]) < 1e-9, metric
    assert new["bm25"]["n_queries"] == 6 and list((run / "embeddings").glob("queries_*"))
