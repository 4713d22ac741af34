"""The layout sweep: proxies on hand-made codebooks (known answers), the search space, a layout's
code levels in the generator, and a real 2-trial Ray Tune sweep (both rungs: proxies, then the
generator) on the small synthetic track, on the session's Ray cluster."""

from __future__ import annotations

import json

import numpy as np
import pytest

from onesearch_ray.khqe import CodebookLayout, EncodedTexts, KHQEConfig, ResidualQuantizer
from onesearch_ray.khqe.config import load_khqe_config
from onesearch_ray.khqe.proxies import ProxyData, fit_and_measure, layout_proxies, relevance_pairs
from tuning.results import best_row, ranked, write_results
from tuning.space import Candidate, SearchSpace, candidates, draw, promote


# ---- proxies on hand-made codebooks --------------------------------------------------------------
@pytest.fixture
def hand_made():
    """Layout 4-2 in 2-d: first-level centroids on the axes at distance 10, second level (+-1, 0).

    items (codes): 0 (11,0)->(0,0); 1 (9,0)->(0,1); 2 (1,11)->(1,0); 3 (-11,0)->(2,1); 4 (1,-10)->(3,0)
    queries: q0 (11,0.5)->(0,0), nearest first codes 0..; q1 (1,9)->(1,0), order 1,0,2,3;
             q2 (6,5)->(0,1), order 0,1,3,2
    """
    first = np.array([[10, 0], [0, 10], [-10, 0], [0, -10]], np.float32)
    second = np.array([[1, 0], [-1, 0]], np.float32)
    quantizer = ResidualQuantizer(CodebookLayout.parse("4-2"), [first, second])
    items = np.array([[11, 0], [9, 0], [1, 11], [-11, 0], [1, -10]], np.float32)
    queries = np.array([[11, 0.5], [1, 9], [6, 5]], np.float32)
    pairs = np.array([[0, 0], [0, 1], [1, 2], [2, 2], [2, 4], [2, 3]])
    return quantizer, items, queries, pairs


def test_proxies_known_answers(hand_made):
    quantizer, items, queries, pairs = hand_made
    item_codes = quantizer.encode(items)
    assert item_codes.tolist() == [[0, 0], [0, 1], [1, 0], [2, 1], [3, 0]]
    proxies = layout_proxies(quantizer, item_codes, queries, pairs, top_m=(1, 2, 4), reach_items=2)
    # first code shared by q0-item0, q0-item1, q1-item2; both codes by q0-item0 and q1-item2
    assert proxies["same_1"] == pytest.approx(3 / 6)
    assert proxies["same_2"] == pytest.approx(2 / 6)
    # rank of the item's first code in the query's order: 0, 0, 0, 1 (q2-item2), 2 (item4), 3 (item3)
    assert proxies["in_top_1"] == pytest.approx(3 / 6)
    assert proxies["in_top_2"] == pytest.approx(4 / 6)
    assert proxies["in_top_4"] is None  # the first level has only 4 codes: every code is kept
    # 2 items: q0 and q2 keep code 0 alone (2 items), q1 keeps codes 1 and 0 (1 + 2 items)
    assert proxies["reach_2"] == pytest.approx(3 / 6)
    # 3 items: q2 keeps codes 0 and 1, so q2-item2 is reached too
    assert layout_proxies(quantizer, item_codes, queries, pairs, (), 3)["reach_3"] == pytest.approx(4 / 6)


def test_relevance_pairs_rows_and_unknown_item():
    pairs = relevance_pairs([{30, 10}, set(), {20}], np.array([10, 20, 30]))
    assert pairs.tolist() == [[0, 0], [0, 2], [2, 1]]
    with pytest.raises(ValueError, match="judged item 99"):
        relevance_pairs([{99}], np.array([10, 20]))


def test_fit_and_measure_queries_on_their_items_share_every_prefix():
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((20, 16))
    vectors = centers[rng.integers(0, 20, 600)] + 0.2 * rng.standard_normal((600, 16))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    item_ids = np.arange(1000, 1500)
    judged = np.arange(0, 500, 10)  # each valid query IS the vector of its one relevant item
    texts = [f"t{i}" for i in range(600)]
    data = ProxyData(
        item_ids=item_ids,
        items=EncodedTexts(texts[:500], vectors[:500]),
        train_queries=EncodedTexts(texts[500:], vectors[500:]),
        valid_queries=EncodedTexts([texts[i] for i in judged], vectors[judged]),
        pairs=relevance_pairs([{int(item_ids[i])} for i in judged], item_ids),
    )
    config = KHQEConfig()
    config.quantizer.layout = "16-8+opq2x8"
    _, scores = fit_and_measure(data, config)
    assert scores["layout"] == "16-8+opq2x8" and scores["n_pairs"] == 50
    assert scores["same_1"] == scores["same_2"] == scores["in_top_10"] == scores[f"reach_{350}"] == 1.0
    assert scores["in_top_50"] is None
    assert 0 < scores["icr"] <= 1 and 0 < scores["cur_level_1"] <= 1 and "cur_level_4" in scores


# ---- search space ---------------------------------------------------------------------------------
def test_space_merges_layouts_that_scale_alike_and_draws_across_first_levels():
    space = SearchSpace(
        levels=[1, 2], first_level=[16, 64, 4096], deeper_level=[256], opq=["", "opq2x256"],
        keywords=[True], encoders=["minilm"],
    )  # fmt: skip
    found = candidates(space, 4000, 8)
    layouts = [c.layout for c in found]
    assert len(layouts) == len(set(layouts))
    assert "256-256+opq2x256" in layouts and "4096" not in layouts  # 4000 / 8 -> at most 256 codes
    drawn = draw(found, 3, seed=1)
    assert sorted(CodebookLayout.parse(c.layout).rq_levels[0] for c in drawn) == [16, 64, 256]
    assert len(draw(found, 0)) == len(found)
    assert Candidate("64-256+opq2x256", False, "e5").name == "64-256+opq2x256_nokw_e5"
    # the generator decodes the residual levels only: an OPQ twin of a promoted layout is not promoted
    ranked = [Candidate(layout, True, "minilm") for layout in ("16-256+opq2x256", "16-256", "64", "64-256")]
    assert [c.layout for c in promote(ranked, 2)] == ["16-256+opq2x256", "64"]


def test_results_rank_best_first_and_skip_missing_scores(tmp_path):
    rows = [
        {"layout": "16", "keywords": True, "encoder": "minilm", "score": 0.2},
        {"layout": "32", "keywords": True, "encoder": "minilm", "score": float("nan"), "error": "boom"},
        {"layout": "64", "keywords": False, "encoder": "minilm", "score": 0.5},
    ]
    assert [row["layout"] for row in ranked(rows, "score")] == ["64", "16"]
    write_results(tmp_path, rows, "score", "title")
    assert [t["layout"] for t in json.loads((tmp_path / "results.json").read_text())["trials"]] == [
        "64",
        "16",
        "32",
    ]
    assert "| 64 | False | minilm |" in (tmp_path / "results.md").read_text()
    with pytest.raises(ValueError, match="no trial reported 'NDCG@10'"):
        best_row(rows, "NDCG@10")


def test_generator_decodes_the_layouts_residual_levels():
    from onesearch_ray.generator.config import GeneratorConfig, SearchConfig
    from onesearch_ray.generator.layout_trial import for_layout

    model = for_layout(GeneratorConfig(), "64-256-256+opq2x256")  # OPQ codes: the fine tail, not decoded
    assert model.code_levels == 3 and model.search.beams == (32, 32, 32)
    wide = GeneratorConfig(search=SearchConfig(beams=(8, 64)))
    assert for_layout(wide, "16").search.beams == (8,) and for_layout(wide, "16-8-8").search.beams == (
        8,
        64,
        64,
    )
    assert GeneratorConfig().code_levels == 1  # the caller's config is left as it was


# ---- real sweeps ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def encoded_run(encoded_small_run, tmp_path_factory):
    """A private copy of the session's encoded small track; the sweep joins the session's Ray cluster
    (a second ``ray.init`` in one test process would fail)."""
    import shutil

    run = tmp_path_factory.mktemp("tune") / "run"
    shutil.copytree(encoded_small_run, run)
    return run


def test_two_trial_sweep_from_the_cli_both_rungs(encoded_run, small_track, tmp_path):
    """Rung 1 scores 2 layouts by proxies; rung 2 trains the generator on both (code levels from the
    layout), reporting valid metrics per selection point under ASHA; the table and the best config
    (khqe: for encode, generator: for the generator) are written and load."""
    from onesearch_cli import main as cli
    from onesearch_ray.generator.config import load_job_config

    config = tmp_path / "sweep.yaml"  # the config file's sections reach the sweep and its generator rung
    config.write_text(
        "tune:\n  seed: 0\ngenerator:\n  model: {decoder: {hidden_size: 64, intermediate_size: 128}}\n"
        "  train: {batch_size: 64, patience: 0}\n"
    )
    out = tmp_path / "tune"
    argv = ["tune", "--run", str(encoded_run), "--data", str(small_track), "--out", str(out)]
    argv += ["--config", str(config), "--rungs", "generator", "--samples", "2", "--promote", "2"]
    argv += ["--layouts", "16-32", "32-32-32", "--encoders", "minilm", "--keywords", "on"]
    argv += ["--epochs", "2", "--max-minutes", "2", "--valid-limit", "8"]
    assert cli.main(argv) == 0

    table = json.loads((out / "results.json").read_text())
    trials = table["trials"]
    assert table["metric"] == "NDCG@10" and {t["layout"] for t in trials} == {"16-32", "32-32-32"}
    assert trials[0]["NDCG@10"] >= trials[1]["NDCG@10"]  # best first
    for trial in trials:
        assert 0 <= trial["same_1"] <= 1 and trial["n_pairs"] > 0 and trial["in_top_50"] is None  # rung 1
        # rung 2: the generator on the layout's residual levels, its best selection point's valid metrics
        assert trial["code_levels"] == len(trial["layout"].split("-")) and trial["beams"].startswith("32")
        assert 0 <= trial["NDCG@10"] <= 1 and 0 <= trial["HR@10"] <= trial["HR@50"] <= 1
        assert trial["n_queries"] == 8 and 2 <= trial["points"] <= 3 and 0 <= trial["point"] < trial["points"]
        history = out / "trials" / Candidate.of(trial).name / "history.json"
        assert trial["stopped"] is not history.exists()
        if not trial["stopped"]:  # trained to the end: 2 epochs, one selection point each after the start
            selection = json.loads(history.read_text())["selection"]
            assert trial["points"] == len(selection) == 3
            assert max(s["score"] for s in selection) == pytest.approx(trial["NDCG@10"])
    assert not trials[0]["stopped"]  # ASHA lets at least the leader finish
    assert (out / "results.csv").read_text().count("\n") == 3
    assert (
        "| layout |" in (out / "results.md").read_text()
        and "| code_levels |" in (out / "results.md").read_text()
    )

    best = load_khqe_config(out / "best_khqe.yaml")  # exactly what `onesearch encode --config` reads
    assert str(CodebookLayout.parse(best.quantizer.layout)) == trials[0]["layout"]
    assert best.encoder.model == "minilm" and best.keyword_enhancement is True
    generator = load_job_config(out / "best_khqe.yaml")  # and what `onesearch generator --config` reads
    assert generator.model.code_levels == trials[0]["code_levels"]
    assert len(generator.model.search.beams) == generator.model.code_levels
    assert (
        generator.model.decoder.hidden_size == 64 and generator.train.epochs == 8
    )  # the config's, not a trial's


def test_inputs_of_a_cold_holdout_run_leave_held_out_items_out(encoded_run, small_track, tmp_path):
    """A run encoded with --holdout-cold: trials fit and score without its held-out items."""
    import shutil

    from onesearch_ray.runs import write_holdout
    from tuning.sweep import load_inputs

    run = tmp_path / "run"
    shutil.copytree(encoded_run, run)
    full = load_inputs(run, small_track, ["minilm"]).proxies["minilm"]
    judged = sorted({int(full.item_ids[i]) for i in full.pairs[:, 1]})
    write_holdout(run, judged[:5])
    data = load_inputs(run, small_track, ["minilm"]).proxies["minilm"]
    assert len(data.item_ids) == len(full.item_ids) - 5 == len(data.items.vectors) == len(data.items.texts)
    assert not set(judged[:5]) & set(data.item_ids.tolist())
    kept = {int(data.item_ids[i]) for i in data.pairs[:, 1]}
    assert kept == set(judged[5:]) and len(data.pairs) < len(full.pairs)
