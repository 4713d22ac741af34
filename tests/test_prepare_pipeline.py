"""The KHQE job on a real Ray cluster: Ray Data actors, outputs, caching, CLI and `ray job submit`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from onesearch_ray.khqe import KHQEConfig, SemanticIdTokenizer
from onesearch_ray.runs import RunDir
from pipelines import prepare
from tests import ray_jobs

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def encoded_run(ray_cluster, small_track, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    config = KHQEConfig()
    config.quantizer.layout = "4096-1024-512+opq2x256"
    report = prepare.prepare(small_track, run, config)
    return run, report


def test_outputs_and_report(encoded_run):
    run, report = encoded_run
    on_disk = json.loads((run / "codes_report.json").read_text())
    assert on_disk["icr"] == report["icr"] and "cur" in on_disk and "level_1" in on_disk["cur"]
    assert on_disk["layout"] == "32-32-32+opq2x32"  # 400 items + train queries: scaled, same shape
    assert report["keyword_enhancement"] and report["items_with_keyphrase"] > 0.5
    tokenizer = SemanticIdTokenizer.load(run / "sid_tokenizer")
    items = pq.read_table(run / "items.parquet").to_pylist()
    assert len(items) == 400 and tokenizer.n_items == 400
    for row in items[:20]:
        assert row["sid"] == tokenizer.sid_string(row["codes"])
        assert tokenizer.item_codes([row["item_id"]])[0].tolist() == row["codes"]
    queries = pq.read_table(run / "queries.parquet")
    assert queries.num_rows == 120 and set(queries.column("split").to_pylist()) <= {"train", "valid", "test"}
    stage = RunDir(run).stage("encode")
    assert stage["inputs"]["data"] and stage["versions"]["ray"]


def test_rows_keep_input_order_through_ray_data(encoded_run, small_track):
    from onesearch_ray.khqe import EncoderConfig, SentenceTransformerEncoder

    run, _ = encoded_run
    import numpy as np

    cached = np.load(run / "embeddings/items.npy")
    titles = pq.read_table(run / "items.parquet").column("title").to_pylist()
    direct = SentenceTransformerEncoder(EncoderConfig()).encode(titles[:5])
    brands = pq.read_table(Path(small_track) / "items.parquet").column("brand").to_pylist()[:5]
    assert all(b is None or b.lower() in t.lower() for t, b in zip(titles[:5], brands, strict=True))
    np.testing.assert_allclose(cached[:5], direct, atol=1e-5)


def test_rerun_reuses_cached_embeddings(encoded_run, small_track, caplog):
    run, report = encoded_run
    before = (run / "embeddings/items.npy").stat().st_mtime_ns
    caplog.set_level("INFO", logger="onesearch.prepare")
    again = prepare.prepare(small_track, run, KHQEConfig())
    assert (run / "embeddings/items.npy").stat().st_mtime_ns == before
    assert "embeddings/items: cached" in caplog.text
    assert again["icr"] == report["icr"]  # seeded: same codes


def run_encode_cli(data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "onesearch_cli",
        "encode",
        "--data",
        str(data),
        "--out",
        str(out),
        *extra,
    ]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=120)


def test_cli_rejects_bad_input(tmp_path):
    (tmp_path / "products.parquet").write_text("not parquet")
    result = run_encode_cli(tmp_path, tmp_path / "r")
    assert result.returncode == 2 and "products.parquet" in result.stderr
    bad_layout = run_encode_cli(tmp_path, tmp_path / "r", "--layout", "12-x")
    assert bad_layout.returncode == 2 and "layout" in bad_layout.stderr


def test_a_run_is_never_written_over_a_track(small_track, tmp_path):
    """`--out` naming the track itself (or another track) is refused before anything is written: the
    run's items.parquet and queries.parquet would replace the track's."""
    track = tmp_path / "track"
    shutil.copytree(small_track, track)
    before = {p.name: p.stat().st_mtime_ns for p in track.iterdir()}
    with pytest.raises(ValueError, match="is a track directory"):
        prepare.prepare(track, track, KHQEConfig())
    assert {p.name: p.stat().st_mtime_ns for p in track.iterdir()} == before


def test_prepare_job_via_ray_job_submit(ray_cluster, small_track, tmp_path):
    _, dashboard = ray_cluster
    out = tmp_path / "job_run"
    args = ["--data", str(small_track), "--out", str(out), "--layout", "64-64+opq2x16", "--threads", "1"]
    job_id = ray_jobs.submit(dashboard, "pipelines.prepare", args)
    ray_jobs.wait_for(lambda: ray_jobs.status(dashboard, job_id) in ray_jobs.TERMINAL, 300, "the prepare job")
    assert ray_jobs.status(dashboard, job_id) == "SUCCEEDED", ray_jobs.logs(dashboard, job_id)[-3000:]
    assert json.loads((out / "codes_report.json").read_text())["layout"] == "32-32+opq2x16"
