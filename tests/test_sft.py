"""The SFT loop (pure torch) and the stage builders, on a tiny model."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from onesearch_ray.data import Track, load_track
from onesearch_ray.khqe import SemanticIdTokenizer
from onesearch_ray.model import ModelConfig, build_model
from onesearch_ray.prompts import PromptBuilder, encode_prompts, prompt_block, train_text_tokenizer
from onesearch_ray.runs import latest_model_dir
from onesearch_ray.train import checkpoints, local
from onesearch_ray.train.sft import (
    IGNORE_INDEX,
    SFTConfig,
    batch_indices,
    learning_rate,
    tokenize_pairs,
    total_steps,
    train,
)
from onesearch_ray.train.stages import STAGE_BUILDERS, StageInputs, personalization_pairs, title_spans
from onesearch_ray.train.workflow import stage_inputs, tokenizer_corpus


def test_batches_are_deterministic_and_disjoint_across_ranks():
    config = SFTConfig(batch_size=4, seed=1)
    a0, a1 = batch_indices(100, 3, config, 0, 2), batch_indices(100, 3, config, 1, 2)
    assert not set(a0) & set(a1)
    np.testing.assert_array_equal(a0, batch_indices(100, 3, config, 0, 2))
    one_epoch = np.concatenate([batch_indices(96, s, config, r, 2) for s in range(12) for r in range(2)])
    assert sorted(one_epoch) == list(range(96))  # an epoch visits every example once
    assert total_steps(100, SFTConfig(batch_size=10, epochs=2), world_size=2) == 10


def test_learning_rate_warms_up_then_decays():
    config = SFTConfig(learning_rate=1.0, min_learning_rate=0.1, warmup_steps=10)
    assert learning_rate(0, 100, config) == pytest.approx(0.1)
    assert learning_rate(9, 100, config) == pytest.approx(1.0)
    assert learning_rate(100, 100, config) == pytest.approx(0.1)
    assert learning_rate(50, 100, config) < learning_rate(20, 100, config)


@pytest.fixture(scope="module")
def tiny(encoded_small_run, small_track):
    sids = SemanticIdTokenizer.load(encoded_small_run / "sid_tokenizer")
    tokenizer = train_text_tokenizer(tokenizer_corpus(load_track(small_track)), sids, 1000)
    return build_model(ModelConfig(size="tiny"), tokenizer), tokenizer


def test_labels_cover_only_the_target(tiny):
    _, tokenizer = tiny
    [example] = tokenize_pairs(tokenizer, [("<|title2sid|> red lamp <|answer|>", "<a_1><b_2><|eos|>")], 64)
    scored = [t for t in example.labels if t != IGNORE_INDEX]
    assert tokenizer.decode(scored) == "<a_1><b_2><|eos|>"
    assert len(example.labels) == len(example.input_ids)


def test_training_prompts_are_aligned_exactly_as_the_engines_align_them(tiny):
    model, tokenizer = tiny
    block = prompt_block(model.config)
    assert block == 32  # the model records its alignment in config.json
    prompt, target = "<|title2sid|> red lamp <|answer|>", "<a_1><b_2><|eos|>"
    [example] = tokenize_pairs(tokenizer, [(prompt, target)], 64, block)
    [served] = encode_prompts(tokenizer, [prompt], block)
    assert len(served) % block == 0 and served[0] == tokenizer.pad_token_id
    assert example.input_ids[: len(served)] == served  # training saw exactly what serving sends
    assert tokenizer.decode(example.input_ids[len(served) :]) == target


def test_training_memorises_a_few_pairs(tiny):
    model, tokenizer = tiny
    pairs = [
        (f"<|title2sid|> item {i} <|answer|>", f"<a_{i}><b_{i}><c_{i}><d_{i}><d_{32 + i}><|eos|>")
        for i in range(4)
    ]
    examples = tokenize_pairs(tokenizer, pairs, 64)
    torch.manual_seed(0)
    config = SFTConfig(max_steps=60, batch_size=4, learning_rate=1e-2, warmup_steps=5, log_every=20)
    logs = []
    metrics = train(
        model, examples, config, pad_id=tokenizer.pad_token_id, on_log=lambda s, m: logs.append(m)
    )
    assert logs[0]["loss"] > metrics["loss"] and metrics["token_accuracy"] > 0.9


def test_stage_builders_use_training_signal_only(encoded_small_run, small_track):
    inputs = stage_inputs(encoded_small_run, small_track)
    track = load_track(small_track)
    held_out = {
        q
        for q, s in zip(
            track.queries.column("query").to_pylist(), track.queries.column("split").to_pylist(), strict=True
        )
        if s != "train"
    }
    train_queries = {
        q
        for q, s in zip(
            track.queries.column("query").to_pylist(), track.queries.column("split").to_pylist(), strict=True
        )
        if s == "train"
    }
    held_out -= train_queries  # a text may occur in both splits by chance
    pairs = {stage: build(inputs) for stage, build in STAGE_BUILDERS.items()}
    n_items = track.items.num_rows
    assert len(pairs["alignment"]) >= n_items  # every item's title -> SID (plus categories, queries)
    for stage in ("cooccurrence", "personalization"):
        assert pairs[stage], stage
        for prompt, target in pairs[stage][:500]:
            assert prompt.endswith("<|answer|>") and target.endswith("<|eos|>")
            assert not any(f"<|query|> {q.lower()} <|qsid|>" in prompt for q in held_out)


def test_sequence_tracks_train_on_valid_rows_only(encoded_small_run):
    """Amazon-style tracks: windows come from `valid` rows; a `test` row's history never trains."""
    sids = SemanticIdTokenizer.load(encoded_small_run / "sid_tokenizer")
    items = pq.read_table(encoded_small_run / "items.parquet")
    ids = items.column("item_id").to_pylist()[:6]
    sequences = pa.table(
        {
            "user_id": ["u1", "u2"],
            "history_item_ids": [[ids[0], ids[1]], [ids[3], ids[4]]],
            "item_id": [ids[2], ids[5]],
            "split": ["valid", "test"],
        }
    )
    catalogue = pa.table({"item_id": items.column("item_id"), "title": items.column("title")})
    track = Track(name="sequences", root=encoded_small_run, items=catalogue, sequences=sequences)
    pairs = personalization_pairs(StageInputs(track, sids, {}, PromptBuilder(sids), behavior=None))
    targets = {sids.parse_sid(target.removesuffix("<|eos|>").strip()) for _, target in pairs}
    assert targets == {tuple(int(c) for c in sids.item_codes([i])[0]) for i in ids[1:3]}


def test_in_process_trainer_resumes_and_finishes_stages(encoded_small_run, small_track, tmp_path):
    """The no-Ray single-device trainer: same layout, checkpoints and resume as the Ray job."""
    run = tmp_path / "run"
    shutil.copytree(encoded_small_run, run, ignore=shutil.ignore_patterns("sft", "model"))
    config = tmp_path / "train.yaml"
    config.write_text(
        "train:\n  model: {size: tiny}\n  tokenizer_vocab_size: 1000\n  stages:\n"
        "    alignment: {max_steps: 30, batch_size: 8, checkpoint_every: 10, log_every: 10}\n"
    )
    args = ["--run", str(run), "--data", str(small_track), "--stage", "alignment", "--config", str(config)]
    stage_dir = run / "sft/alignment"
    local.main([*args, "--max-steps", "20"])
    assert [step for step, _ in checkpoints.complete(stage_dir)] == [10, 20]
    shutil.rmtree(run / "model/alignment")  # as if that run had been stopped after step 20
    final = local.main(args)
    assert final == run / "model/alignment"
    assert [step for step, _ in checkpoints.complete(stage_dir)] == [20, 30]  # pruned to the newest two
    metrics = [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [10, 20, 30]  # resumed at 20, not restarted
    assert json.loads((run / "model/latest.json").read_text())["model"] == "model/alignment"
    assert latest_model_dir(run) == final


def test_title_spans_are_reproducible_fragments_of_the_title():
    title = "Delta Vero 1-Handle Shower Only Faucet Trim Kit in Chrome"
    spans = title_spans(title, 3, seed=7)
    assert spans == title_spans(title, 3, seed=7) and len(spans) == 3
    for span in spans:
        assert span in title and 2 <= len(span.split()) <= 4
    assert title_spans("Hammer", 2, seed=1) == [] and title_spans("Claw Hammer", 2, seed=1) == []
