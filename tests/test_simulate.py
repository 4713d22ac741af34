"""Simulated A/B test: the harness measures what it says, is deterministic, and the CLI writes the report."""

from __future__ import annotations

import json
import zlib
from dataclasses import replace

import numpy as np
import pytest

from onesearch_cli import main as cli
from onesearch_ray.data import Event
from onesearch_ray.rewards.feedback_log import read_feedback
from onesearch_ray.runs import cold_holdout_mask
from onesearch_ray.sim import CascadeSystem, OracleSystem, RandomSystem, World, simulate
from onesearch_ray.sim.config import RerankConfig, SimulationConfig
from onesearch_ray.sim.metrics import METRICS
from onesearch_ray.sim.report import write_report
from onesearch_ray.sim.tune import tune_rerank

SHORT = SimulationConfig(searches=300, bootstrap=300, seed=5)
SLICES = {
    "all",
    "cold_start_items",
    "cold_start_users",
    "returning_users",
    "long_tail_queries",
    "head_queries",
}


@pytest.fixture(scope="module")
def world(small_track) -> World:
    items = World.from_directory(small_track).item_ids
    return World.from_directory(small_track, cold_items=items[cold_holdout_mask(items.tolist())].tolist())


def _floor_and_ceiling(world: World, config: SimulationConfig) -> dict:
    systems = {"random": lambda: RandomSystem(world, seed=config.seed), "oracle": lambda: OracleSystem(world)}
    return simulate(world, systems, config)


def _numbers(report: dict) -> dict:
    """The report without its timings."""
    return {key: value for key, value in report.items() if key != "systems"}


def test_oracle_beats_random_on_orders_with_an_interval_excluding_zero(world, tmp_path):
    report = _floor_and_ceiling(world, SHORT)
    assert set(report["slices"]) == SLICES and report["control"] == "random"
    for piece, result in report["slices"].items():
        assert result["n_searches"] > 0, piece
        for name in ("random", "oracle"):
            for metric in METRICS:
                entry = result["systems"][name]["metrics"][metric]
                assert set(entry) == {"value", "low", "high"}
        assert not result["systems"]["random"]["vs_control"]
    overall = report["slices"]["all"]["systems"]
    orders = overall["oracle"]["vs_control"]["orders_per_1k"]
    assert orders["low"] > 0 and orders["rel_low"] > 0
    metrics = overall["oracle"]["metrics"]["orders_per_1k"]
    assert metrics["low"] <= metrics["value"] <= metrics["high"]
    # Expected orders are what the drawn orders sample, with less noise: the paired interval narrows.
    expected = overall["oracle"]["metrics"]["expected_orders_per_1k"]
    assert metrics["low"] <= expected["value"] <= metrics["high"]
    expected_gain = overall["oracle"]["vs_control"]["expected_orders_per_1k"]
    assert expected_gain["low"] > 0
    assert expected_gain["high"] - expected_gain["low"] < orders["high"] - orders["low"]
    assert overall["oracle"]["metrics"]["mean_relevance"]["value"] > 2.0
    assert overall["random"]["metrics"]["mean_relevance"]["value"] < 1.5
    # The cold-item slice counts only held-out items: the oracle shows them, random almost never.
    cold = report["slices"]["cold_start_items"]["systems"]
    assert cold["oracle"]["metrics"]["mean_relevance"]["value"] > 2.5
    assert cold["oracle"]["metrics"]["ctr"]["low"] > 0
    assert report["world"]["n_cold_items"] == len(world.cold_items) > 0
    for system in report["systems"].values():
        assert system["cpu_ms_per_query"] >= 0 and system["wall_ms_per_query"] > 0
    paths = write_report(report, tmp_path)
    assert json.loads(paths["json"].read_text())["slices"]["all"]["n_searches"] == SHORT.searches
    assert paths["plot"].stat().st_size > 0 and "### cold_start_items" in paths["markdown"].read_text()


def test_same_seed_same_numbers_other_seed_other_traffic(world):
    first, again = _floor_and_ceiling(world, SHORT), _floor_and_ceiling(world, SHORT)
    assert _numbers(first) == _numbers(again)
    other = _floor_and_ceiling(world, replace(SHORT, seed=6))
    assert _numbers(other)["slices"] != _numbers(first)["slices"]


class _HashEncoder:
    """Deterministic pseudo-random vectors per text: a stand-in for MiniLM (these tests are about
    the re-rank, not the retrieval)."""

    name = "hash"

    def encode(self, texts: list[str], kind: str = "query") -> np.ndarray:
        return np.stack([np.random.default_rng(zlib.crc32(t.encode())).standard_normal(16) for t in texts])


def _cascade(world: World, rerank: RerankConfig | None) -> CascadeSystem:
    encoder = _HashEncoder()
    vectors = encoder.encode(world.track.items["title"].to_pylist())
    return CascadeSystem(world, vectors, encoder, rerank)


def test_cascade_rerank_lifts_the_users_brand(world):
    user = max(
        world.behaviour_index.user_ids(), key=lambda u: len(world.behaviour_index.context_for(u).long_items)
    )
    history = world.behaviour_index.context_for(user).long_items
    brands = world.item_facts[world.rows_of(history), 1]
    favourite = np.bincount(brands[brands >= 0]).argmax()
    ranked = world.item_ids.tolist()[:40]
    facts = world.item_facts[world.rows_of(ranked)]
    cascade = _cascade(world, RerankConfig(depth=40, brand=5.0, colour=0.0, category=0.0))
    personal = cascade.personalise(ranked, user)
    assert sorted(personal) == sorted(ranked)
    n_favourite = int((facts[:, 1] == favourite).sum())
    assert n_favourite > 0
    top = world.item_facts[world.rows_of(personal[:n_favourite]), 1]
    assert (top == favourite).all()
    assert cascade.personalise(ranked, None) == ranked  # a new user keeps the RRF order
    assert _cascade(world, None).personalise(ranked, user) == ranked


def test_tune_rerank_keeps_the_best_point(world):
    cascade = _cascade(world, RerankConfig())
    grid = {"depth": (20,), "brand": (0.0, 0.6), "colour": (0.0,), "category": (0.0, 0.1)}
    chosen, points = tune_rerank(world, cascade, SimulationConfig(searches=120), grid)
    assert len(points) == 4
    best = max(points, key=lambda point: point["expected_orders_per_1k"])
    assert (chosen.brand, chosen.category) == (best["brand"], best["category"])
    assert cascade.rerank == chosen


def test_bad_configuration_is_named():
    with pytest.raises(ValueError, match="searches"):
        SimulationConfig(searches=0)
    with pytest.raises(ValueError, match="cold_user_fraction"):
        SimulationConfig(cold_user_fraction=1.5)


def test_cli_errors_name_the_problem(small_track, tmp_path, capsys):
    missing = tmp_path / "no_run"
    assert cli.main(["simulate", "--run", str(missing), "--data", str(small_track)]) == 2
    assert f"run directory {missing} not found" in capsys.readouterr().err
    run = tmp_path / "run"
    run.mkdir()
    argv = ["simulate", "--run", str(run), "--data", str(small_track), "--system", "bogus"]
    assert cli.main(argv) == 2
    assert "unknown system 'bogus'" in capsys.readouterr().err
    assert cli.main([*argv[:-1], "gen=generator"]) == 2
    assert "generator directory 'generator' not found" in capsys.readouterr().err
    assert cli.main(["simulate", "--run", str(run), "--data", str(run)]) == 2
    assert "synthetic_world.json not found" in capsys.readouterr().err
    assert cli.main(["simulate", "--run", str(run), "--data", str(small_track)]) == 2  # nothing to test
    assert "no trained generator to test against the cascade" in capsys.readouterr().err


def test_cli_on_a_trained_run_reports_every_system_and_slice(generator_small_run, small_track, tmp_path):
    out = tmp_path / "sim"
    model = generator_small_run / "generator"
    argv = ["simulate", "--run", str(generator_small_run), "--data", str(small_track), "--out", str(out)]
    argv += ["--system", "cascade", "--system", "gen=generator", "--system", f"again={model}"]
    argv += ["--searches", "32", "--beam", "4", "--bootstrap", "200"]
    argv += ["--feedback-log", str(tmp_path / "feedback.sqlite")]
    assert cli.main(argv) == 0
    report = json.loads((out / "simulation.json").read_text())
    # The models' pages are impressions of the feedback log, the simulated clicks its events.
    logged = read_feedback(tmp_path / "feedback.sqlite")
    assert len(set(logged["impression_id"].to_pylist())) == 2 * 32  # gen and again; not the cascade
    events = np.asarray(logged["event"].to_pylist())
    ctr = report["slices"]["all"]["systems"]["gen"]["metrics"]["ctr"]["value"]
    assert (events >= int(Event.CLICKED)).sum() == round(ctr * logged.num_rows) > 0
    assert set(report["systems"]) == {"cascade", "gen", "again"} and report["control"] == "cascade"
    assert set(report["slices"]) == SLICES - {"cold_start_items"}  # this run holds no item out
    for result in report["slices"].values():
        for name in ("gen", "again"):
            assert set(result["systems"][name]["vs_control"]) == set(METRICS)
    # The same model twice on the same traffic: the same numbers, a zero difference.
    overall = report["slices"]["all"]["systems"]
    assert overall["gen"]["metrics"] == overall["again"]["metrics"]
    assert np.isfinite(report["systems"]["gen"]["cpu_ms_per_query"])
    markdown = (out / "simulation.md").read_text()
    assert "### long_tail_queries" in markdown and "| again |" in markdown
    assert (out / "simulation.png").stat().st_size > 0


def test_cpu_used_never_takes_off_a_child_that_ended() -> None:
    """A child's CPU counts while it lives; one that exits (or whose pid is reused) never makes the
    total negative (a search's CPU once came out at -213 ms)."""
    from onesearch_ray.sim.session import cpu_used

    before = {1: 10.0, 2: 500.0, 3: 40.0}
    after = {1: 10.5, 3: 1.0, 4: 0.25}  # 2 ended; 3 is a new process on a reused pid; 4 is new
    assert cpu_used(before, after) == pytest.approx(0.5 + 1.0 + 0.25)
    assert cpu_used(before, before) == 0.0
