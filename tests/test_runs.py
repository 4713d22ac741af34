"""A run's pointer to its latest model: where it is written, and runs written before it moved."""

from __future__ import annotations

import json
import logging

import pytest

from onesearch_ray.runs import LATEST_MODEL, served_model_dir, write_latest_model


def _generator(path):
    path.mkdir(parents=True)
    for name in ("weights.safetensors", "codes.npz"):
        (path / name).write_bytes(b"")
    return path


def test_the_latest_model_is_named_at_the_runs_top(tmp_path) -> None:
    _generator(tmp_path / "generator")
    aligned = _generator(tmp_path / "generator-dpo")
    write_latest_model(tmp_path, aligned)
    assert json.loads((tmp_path / LATEST_MODEL).read_text()) == {"model": "generator-dpo"}
    assert not (tmp_path / "model").exists()
    assert served_model_dir(tmp_path) == aligned


def test_a_run_made_before_the_move_is_still_read(tmp_path) -> None:
    _generator(tmp_path / "generator")
    aligned = _generator(tmp_path / "generator-grpo")
    (tmp_path / "model").mkdir()
    (tmp_path / "model/latest.json").write_text(json.dumps({"model": "generator-grpo"}))
    assert served_model_dir(tmp_path) == aligned


def test_a_latest_model_that_is_gone_falls_back_and_says_so(tmp_path, caplog) -> None:
    generator = _generator(tmp_path / "generator")
    (tmp_path / LATEST_MODEL).write_text(json.dumps({"model": "generator-dpo"}))
    with caplog.at_level(logging.WARNING):
        assert served_model_dir(tmp_path) == generator
    assert "generator-dpo is gone" in caplog.text


def test_a_run_without_a_generator_names_the_step_to_run(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="onesearch generator"):
        served_model_dir(tmp_path)


def test_the_generator_job_names_a_bad_track_or_run_before_ray_starts(tmp_path, small_track) -> None:
    """`onesearch generator` on a directory that is no track, or on a run never encoded: a one-line
    error (exit 2) and nothing made on disk (the run's checkpoint storage included)."""
    from onesearch_cli.main import main
    from pipelines.generator import check_inputs

    run = tmp_path / "run"
    assert main(["generator", "--run", str(run), "--data", str(tmp_path / "no_track")]) == 2
    assert main(["generator", "--run", str(run), "--data", str(tmp_path)]) == 2
    assert main(["generator", "--run", str(run), "--data", str(small_track)]) == 2
    assert not run.exists()
    with pytest.raises(FileNotFoundError, match="not an encoded run .*onesearch encode"):
        check_inputs(run, small_track)
