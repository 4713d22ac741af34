"""`onesearch eval` end to end on the small run's generators: any split, any generator directory."""

from __future__ import annotations

import json
import shutil


def test_eval_valid_split_of_another_generator(generator_small_run, small_track, tmp_path):
    from pipelines import cli

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
