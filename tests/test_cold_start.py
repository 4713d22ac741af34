"""Cold-start items: new items join trained SIDs, the evaluation.md hold-out (out of the SIDs and the
generator's catalogue and training searches), a live-added item found by the served generator's
search for its own title, and the bench's report on a held-out run's generator (real faiss, encoder,
Ray)."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from onesearch_ray.khqe import QuantizerConfig, SemanticIdTokenizer
from onesearch_ray.runs import cold_holdout_mask, is_cold_holdout, read_holdout
from tests.layering import upward_calls


def clustered(n: int, seed: int, dim: int = 16) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(0).standard_normal((12, dim))
    vectors = centers[rng.integers(0, 12, n)] + 0.3 * rng.standard_normal((n, dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def fitted() -> tuple[SemanticIdTokenizer, np.ndarray]:
    vectors = clustered(400, seed=1)
    return SemanticIdTokenizer.fit(
        np.arange(400), vectors, config=QuantizerConfig(layout="8-8+opq2x8")
    ), vectors


# ---- SID assignment ------------------------------------------------------------------------
def test_new_items_join_the_nearest_trained_sid(fitted) -> None:
    tok, _ = fitted
    trained = {tuple(c) for c in tok.item_codes().tolist()}
    new = clustered(60, seed=2)
    ids = np.arange(1000, 1060)
    codes = tok.nearest_existing_sids(new)
    copy = SemanticIdTokenizer(tok.quantizer, tok._table, tok.metadata, tok.collision_candidates)
    assert np.array_equal(copy.add_items(ids, new), codes)
    assert {tuple(c) for c in copy.item_codes().tolist()} == trained  # no SID the model never learnt
    sids = np.asarray(sorted(trained))
    distances = ((tok.quantizer.reconstruct(sids)[None] - new[:, None]) ** 2).sum(axis=2)
    nearest = sids[distances.argmin(axis=1)]
    np.testing.assert_array_equal(codes, nearest)  # exact nearest over every trained SID
    raw = tok.encode(new)
    assert any(tuple(r) not in trained for r in raw.tolist())  # the raw code would be untrained


def test_fit_still_resolves_collisions_and_cold_adds_are_checked(fitted) -> None:
    tok, vectors = fitted
    twins = np.repeat(vectors[:200], 2, axis=0)
    refit = SemanticIdTokenizer.fit(np.arange(400), twins, config=QuantizerConfig(layout="8-8+opq2x8"))
    assert refit.metrics()["icr"] == 1.0  # identical twins still get SIDs of their own at fit time
    with pytest.raises(ValueError, match="not \\(n, 16\\)"):
        tok.add_items([5000], np.zeros((1, 3), np.float32))
    empty = SemanticIdTokenizer(tok.quantizer)
    with pytest.raises(ValueError, match="fit the tokenizer"):
        empty.add_items([1], vectors[:1])


# ---- the hold-out of evaluation.md ---------------------------------------------------------
def test_cold_holdout_rule() -> None:
    ids = list(range(20000))
    expected = [int(hashlib.sha1(f"cold:{i}".encode()).hexdigest(), 16) % 20 == 0 for i in ids]
    assert cold_holdout_mask(ids).tolist() == expected
    assert 0.045 < np.mean(expected) < 0.055 and is_cold_holdout(ids[expected.index(True)])


@pytest.fixture(scope="module")
def cold_run(ray_cluster, small_track, tmp_path_factory):
    """The small track encoded with the hold-out, and the generator trained briefly on it (in process)."""
    from onesearch_ray.generator.config import GeneratorJobConfig
    from onesearch_ray.generator.job import train_on_worker
    from onesearch_ray.khqe import KHQEConfig
    from pipelines import prepare

    run = tmp_path_factory.mktemp("cold") / "run"
    config = KHQEConfig()
    config.quantizer.layout = "32-32+opq2x16"
    report = prepare.prepare(small_track, run, config, holdout="cold")
    job = GeneratorJobConfig(select_queries=20)
    job.train.epochs, job.train.batch_size = 1, 64
    train_on_worker(run, small_track, job)
    return run, report


def held_out_items(small_track) -> list[int]:
    from onesearch_ray.data import load_track

    ids = load_track(small_track).items["item_id"].to_pylist()
    return [i for i, cold in zip(ids, cold_holdout_mask(ids), strict=True) if cold]


def test_encode_with_holdout_leaves_items_out_of_fitting(cold_run, small_track):
    from onesearch_ray.data import load_track

    run, report = cold_run
    track = load_track(small_track)
    all_ids = track.items["item_id"].to_pylist()
    held = held_out_items(small_track)
    assert read_holdout(run) == held and report["n_held_out"] == len(held) > 0
    sids = SemanticIdTokenizer.load(run / "sid_tokenizer")
    assert sids.n_items == len(all_ids) - len(held) and not any(sids.has_item(i) for i in held)
    assert set(pq.read_table(run / "items.parquet")["item_id"].to_pylist()).isdisjoint(held)
    assert np.load(run / "embeddings/items.npy").shape[0] == len(all_ids)  # cache: whole catalogue
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stages"]["encode"]["inputs"]["holdout"] == "cold"


def test_the_generator_never_sees_held_out_items(cold_run, small_track):
    """Out of its catalogue (rows, lexical index, saved item ids), its training targets, and the
    distilled pseudo-queries (neither seeded by a held-out title nor labelled with a held-out item)."""
    from onesearch_ray.data import load_track
    from onesearch_ray.generator.catalogue import load_catalogue
    from onesearch_ray.generator.config import DistillConfig, GeneratorJobConfig
    from onesearch_ray.generator.distill import distilled_queries
    from onesearch_ray.generator.job import training_searches

    run, _ = cold_run
    track, held = load_track(small_track), set(held_out_items(small_track))
    catalogue = load_catalogue(run, track)
    assert held.isdisjoint(catalogue.item_ids.tolist())
    assert len(catalogue.item_ids) == track.items.num_rows - len(held) == len(catalogue.titles)
    assert held.isdisjoint(np.load(run / "generator/item_ids.npy").tolist())
    titles = dict(zip(track.items["item_id"].to_pylist(), track.items["title"].to_pylist(), strict=True))
    assert catalogue.titles == [titles[int(i)] for i in catalogue.item_ids]  # the lexical index's texts
    config = GeneratorJobConfig(distill=DistillConfig(pseudo_queries_per_item=1, max_pseudo_queries=150))
    examples = training_searches(run, track, catalogue, config)
    targets = {int(catalogue.item_ids[row]) for example in examples for row in example.targets}
    judged = track.judgments.filter(pc.greater(track.judgments["relevance"], 1.0))
    assert held & set(judged["item_id"].to_pylist())  # held-out items that train queries judge relevant
    assert targets and held.isdisjoint(targets)
    sids = SemanticIdTokenizer.load(run / "sid_tokenizer")
    labelled = distilled_queries(run, track.items, sids, set(), config.distill)
    assert labelled.num_rows == 150 and held.isdisjoint(labelled["source_item"].to_pylist())
    assert held.isdisjoint(i for labels in labelled["labels"].to_pylist() for i in labels)


# ---- live catalogue: found by the served generator's own search ---------------------------------
@pytest.fixture(scope="module")
def service(generator_small_run, small_track, tmp_path_factory):
    from onesearch_ray.serving.service import SearchService

    run = tmp_path_factory.mktemp("live") / "run"
    shutil.copytree(generator_small_run, run)
    return SearchService(run, "transformers", data=small_track)


def test_item_added_live_is_found_by_the_generators_search_for_its_title(service) -> None:
    from onesearch_ray.serving.schemas import AddItemsRequest, NewItem, SearchRequest

    title = "Zanzibar Titanium Espresso Grinder, Matte Teal"
    trained = {service.sids.sid_string(codes) for codes in service.sids.item_codes()}
    with upward_calls() as upward:  # a search and an add only go down the layers
        before = service.search([SearchRequest(query=title, k=10)])[0]
        added = service.add_items(AddItemsRequest(items=[NewItem(item_id=900001, title=title)]))
    assert not upward, upward
    assert added.added[0].sid == service.item(900001).sid
    assert added.added[0].sid in trained  # a trained SID, not a fresh one
    after = service.search([SearchRequest(query=title, k=10)])[0]
    assert after.trie_version == added.trie_version > before.trie_version
    assert after.items[0].item_id == 900001  # first for its own title, at once


def test_cold_start_report_on_a_run_with_held_out_items(cold_run, small_track, tmp_path) -> None:
    """The bench's report end to end on a held-out run: its generator (what the run serves) and the
    baselines, after the held-out items are added live."""
    from onesearch_ray.data import load_track
    from onesearch_ray.eval.coldstart import cold_start_report
    from onesearch_ray.eval.config import ColdStartConfig
    from onesearch_ray.generator.served import join_held_out, load_served

    run = tmp_path / "run"
    shutil.copytree(cold_run[0], run)
    held = held_out_items(small_track)
    track = load_track(small_track)
    served, live = load_served(run)
    held_out = join_held_out(served, live, track)
    assert sorted(held_out) == sorted(held) and all(live.snapshot.has(i) for i in held)
    report = cold_start_report(
        served, live.snapshot, run, track, held_out, ColdStartConfig(k=50, limit=8), 0.0
    )
    assert report["held_out"]["n_items"] == len(held)
    assert report["served_model"] == "generator" and report["own_title"]["model"]["beam"] == 32
    assert set(report["own_title"]) == {"model", "bm25", "dense", "rrf", "model_trained"}
    assert set(report["test_queries"]) == {"model", "bm25", "dense", "rrf"}
    for task in ("own_title", "test_queries"):
        assert report[task]["model"]["n_queries"] == report[task]["bm25"]["n_queries"] <= 8
    assert report["own_title"]["model"]["n_queries"] == 8
    assert report["own_title"]["bm25"]["HR@10"] > 0.5  # BM25 finds a new item by its title
    assert report["own_title"]["model"]["HR@10"] > 0.5  # so does the generator (own vector and terms)


def test_eval_adds_the_held_out_items_live_before_scoring(cold_run, small_track, tmp_path) -> None:
    """`onesearch eval` on a held-out run: the items join the generator live (as /items adds them),
    the whole test split is scored with them in the catalogue, and the cold-start report is written.
    The whole evaluation only goes down the layers of docs/layout.md: no call from a module into one
    of a higher layer (a callback or a late binding would be one)."""
    from onesearch_ray.eval.config import EvalConfig
    from pipelines.evaluate import run_eval

    run = tmp_path / "run"
    shutil.copytree(cold_run[0], run)
    held = set(held_out_items(small_track))
    with upward_calls() as upward:
        results = run_eval(run, "synthetic", small_track, EvalConfig(k=50, limit=10))
    assert not upward, upward
    assert {"model", "bm25", "dense", "rrf"} <= set(results) and results["model"]["n_queries"] == 10
    report = json.loads((run / "cold_start.json").read_text())
    assert report["held_out"]["n_items"] == len(held)
    assert "### test_queries" in (run / "cold_start.md").read_text()


def test_the_server_adds_the_held_out_items_at_start(cold_run, small_track) -> None:
    """What `onesearch serve` does by default: the hold-out joins the catalogue, read from the track
    the service was given; each item is then searchable for its own title."""
    from onesearch_ray.serving.schemas import SearchRequest
    from onesearch_ray.serving.service import SearchService

    service = SearchService(cold_run[0], "transformers", data=small_track)
    held = held_out_items(small_track)
    assert not any(service.catalogue.snapshot.has(i) for i in held)
    assert sorted(service.add_held_out()) == sorted(held)
    assert all(service.item(i).title for i in held)
    item = held[0]
    found = service.search([SearchRequest(query=service.item(item).title, k=10)])[0]
    assert item in [hit.item_id for hit in found.items]
    n_items = service.n_items
    assert sorted(service.add_held_out()) == sorted(held) and service.n_items == n_items  # joined once
