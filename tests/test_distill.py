"""Cascade distillation, the no-leak guard and checkpoint selection on valid, on the small synthetic
track encoded in-process (no Ray: the embedding cache is filled here, so ``prepare`` starts no actors)."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from onesearch_ray.behavior import UserContext
from onesearch_ray.data import Track, load_track
from onesearch_ray.eval.baselines import BM25Retriever, DenseRetriever, rrf_fuse
from onesearch_ray.khqe import (
    KeyphraseLexicon,
    KHQEConfig,
    SemanticIdTokenizer,
    SentenceTransformerEncoder,
    catalogue_texts,
)
from onesearch_ray.khqe.cache import load_embeddings, store_embeddings
from onesearch_ray.model import load_model
from onesearch_ray.prompts import PromptBuilder
from onesearch_ray.train import checkpoints, distill, selection, stages
from onesearch_ray.train.config import load_train_config
from onesearch_ray.train.local import in_process_trainer
from onesearch_ray.train.stages import LeakError, StageInputs, check_no_leak, query_key, title_spans
from onesearch_ray.train.workflow import check_training_pairs, stage_inputs, train_stages


@pytest.fixture(scope="module")
def run(small_track, tmp_path_factory):
    from pipelines import prepare

    run = tmp_path_factory.mktemp("distill") / "run"
    config, track = KHQEConfig(), load_track(small_track)
    queries = track.queries
    train = [
        q
        for q, s in zip(*(queries.column(c).to_pylist() for c in ("query", "split")), strict=True)
        if s == "train"
    ]
    attributes = [dict(a or []) for a in track.items.column("attributes").to_pylist()]
    lexicon = KeyphraseLexicon.build(train, attributes, config.lexicon)  # as prepare builds it
    encoder = SentenceTransformerEncoder(config.encoder)
    for name, texts in (
        ("items", catalogue_texts(track.items)),
        ("queries", queries.column("query").to_pylist()),
        ("phrases", lexicon.vocabulary()),
    ):
        store_embeddings(run, name, texts, config.encoder, encoder.encode(texts))
    prepare.prepare(small_track, run, config, threads=1)
    return run


def first_test_query(queries: pa.Table) -> str:
    return queries.column("query")[queries.column("split").to_pylist().index("test")].as_py()


CONFIG = distill.DistillConfig(pseudo_queries_per_item=2, top_k=4, depth=50, rank_repeats=4, batch_size=256)


def test_pseudo_queries_are_labelled_by_the_rrf_cascade_and_cached(run, small_track, monkeypatch):
    inputs = stage_inputs(run, small_track)
    held_out = inputs.held_out_query_keys()
    labelled = distill.distilled_queries(run, inputs.track.items, inputs.sids, held_out, CONFIG)
    assert set(labelled.column("kind").to_pylist()) == set(distill.KINDS)
    texts = labelled.column("query").to_pylist()
    assert len({query_key(t) for t in texts}) == len(texts) and not {query_key(t) for t in texts} & held_out
    assert max(Counter(labelled.column("source_item").to_pylist()).values()) <= 2

    # the labels are exactly the project's BM25 + dense RRF top-k over the whole catalogue
    items = inputs.track.items
    ids = items.column("item_id").to_pylist()
    vectors = load_embeddings(run, "items", catalogue_texts(items), KHQEConfig().encoder)
    sample = texts[:20]
    bm25 = BM25Retriever(items.column("title").to_pylist(), ids).search(sample, 50)
    dense = DenseRetriever(ids, vectors).search_vectors(SentenceTransformerEncoder().encode(sample), 50)
    expected = [ranked[:4] for ranked in rrf_fuse(bm25, dense, depth=50)]
    assert labelled.column("labels").to_pylist()[:20] == expected

    # a rerun reads the cache instead of labelling again
    monkeypatch.setattr(distill.Cascade, "label", lambda *a, **k: pytest.fail("relabelled"))
    again = distill.distilled_queries(run, items, inputs.sids, held_out, CONFIG)
    assert again.column("labels").to_pylist() == labelled.column("labels").to_pylist()

    # weights fall with rank: the rank-r label is repeated round(4 / (r + 1)) times (at least once)
    pairs = distill.distillation_pairs(labelled.slice(0, 50), inputs.builder, inputs.codes_of, 4)
    counts = Counter(pairs)
    for row in labelled.slice(0, 50).to_pylist():
        prompt = inputs.builder.search_prompt(row["query"], row["query_codes"], None)
        repeats = [counts[(prompt, inputs.builder.target(inputs.codes_of(i)))] for i in row["labels"]]
        assert repeats == sorted(repeats, reverse=True) and repeats[0] == 4 and min(repeats) >= 1


def test_a_title_span_equal_to_a_test_query_is_dropped_and_every_stage_passes_the_guard(run, small_track):
    inputs = stage_inputs(run, small_track, title_spans_per_item=2)
    item_id, title = (
        inputs.track.items.column("item_id")[0].as_py(),
        inputs.track.items.column("title")[0].as_py(),
    )
    span = title_spans(title, 2, seed=abs(item_id))[0]
    queries = inputs.track.queries
    test_row = queries.column("split").to_pylist().index("test")
    texts = queries.column("query").to_pylist()
    texts[test_row] = span.upper()  # the same query once case is normalised
    track = dataclasses.replace(inputs.track, queries=queries.set_column(1, "query", pa.array(texts)))
    inputs = dataclasses.replace(inputs, track=track)
    assert query_key(span) in inputs.held_out_query_keys()
    alignment = stages.alignment_pairs(inputs)
    assert not any(f" {span} <|answer|>" in prompt for prompt, _ in alignment)
    add_distillation_pairs = distill.distillation_pairs(
        distill.distilled_queries(run, track.items, inputs.sids, inputs.held_out_query_keys(), CONFIG),
        inputs.builder,
        inputs.codes_of,
        2,
    )
    inputs.distilled = add_distillation_pairs
    for stage, build in stages.STAGE_BUILDERS.items():
        check_training_pairs(inputs, stage, build(inputs))  # raises on a leak


def test_a_planted_test_query_is_caught_in_every_query_slot(run, small_track):
    inputs = stage_inputs(run, small_track)
    queries = inputs.track.queries
    test_query = first_test_query(queries)
    held_out, builder = inputs.held_out_query_keys(), inputs.builder
    assert query_key(test_query) in held_out
    planted = [
        builder.search_prompt(f"  {test_query.upper()} ", None, None),
        builder.query_to_sid_prompt(test_query),
        builder.title_to_sid_prompt(test_query),
        builder.search_prompt(
            "drill",
            None,
            UserContext(
                "u", recent_queries=["lamp", test_query], short_items=[], long_items=[], profile=None
            ),
        ),
    ]
    for prompt in planted:
        with pytest.raises(LeakError, match="(?i)cooccurrence: .*" + re.escape(test_query)):
            check_no_leak("cooccurrence", [(prompt, "<a_1><|eos|>")], held_out)
    check_no_leak(
        "alignment",
        [(builder.title_to_sid_prompt(test_query), "x")],
        held_out,
        allowed={query_key(test_query)},
    )


def test_the_driver_refuses_to_train_on_a_leaking_stage(run, small_track, tmp_path, monkeypatch):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    queries = load_track(small_track).queries
    test_query = first_test_query(queries)
    honest = stages.STAGE_BUILDERS["alignment"]

    def leaking(inputs):
        return [*honest(inputs), (inputs.builder.query_to_sid_prompt(test_query), "<a_1><|eos|>")]

    monkeypatch.setitem(stages.STAGE_BUILDERS, "alignment", leaking)
    config = _tiny_config()
    with pytest.raises(LeakError, match="alignment: .*" + re.escape(test_query)):
        train_stages(copy, small_track, ["alignment"], config, lambda job: pytest.fail("trained"))


def _tiny_config(**selection):
    config = load_train_config(size="tiny")
    config.tokenizer_vocab_size = 1000
    for stage in config.stages.values():
        stage.max_steps, stage.batch_size, stage.learning_rate = 40, 8, 5e-3
        stage.checkpoint_every = stage.log_every = 10
    if selection:
        config.select_on_valid = selection_config(**selection)
    return config


def selection_config(**overrides) -> selection.SelectionConfig:
    return selection.SelectionConfig(
        **{"queries": 12, "beam": 5, "metric": "recall@50", "patience": 0} | overrides
    )


def _valid_records(stage_dir):
    lines = [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in lines if "valid_recall@50" in r]


def test_selection_on_valid_keeps_the_best_checkpoint(run, small_track, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    config = _tiny_config(stages=["alignment"])
    final = train_stages(copy, small_track, ["alignment"], config, in_process_trainer("cpu"))
    records = _valid_records(copy / "sft/alignment")
    assert [r["step"] for r in records] == [10, 20, 30, 40]  # every checkpoint scored
    best = max(records, key=lambda r: r["valid_recall@50"])  # the first of equal scores wins
    outputs = json.loads((copy / "manifest.json").read_text())["stages"]["train.alignment"]["outputs"]
    assert outputs["step"] == best["step"] and outputs["selected_on_valid"]
    # the final model IS the best checkpoint: scoring it again gives the best value
    model, tokenizer = load_model(final)
    inputs = stage_inputs(copy, small_track)
    sample = selection.search_sample(
        inputs.track,
        inputs.builder,
        inputs.query_codes,
        inputs.behavior,
        config.select_on_valid,
        str(copy / "sid_tokenizer"),
    )
    scorer = selection.ValidScorer(tokenizer, inputs.sids, sample)
    assert scorer.score(model) == pytest.approx(best["valid_recall@50"])


def test_early_stopping_stops_picks_the_best_and_resumes(run, small_track, tmp_path, monkeypatch):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    scores = iter([0.1, 0.3, 0.2, 0.25, 0.9])  # the 0.9 must never be reached with patience 2
    monkeypatch.setattr(selection.ValidScorer, "score", lambda self, model: next(scores))
    config = _tiny_config(stages=["alignment"], patience=2)
    config.stages["alignment"].max_steps = 80
    train_stages(copy, small_track, ["alignment"], config, in_process_trainer("cpu"))
    stage_dir = copy / "sft/alignment"
    assert [r["step"] for r in _valid_records(stage_dir)] == [10, 20, 30, 40]  # stopped after 40, not 80
    assert checkpoints.read_state(checkpoints.best(stage_dir))["step"] == 20
    final, _ = load_model(copy / "model/alignment")
    reference, _ = load_model(copy / "model/init")
    checkpoints.load_weights(checkpoints.best(stage_dir), reference)
    for (name, a), b in zip(final.state_dict().items(), reference.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    # a rerun after a kill at that point does not train on: the stop is in the checkpoint state
    shutil.rmtree(copy / "model/alignment")
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["stages"]["train.alignment"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    train_stages(copy, small_track, ["alignment"], config, in_process_trainer("cpu"))
    assert [r["step"] for r in _valid_records(stage_dir)] == [10, 20, 30, 40]
    assert (
        json.loads((copy / "manifest.json").read_text())["stages"]["train.alignment"]["outputs"]["step"] == 20
    )


def test_next_item_selection_holds_out_each_sampled_users_last_valid_row(run):
    sids = SemanticIdTokenizer.load(run / "sid_tokenizer")
    ids = pq.read_table(run / "items.parquet", columns=["item_id"]).column("item_id").to_pylist()[:8]
    sequences = pa.table(
        {
            "user_id": ["u1", "u1", "u2", "u1"],
            "history_item_ids": [[ids[0]], [ids[0], ids[1]], [ids[3]], [ids[0], ids[1], ids[2]]],
            "item_id": [ids[1], ids[2], ids[4], ids[5]],
            "split": ["valid", "valid", "valid", "test"],
        }
    )
    items = pa.table({"item_id": ids, "title": [f"item {i}" for i in ids]})
    track = Track(name="sequences", root=run, items=items, sequences=sequences)
    config = selection_config(queries=5, metric="hr@10")
    rows = selection.next_item_selection_rows(track, config)
    assert rows == [1, 2]  # u1's newest valid row (not the test row), u2's only one
    inputs = StageInputs(track, sids, {}, PromptBuilder(sids), selection_rows=frozenset(rows))
    targets = {
        sids.parse_sid(t.removesuffix("<|eos|>").strip()) for _, t in stages.personalization_pairs(inputs)
    }
    codes = {i: tuple(int(c) for c in sids.item_codes([i])[0]) for i in ids}
    assert targets == {codes[ids[1]]}  # row 0 trains; rows 1 and 2 keep their targets for selection
    sample = selection.next_item_sample(track, PromptBuilder(sids), rows, config, str(run / "sid_tokenizer"))
    assert sample.targets == [ids[2], ids[4]]
