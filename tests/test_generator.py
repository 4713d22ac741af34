"""The CPU-first generator (onesearch_ray.generator): its lexical term, cold start, the leak guard,
save/load, and a tiny end-to-end train on the small synthetic track, the last through Ray Train."""

from __future__ import annotations

import dataclasses

import bm25s
import numpy as np
import pyarrow as pa
import pytest
import torch
import yaml

from onesearch_ray.catalogue import LiveCatalogue, NewItems, build_segment
from onesearch_ray.catalogue.lexical import LexicalIndex
from onesearch_ray.config import parse_config
from onesearch_ray.data import Track, load_track
from onesearch_ray.generator.catalogue import build_generator, load_catalogue
from onesearch_ray.generator.codes import CodeTree
from onesearch_ray.generator.config import GeneratorConfig, GeneratorJobConfig, SearchConfig, TrainConfig
from onesearch_ray.generator.evaluate import rank, search_split
from onesearch_ray.generator.examples import (
    check_no_leak,
    held_out_user_rows,
    judged_searches,
    log_searches,
    next_item_searches,
    next_item_selection_rows,
    tuning_user,
)
from onesearch_ray.generator.items import model_catalogue
from onesearch_ray.generator.job import selection_rows, split_metrics, training_searches
from onesearch_ray.generator.leak import LeakError
from onesearch_ray.generator.model import CodeItemGenerator
from onesearch_ray.generator.prompts import build_prompts
from onesearch_ray.generator.store import load_generator, save_generator
from onesearch_ray.generator.train import (
    Example,
    example_prompts,
    item_candidates,
    item_log_probs,
    item_logits,
    loss_of,
    sampled_item_logits,
    train,
)
from onesearch_ray.khqe import SemanticIdTokenizer
from onesearch_ray.khqe.encoder import SentenceTransformerEncoder
from onesearch_ray.metrics import search_metrics
from onesearch_ray.retrieval.tracks import search_eval_inputs
from onesearch_ray.runs import served_model_dir
from onesearch_ray.text import tokenize

TITLES = [
    "Cordless Drill 18V with battery",
    "Drill bit set, 20 pieces",
    "Red interior paint, 1 gallon",
    "Drill driver drill kit",
    "Garden hose 50 ft",
]


def served_lexical_scores(index: LexicalIndex, query: str) -> np.ndarray:
    """(items,) the lexical term as a search computes it (the live catalogue's postings of the
    query's terms), untrained weights (IDF), over every item."""
    n = index.n_items
    segment = build_segment(
        np.arange(n),
        np.zeros((n, 1), np.float32),
        np.zeros(n),
        np.zeros((n, 1)),
        [""] * n,
        index.saturation,
        (1,),
    )
    snapshot = LiveCatalogue(segment, index, index.idf()).snapshot
    terms = snapshot.query_terms([query])[0]
    plan = (0, np.array([0]), np.zeros(1))
    ids, scores = snapshot.top_items([plan], np.zeros((1, 1), np.float32), [terms], k=n)[0]
    out = np.zeros(n, dtype=np.float32)
    out[ids] = scores
    return out


def tiny_model(titles: list[str] = TITLES, dim: int = 8) -> CodeItemGenerator:
    vectors = np.random.default_rng(0).normal(size=(len(titles), dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    codes = CodeTree.build(np.arange(len(titles))[:, None] % 2, (2,), vectors)
    return CodeItemGenerator(GeneratorConfig(hash_buckets=64), vectors, codes, LexicalIndex.build(titles))


# --- the lexical term --------------------------------------------------------------------------


def test_untrained_lexical_term_is_lucene_bm25():
    index = LexicalIndex.build(TITLES)
    reference = bm25s.BM25(k1=1.5, b=0.75, method="lucene")
    reference.index(tokenize(TITLES), show_progress=False)
    for query in ("cordless drill", "drill", "red paint gallon", "hose"):
        expected = reference.get_scores(tokenize([query])[0])
        np.testing.assert_allclose(served_lexical_scores(index, query), expected, rtol=1e-5, atol=1e-6)


def test_lexical_term_on_hand_made_cases():
    index = LexicalIndex.build(TITLES)

    def scores(query: str) -> np.ndarray:
        return served_lexical_scores(index, query)

    assert np.argmax(scores("cordless drill")) == 0  # the only title with both terms
    assert scores("drills")[1] > 0  # stemmed: "drills" matches "drill"
    assert scores("paint")[[0, 1, 3, 4]].max() == 0 and scores("paint")[2] > 0
    assert not scores("zebra unicorn").any()  # words no title has score nothing
    assert not scores("the and with").any()  # stopwords only
    # a repeated term saturates: "drill drill" in item 3 scores above item 1's single "drill", not 2x
    drill = scores("drill")
    assert drill[1] < drill[3] < 2 * drill[1]


def test_term_weights_are_parameters_the_item_loss_trains():
    model = tiny_model()
    example = Example("cordless drill", model.item_vectors[0].numpy(), np.array([0]), np.ones(1))
    losses = loss_of(model, [example], np.random.default_rng(0))
    losses["item"].backward()
    grad = model.term_weight.grad
    query_terms = model.lexical.query_terms(["cordless drill"])[0]
    assert grad[query_terms].abs().min() > 0
    others = np.setdiff1d(np.arange(model.lexical.n_terms), query_terms)
    assert grad[others].abs().max() == 0
    # raising a term's weight moves the items holding it up
    prompts = build_prompts(
        model.lexical, 64, ["paint drill"], model.item_vectors[:1].numpy(), model.item_vectors
    )
    before = model.lexical_logits(prompts.lexical_terms)[0]
    paint = model.lexical.vocabulary["paint"]
    with torch.no_grad():
        model.term_weight[paint] += 5.0
    after = model.lexical_logits(prompts.lexical_terms)[0]
    assert float((after[2] - before[2]).detach()) == pytest.approx(
        5.0 * model.lexical.saturation[2, paint], rel=1e-5
    )
    assert torch.equal(after[[0, 1, 3, 4]], before[[0, 1, 3, 4]])


def test_search_returns_every_item_under_the_kept_prefixes_once():
    model = tiny_model()
    prompts = build_prompts(model.lexical, 64, ["drill"], model.item_vectors[:1].numpy(), model.item_vectors)
    rows = rank(model, ["drill"], model.item_vectors[:1].numpy(), k=10, config=SearchConfig(beams=(2,)))[0]
    assert sorted(rows) == list(range(len(TITLES)))
    narrow = rank(model, ["drill"], model.item_vectors[:1].numpy(), k=10, config=SearchConfig(beams=(1,)))[0]
    assert set(narrow) < set(rows) and len(prompts) == 1


def test_bad_configs_name_the_problem():
    with pytest.raises(ValueError, match="beams"):
        GeneratorConfig(code_levels=2).validate()
    with pytest.raises(ValueError, match="head_dim"):
        parse_config(GeneratorConfig, {"decoder": {"head_dim": 48}}).validate()
    with pytest.raises(ValueError, match="unknown key 'beam'"):
        parse_config(GeneratorConfig, {"beam": 3})
    with pytest.raises(ValueError, match="learning rate"):
        TrainConfig(learning_rate=0, weight_learning_rate=0, repeat_learning_rate=0).validate()


# --- on the small synthetic track (real MiniLM vectors, real KHQE) -------------------------------


@pytest.fixture(scope="module")
def catalogue(encoded_small_run, small_track):
    return load_catalogue(encoded_small_run, load_track(small_track))


def test_leak_guard(small_track, catalogue):
    track = load_track(small_track)
    examples = judged_searches(track, catalogue.row_of_item(), catalogue.query_vectors)
    assert examples
    check_no_leak(examples, track)  # the train split's searches pass
    texts, splits = track.queries["query"].to_pylist(), track.queries["split"].to_pylist()
    held_out = next(
        t for t, s in zip(texts, splits, strict=True) if s == "test" and t not in texts[: splits.index(s)]
    )
    leaked = [*examples, Example(held_out.upper(), examples[0].query_vector, np.array([0]), np.ones(1))]
    with pytest.raises(LeakError, match="valid/test query"):
        check_no_leak(leaked, track)


def test_search_log_gives_clicked_and_ordered_items_with_the_clicks_before(small_track, catalogue):
    track = load_track(small_track)
    rows = catalogue.row_of_item()
    examples = log_searches(track, rows, catalogue.query_vectors, history=3)
    train_texts = {
        t
        for t, s in zip(track.queries["query"].to_pylist(), track.queries["split"].to_pylist(), strict=True)
        if s == "train"
    }
    assert len(examples) > 100 and {e.query for e in examples} <= train_texts
    gains = np.concatenate([e.gains for e in examples])
    assert set(gains.tolist()) == {1.0, 2.0}  # a click and an order
    assert any(e.history for e in examples) and all(len(e.history) <= 3 for e in examples)
    assert not any(e.history for e in log_searches(track, rows, catalogue.query_vectors, history=0))


def test_next_item_track_trains_on_valid_rows_and_selects_on_held_out_ones(encoded_small_run, small_track):
    # the small synthetic track without its queries and log: a next-item track, as Amazon
    track = dataclasses.replace(load_track(small_track), queries=None, judgments=None, interactions=None)
    catalogue = load_catalogue(encoded_small_run, track)
    config = GeneratorJobConfig(select_queries=10)
    held_out = selection_rows(track, config)
    assert len(held_out) == 10 and {track.sequences["split"][p].as_py() for p in held_out} == {"valid"}
    examples = training_searches(encoded_small_run, track, catalogue, config)
    every_row = next_item_searches(track, catalogue.row_of_item(), catalogue.item_vectors.shape[1])
    assert 0 < len(examples) < len(every_row) and all(e.query == "" for e in examples)
    model = build_generator(catalogue, GeneratorConfig(history=5))
    metrics = split_metrics(model, catalogue, track, "valid", config)
    assert metrics["n_rows"] == 10 and 0 <= metrics["NDCG@10"] <= metrics["HR@10"] <= 1


def test_next_item_selection_holds_out_whole_users_at_their_last_valid_row():
    """Selection rows are the sampled tuning users' newest valid rows (never a test row), and no row of
    those users trains: the selection never scores the next step of a sequence the model learned. Users
    outside the tuning half never select; their test rows are the held-out check."""
    sequences = pa.table(
        {
            "user_id": ["u1", "u1", "u2", "u1", "u3", "u3", "u3", "u4", "u4"],
            "history_item_ids": [
                [10],
                [10, 11],
                [13],
                [10, 11, 12],
                [16],
                [16, 17],
                [16, 17, 18],
                [11],
                [11, 13],
            ],
            "item_id": [11, 12, 14, 15, 17, 18, 19, 13, 16],
            "split": ["valid", "valid", "valid", "test", "valid", "valid", "test", "valid", "test"],
        }
    )
    assert [tuning_user(u) for u in ("u1", "u2", "u3", "u4")] == [True, True, True, False]
    track = Track(name="sequences", root=None, items=pa.table({"item_id": [10]}), sequences=sequences)
    assert next_item_selection_rows(track, users=5) == [1, 2, 5]  # each tuning user's newest valid row
    assert held_out_user_rows(track) == [8]
    row_of_item = {item: item - 10 for item in range(10, 20)}
    for users in (1, 2):
        rows = next_item_selection_rows(track, users=users)
        held_users = {sequences["user_id"][r].as_py() for r in rows}
        examples = next_item_searches(track, row_of_item, dim=4, held_out=set(rows))
        targets = {int(t) for e in examples for t in e.targets}
        for row in range(7):
            if sequences["split"][row].as_py() != "valid":
                continue
            user, target = sequences["user_id"][row].as_py(), sequences["item_id"][row].as_py() - 10
            assert (target in targets) == (user not in held_users), (users, row)
        assert not {5, 6, 9} & targets  # test rows never train


def served_items(run, catalogue):
    """An untrained generator (beam 8) and its items as serving holds them: full SIDs, one SID level
    indexed below the decoded one."""
    model = build_generator(catalogue, GeneratorConfig(search=SearchConfig(beams=(8,))))
    sids = SemanticIdTokenizer.load(run / "sid_tokenizer")
    codes = sids.item_codes(catalogue.item_ids)
    items = model_catalogue(model, catalogue.item_ids, codes, sids.layout.level_sizes, catalogue.titles)
    return model, sids, items


def test_new_item_is_found_for_its_own_title(encoded_small_run, catalogue):
    model, sids, items = served_items(encoded_small_run, catalogue)
    titles = ["Zanzibar Titanium Espresso Grinder, Matte Teal", "Nordhem Walnut Bookshelf Ladder, 5 Tier"]
    encoder = SentenceTransformerEncoder()
    vectors = encoder.encode(titles, "passage")
    new_ids = np.array([10_000_001, 10_000_002])
    items.add(NewItems(new_ids, titles, vectors, sids.nearest_existing_sids(vectors)))
    found = rank(model, titles, encoder.encode(titles, "query"), k=10, items=items.snapshot)
    assert found[0][0] == new_ids[0] and found[1][0] == new_ids[1]


def test_bounded_search_keeps_at_most_max_items_and_is_unchanged_under_the_budget(
    encoded_small_run, catalogue
):
    model, _, live = served_items(encoded_small_run, catalogue)
    items = live.snapshot
    assert len(items.level_sizes) == model.codes.levels + 1  # one SID level below the decoded ones
    texts, vectors = ["grey cotton jacket", "black sofa"], catalogue.item_vectors[:2]
    unbounded = rank(model, texts, vectors, 400, items=items)
    own_items = model_catalogue(model, item_ids=catalogue.item_ids).snapshot  # decoded levels only
    assert unbounded == rank(model, texts, vectors, 400, items=own_items)  # under the budget: the same
    bounded = rank(model, texts, vectors, 400, SearchConfig(beams=(8,), max_items=40), items=items)
    largest = int(np.diff(items.segments[0].levels[1].bounds).max())
    for wide, narrow in zip(unbounded, bounded, strict=True):
        assert 0 < len(narrow) < len(wide) and len(narrow) <= max(40, largest)


def test_save_and_load_give_the_same_searches(tmp_path, catalogue):
    model = build_generator(catalogue, GeneratorConfig())
    with torch.no_grad():
        model.term_weight.mul_(1.5)
    path = save_generator(model, catalogue.item_ids, tmp_path / "generator")
    loaded, item_ids = load_generator(path)
    np.testing.assert_array_equal(item_ids, catalogue.item_ids)
    texts = ["grey cotton jacket", "black sofa"]
    vectors = catalogue.item_vectors[:2]
    assert rank(loaded, texts, vectors, 20) == rank(model, texts, vectors, 20)

    weights = path / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match="weights.safetensors"):
        load_generator(path)
    (path / "codes.npz").unlink()
    with pytest.raises(ValueError, match="missing codes.npz"):
        load_generator(path)


def test_sampled_item_loss_scores_its_candidates_as_the_whole_catalogue_does():
    titles = [
        f"{colour} {thing} {n}" for n in range(30) for colour, thing in (("red", "drill"), ("blue", "hose"))
    ]
    vectors = np.random.default_rng(0).normal(size=(len(titles), 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    codes = CodeTree.build(np.arange(len(titles))[:, None] % 6, (6,), vectors)
    model = CodeItemGenerator(GeneratorConfig(hash_buckets=64), vectors, codes, LexicalIndex.build(titles))
    examples = [
        Example("red drill", vectors[0], np.array([0, 2]), np.array([2.0, 1.0])),
        Example("blue hose", vectors[1], np.array([1]), np.ones(1)),
    ]
    prompts = example_prompts(model, examples)
    last = model.hidden(model.prompt_embeddings(prompts))[:, -1]
    first_codes = model.code_logits(0, last, prompts.query_vectors).detach()
    rows, correction, fixed = item_candidates(model, examples, first_codes, 8, np.random.default_rng(1))
    assert {0, 1, 2} <= set(fixed.tolist()) and np.array_equal(rows[: len(fixed)], fixed)
    assert len(set(rows.tolist())) == len(rows) and len(rows) < len(titles)
    best = set(torch.topk(first_codes, 4, dim=1).indices.flatten().tolist()) | {0, 1}  # targets' codes
    assert {int(c) for c in model.codes.item_codes[fixed, 0]} <= best  # hard negatives: under the best codes
    drawn = len(rows) - len(fixed)
    assert torch.equal(correction[: len(fixed)], torch.zeros(len(fixed)))
    assert correction[len(fixed) :].tolist() == pytest.approx(
        [np.log((len(titles) - len(fixed)) / drawn)] * drawn
    )
    whole = item_logits(model, prompts, last)[:, torch.as_tensor(rows)]
    torch.testing.assert_close(sampled_item_logits(model, prompts, last, rows), whole, rtol=1e-5, atol=1e-5)
    sampled = loss_of(model, examples, np.random.default_rng(1), negatives=8)["item"]
    exact = loss_of(model, examples, np.random.default_rng(1))["item"]
    assert 0 < float(sampled.detach()) <= float(exact.detach()) + 1.0  # an estimate of the same loss
    sampled.backward()
    assert model.term_weight.grad is not None and model.term_weight.grad.abs().sum() > 0


def test_tiny_training_ranks_relevant_items_above_a_random_order(encoded_small_run, small_track, catalogue):
    track = load_track(small_track)
    config = GeneratorJobConfig(train=TrainConfig(epochs=6, batch_size=16, evaluate_every=10, max_minutes=5))
    model = build_generator(catalogue, config.model)
    untrained = search_split(model, catalogue, track, "valid")["NDCG@10"]
    history = train(model, training_searches(encoded_small_run, track, catalogue, config), config.train)
    losses = [step["item"] for step in history["steps"]]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])  # it learns
    trained = search_split(model, catalogue, track, "test")
    query_ids, _, judgments = search_eval_inputs(track, "test")
    shuffled = np.random.default_rng(0).permutation(catalogue.item_ids)
    random_order = search_metrics({q: shuffled[:350].tolist() for q in query_ids}, judgments)
    assert trained["NDCG@10"] > random_order["NDCG@10"] + 0.2
    assert trained["HR@350"] >= random_order["HR@350"]
    assert untrained > 0  # the untrained start already searches


def test_ray_train_job_on_two_nodes_trains_as_one_worker_selects_saves_and_scores(
    ray_cluster, encoded_small_run, generator_small_run, small_track, tmp_path
):
    """`onesearch generator --workers 2` on a local cluster of two nodes of one CPU each: one worker a
    node, and the same selection scores as the one in-process worker of ``generator_small_run``
    (same config: each worker takes its share of one worker's batches)."""
    import shutil

    import ray
    from ray.cluster_utils import Cluster
    from ray.util.state import list_actors

    from pipelines import generator as job
    from tests.ray_jobs import free_port

    run = tmp_path / "run"
    shutil.copytree(encoded_small_run, run, ignore=shutil.ignore_patterns("sft", "model", "generator*"))
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump({"generator": {"train": {"epochs": 1, "batch_size": 64}, "select_queries": 20}})
    )
    ray.shutdown()  # off the session's cluster, onto two nodes of one CPU each
    cluster = None
    try:
        # a dashboard port of its own (the state API reads it): 8265 may be another cluster's
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "dashboard_port": free_port()})
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level="WARNING")
        results = job.main(
            ["--run", str(run), "--data", str(small_track), "--config", str(config), "--workers", "2"]
        )
        workers = list_actors(cluster.address, filters=[("class_name", "=", "RayTrainWorker")], limit=100)
        assert len({w.node_id for w in workers}) == 2  # one worker a node
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        ray.init(address=ray_cluster[0], logging_level="WARNING")  # back on the session's cluster
    assert (run / "generator/weights.safetensors").is_file()
    assert not (run / "ray_train/generator").exists()  # its checkpoints go once the model is saved
    assert served_model_dir(run) == run / "generator"  # the run's latest model, what serve and eval load
    history = yaml.safe_load((run / "generator/history.json").read_text())
    alone = yaml.safe_load((generator_small_run / "generator/history.json").read_text())
    scores = [s["score"] for s in history["selection"]]
    assert scores == pytest.approx([s["score"] for s in alone["selection"]], abs=1e-4)  # as one worker
    assert history["best"]["score"] == max(scores)  # the selected weights are the best on valid
    assert set(results) == {"untrained/valid", "untrained/test", "trained/valid", "trained/test"}
    assert results["trained/valid"]["NDCG@10"] >= results["untrained/valid"]["NDCG@10"] - 1e-9


# --- preference alignment (DPO from the feedback log) ----------------------------------------


def test_dpo_from_the_feedback_log_raises_what_users_ordered_over_what_they_skipped(tmp_path):
    import copy

    from onesearch_ray.generator.preference import attach_reference, dpo_loss_of, feedback_searches
    from onesearch_ray.rewards.feedback_log import FeedbackLog, ShownItem

    model = tiny_model()
    item_ids = [101, 102, 103, 104, 105]
    log = FeedbackLog(tmp_path / "feedback.sqlite")
    for _ in range(3):  # users searching "drill" order the bit set and skip the drills above it
        shown = [ShownItem(i, "") for i in (101, 104, 102)]
        impression = log.record_impression("drill", [], None, shown, "generator")
        log.record_event(impression, 102, "order")
    skipped = log.record_impression("drill", [], None, [ShownItem(101, "")], "generator")
    log.record_impression(  # /search/bm25's pages are in the log too: not the generator's
        "drill", [], None, [ShownItem(101, ""), ShownItem(102, "")], "bm25"
    )
    assert skipped

    rows = {item: row for row, item in enumerate(item_ids)}
    vector = model.item_vectors[3].numpy()
    examples = feedback_searches(log.path, rows, lambda texts: np.stack([vector] * len(texts)))
    assert len(examples) == 3  # no skip-above pair, one level only, another model's: no preference
    assert examples[0].gains.tolist() == [1.0, 1.0, 3.0] and examples[0].query == "drill"

    attach_reference(copy.deepcopy(model), examples)
    prompts = example_prompts(model, examples[:1])

    def margin() -> float:
        with torch.no_grad():
            log_probs = item_log_probs(model, prompts)[0]
        return float(log_probs[rows[102]] - log_probs[rows[101]])

    before = margin()
    with pytest.raises(ValueError, match="reference"):
        dpo_loss_of(model, [Example("drill", vector, np.array([0, 1]), np.array([1.0, 2.0]))], None)
    train(model, examples, TrainConfig(epochs=20, batch_size=3, patience=0), loss_fn=dpo_loss_of)
    assert margin() > before + 1.0


# --- TPMA-GRPO on the generator's own rankings -------------------------------------------------


def test_grpo_raises_what_the_user_ordered_among_the_models_own_top_items():
    import copy
    import functools

    from onesearch_ray.generator.config import GRPOConfig
    from onesearch_ray.generator.grpo import ItemRewardTable, grpo_loss_of, rollout_log_probs
    from onesearch_ray.generator.search import beam_search
    from onesearch_ray.rewards import RelevanceOracle, RewardConfig

    model = tiny_model()
    vector = model.item_vectors[2].numpy()  # a query vector pointing away from the drills
    ordered = Example("drill", vector, np.array([1]), np.array([2.0]), query_id=None)  # the bit set
    prompts = example_prompts(model, [ordered])
    top = [row for row, _ in beam_search(model, prompts, 3)[0]]
    assert 1 in top and top[0] != 1  # the model's own top 3 holds it, not on top

    rows = np.array([top])
    with torch.no_grad():
        per_position = rollout_log_probs(model, prompts, rows)
        assert per_position.shape == (1, 3, model.codes.levels + 1)
        assert torch.allclose(per_position[0, :, -1], item_log_probs(model, prompts)[0, rows[0]], atol=1e-5)

    def gap_to_the_top() -> float:
        ranked = dict(beam_search(model, prompts, 3)[0])
        return max(ranked.values()) - ranked.get(1, -np.inf)

    before = gap_to_the_top()
    config = GRPOConfig(group=3)
    table = ItemRewardTable(RewardConfig(), np.arange(5), np.zeros(5), RelevanceOracle())
    assert table.rewards([ordered], rows)[0].tolist() == [
        4.0 if row == 1 else 0.0 for row in top
    ]  # ordered; no CTR, no judged relevance
    loss = functools.partial(grpo_loss_of, reference=copy.deepcopy(model), rewards=table, config=config)
    train_config = TrainConfig(
        epochs=20, batch_size=8, learning_rate=1e-3, weight_learning_rate=0.01, patience=0
    )
    history = train(model, [ordered] * 8, train_config, loss_fn=loss)
    assert np.isfinite([s["item"] for s in history["steps"]]).all()
    assert gap_to_the_top() < before / 2  # the ordered item climbs toward the top
