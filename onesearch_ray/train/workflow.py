"""Run-directory glue for training: tokenizer + initial model, each stage's pairs, the per-worker
stage loop, and the stage-by-stage driver.

Reads what ``onesearch encode`` wrote (``sid_tokenizer/``, ``queries.parquet``) plus the track.
No Ray here: ``pipelines/train.py`` runs ``run_stage_loop`` on Ray Train workers, and
``onesearch_ray.train.local`` runs it in this process on one device.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from onesearch_ray.behavior import BehaviorIndex
from onesearch_ray.data import Track, load_track
from onesearch_ray.io import write_parquet
from onesearch_ray.khqe import SemanticIdTokenizer
from onesearch_ray.model import build_model, extend_pretrained, load_model, save_model
from onesearch_ray.prompts import PromptBuilder, PromptConfig, prompt_block, train_text_tokenizer
from onesearch_ray.runs import RunDir, write_latest_model
from onesearch_ray.train import checkpoints, distill, selection
from onesearch_ray.train.config import TrainConfig
from onesearch_ray.train.sft import (
    SFTConfig,
    make_optimizer,
    set_trainable,
    softmax_vocabulary,
    tokenize_pairs,
    train,
)
from onesearch_ray.train.stages import STAGE_BUILDERS, STAGES, Pairs, StageInputs, check_no_leak, query_key

log = logging.getLogger(__name__)


def load_query_codes(run: Path) -> dict[int, tuple[int, ...]]:
    path = run / "queries.parquet"
    if not path.exists():
        return {}
    table = pq.read_table(path, columns=["query_id", "codes"])
    return {
        int(q): tuple(c)
        for q, c in zip(table.column("query_id").to_pylist(), table.column("codes").to_pylist(), strict=True)
    }


def tokenizer_corpus(track: Track) -> list[str]:
    """Texts the BPE vocabulary is learned from: titles, brands, categories and train queries."""
    items = track.items
    texts = [t for t in items.column("title").to_pylist() if t]
    for column in ("brand", "category"):
        if column in items.column_names:
            texts.extend(sorted({v for v in items.column(column).to_pylist() if v}))
    if track.queries is not None:
        texts.extend(
            q
            for q, s in zip(
                track.queries.column("query").to_pylist(),
                track.queries.column("split").to_pylist(),
                strict=True,
            )
            if s == "train"
        )
    return texts


def prepare_model_init(run: Path, data: str | Path, config: TrainConfig) -> Path:
    """RUN/model/init: the SID-aware tokenizer and a freshly built (or extended) model."""
    init_dir = Path(run) / "model/init"
    if (init_dir / "config.json").exists():
        return init_dir
    track = load_track(data)
    sids = SemanticIdTokenizer.load(Path(run) / "sid_tokenizer")
    if config.model.init_from:  # a pretrained LM: its own tokenizer, SID rows from the item titles
        items = track.items
        model, tokenizer = extend_pretrained(
            config.model, sids, items.column("item_id").to_pylist(), items.column("title").to_pylist()
        )
    else:
        tokenizer = train_text_tokenizer(tokenizer_corpus(track), sids, config.tokenizer_vocab_size)
        model = build_model(config.model, tokenizer)
    save_model(model, tokenizer, init_dir)
    log.info(
        "model init: %s, %d parameters, vocabulary %d",
        config.model.init_from or config.model.size,
        sum(p.numel() for p in model.parameters()),
        len(tokenizer),
    )
    return init_dir


def behavior_index(track: Track) -> BehaviorIndex | None:
    """User behaviour of a track; None for search-only tracks (no users at all)."""
    if track.interactions is None and track.sequences is None:
        return None
    return BehaviorIndex.from_track(track)


def stage_inputs(
    run: Path, data: str | Path, prompt_config: PromptConfig | None = None, title_spans_per_item: int = 0
) -> StageInputs:
    track = load_track(data)
    sids = SemanticIdTokenizer.load(Path(run) / "sid_tokenizer")
    return StageInputs(
        track=track,
        sids=sids,
        query_codes=load_query_codes(Path(run)),
        builder=PromptBuilder(sids, prompt_config or PromptConfig()),
        behavior=behavior_index(track),
        title_spans_per_item=title_spans_per_item,
    )


def build_stage_pairs(inputs: StageInputs, stage: str) -> Pairs:
    """The stage's (prompt, target) pairs; empty when the track has no signal for it
    (e.g. co-occurrence on a track without queries)."""
    if stage not in STAGE_BUILDERS:
        raise ValueError(f"unknown SFT stage {stage!r} (known: {', '.join(STAGE_BUILDERS)})")
    return STAGE_BUILDERS[stage](inputs)


def write_stage_examples(stage_dir: Path, pairs: Pairs) -> None:
    table = pa.table({"prompt": [p for p, _ in pairs], "target": [t for _, t in pairs]})
    write_parquet(stage_dir / "examples.parquet", table)


def read_stage_examples(stage_dir: Path) -> Pairs:
    table = pq.read_table(stage_dir / "examples.parquet")
    return list(zip(table.column("prompt").to_pylist(), table.column("target").to_pylist(), strict=True))


def trained_stage_model(run: RunDir, stage: str) -> Path | None:
    """The stage's final model when a previous run already finished that stage, else None."""
    final_dir = run / f"model/{stage}"
    if (final_dir / "config.json").exists() and (run.stage(f"train.{stage}") or {}).get("outputs"):
        return final_dir
    return None


@dataclass
class StageJob:
    """Where one stage trains: its examples and checkpoints, and the model it starts from."""

    stage: str
    stage_dir: Path
    init_dir: Path
    sft: SFTConfig
    valid: selection.ValidSample | None = None  # checkpoint selection / early stopping on valid


def run_stage_loop(
    job: StageJob,
    *,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str = "cpu",
    wrap_model: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
    save_checkpoint: Callable[[int, torch.nn.Module, torch.optim.Optimizer, dict], None],
) -> None:
    """One worker's share of a stage: load, resume from the last checkpoint, train, checkpoint.

    ``wrap_model`` moves the model to its device (and wraps it for DDP under Ray Train);
    ``save_checkpoint`` receives the unwrapped model. With ``job.valid``, every checkpoint is scored
    on valid by rank 0 (all ranks receive the value), the best weights go to ``<stage>/best``, and
    the stage stops after ``patience`` scores without a gain.
    """
    model, tokenizer = load_model(job.init_dir)
    set_trainable(model, job.sft)
    pairs = read_stage_examples(job.stage_dir)
    examples = tokenize_pairs(tokenizer, pairs, job.sft.max_length, prompt_block(model.config))
    start_step, optimizer_state = 0, None
    last = checkpoints.latest(job.stage_dir)
    if last is not None:
        start_step, optimizer_state = checkpoints.restore(last, model)
        if rank == 0:
            log.info("%s: resuming from %s (step %d)", job.stage, last.name, start_step)
    model = wrap_model(model) if wrap_model else model.to(device)
    bare_model = model.module if hasattr(model, "module") else model
    optimizer = make_optimizer(model, job.sft)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)

    def on_log(step: int, metrics: dict) -> None:
        if rank != 0:
            return
        log.info(
            "%s step %d/%d loss %.4f acc %.3f lr %.2e %.0f tok/s",
            job.stage,
            step,
            metrics["steps"],
            metrics["loss"],
            metrics["token_accuracy"],
            metrics["lr"],
            metrics["target_tokens_per_s"],
        )
        append_metrics(job, metrics)

    stopper = scorer = None
    if job.valid is not None:
        resumed = checkpoints.read_state(last)["metrics"] if last is not None else {}
        stopper = selection.EarlyStopping.from_state(job.valid.config.patience, resumed)
        if stopper.should_stop:  # stopped early before a kill: nothing left to train
            log.info("%s: stopped early at step %d (best %d)", job.stage, start_step, stopper.best_step)
            return
        if rank == 0:
            scorer = selection.ValidScorer(tokenizer, SemanticIdTokenizer.load(job.valid.sid_dir), job.valid)

    def on_checkpoint(step: int, optimizer: torch.optim.Optimizer, metrics: dict) -> bool:
        if stopper is not None:
            value = selection.broadcast_value(scorer.score(bare_model) if scorer else 0.0, device)
            improved = stopper.update(step, value)
            metrics = {**metrics, job.valid.config.key: value, **stopper.state()}
            if rank == 0:
                log.info(
                    "%s step %d: %s %.4f (best %.4f at step %d)",
                    job.stage,
                    step,
                    job.valid.config.key,
                    value,
                    stopper.best,
                    stopper.best_step,
                )
                append_metrics(job, {"step": step, job.valid.config.key: value, **stopper.state()})
                if improved:
                    checkpoints.write_best(job.stage_dir, bare_model, step, metrics)
        save_checkpoint(step, bare_model, optimizer, metrics)
        return stopper is not None and stopper.should_stop

    train(
        model,
        examples,
        job.sft,
        pad_id=tokenizer.pad_token_id,
        rank=rank,
        world_size=world_size,
        optimizer=optimizer,
        start_step=start_step,
        device=device,
        vocabulary=softmax_vocabulary(tokenizer, job.sft),
        on_log=on_log,
        on_checkpoint=on_checkpoint,
    )


def append_metrics(job: StageJob, record: dict) -> None:
    with open(job.stage_dir / "metrics.jsonl", "a") as handle:
        handle.write(json.dumps({"stage": job.stage, **record}) + "\n")


def finish_stage(run: RunDir, job: StageJob, workers: int, data: str) -> Path:
    """Turn the stage's best-on-valid checkpoint (with selection on valid) or its last one into
    ``RUN/model/<stage>`` and record it in the manifest."""
    best = checkpoints.best(job.stage_dir) if job.valid is not None else None
    chosen = best or checkpoints.latest(job.stage_dir)
    if chosen is None:
        raise RuntimeError(f"{job.stage}: training finished without a checkpoint in {job.stage_dir}")
    final_dir = run / f"model/{job.stage}"
    model, tokenizer = load_model(job.init_dir)
    step = checkpoints.load_weights(chosen, model)
    save_model(model, tokenizer, final_dir)
    run.record_stage(
        f"train.{job.stage}",
        config={"sft": vars(job.sft), "workers": workers},
        inputs={"data": data, "init": str(job.init_dir)},
        outputs={
            "model": str(final_dir),
            "checkpoint": chosen.name,
            "step": step,
            "selected_on_valid": best is not None,
            "metrics": checkpoints.read_state(chosen)["metrics"],
        },
    )
    return final_dir


def check_training_pairs(inputs: StageInputs, stage: str, pairs: Pairs) -> None:
    """The no-leak rule (evaluation.md) on one stage's pairs: raises ``LeakError`` naming the query."""
    held_out = inputs.held_out_query_keys()
    titles = {query_key(t) for t in inputs.track.items.column("title").to_pylist()} & held_out
    check_no_leak(stage, pairs, held_out, allowed=titles)


def valid_sample(
    run: Path, inputs: StageInputs, config: selection.SelectionConfig
) -> selection.ValidSample | None:
    """The fixed valid sample checkpoints are scored on (None when off or the track has none).
    On next-item tracks its rows are held out of training (``inputs.selection_rows``)."""
    if not config.enabled:
        return None
    track, sid_dir = inputs.track, str((Path(run) / "sid_tokenizer").resolve())
    if track.judgments is not None and track.queries is not None:
        sample = selection.search_sample(
            track, inputs.builder, inputs.query_codes, inputs.behavior, config, sid_dir
        )
    elif track.sequences is not None:
        rows = selection.next_item_selection_rows(track, config)
        inputs.selection_rows = frozenset(rows)
        sample = selection.next_item_sample(track, inputs.builder, rows, config, sid_dir)
    else:
        sample = None
    if sample is None or not sample.prompts:
        log.warning("select_on_valid: the track has no valid queries or rows to score; last checkpoints kept")
        return None
    log.info(
        "select_on_valid: %d valid %s prompts, %s at beam %d",
        len(sample.prompts),
        sample.kind,
        config.metric,
        config.beam,
    )
    return sample


def add_distillation(run: Path, inputs: StageInputs, config: distill.DistillConfig) -> None:
    """Cascade-distilled pairs into the co-occurrence stage; human pairs repeated to weigh more."""
    exclude = inputs.held_out_query_keys() | {query_key(q) for _, q in inputs.train_queries()}
    labelled = distill.distilled_queries(run, inputs.track.items, inputs.sids, exclude, config)
    inputs.distilled = distill.distillation_pairs(
        labelled, inputs.builder, inputs.codes_of, config.rank_repeats
    )
    inputs.human_repeats = config.human_repeats
    log.info("distill: %d pairs from %d pseudo-queries", len(inputs.distilled), labelled.num_rows)


def train_stages(
    run_dir: str | Path,
    data: str | Path,
    stages: Sequence[str],
    config: TrainConfig,
    train_stage: Callable[[StageJob], None],
) -> Path:
    """Tokenizer + model init (once), then each requested stage in paper order, each starting from
    the previous stage's model. ``train_stage`` runs one stage's loop (on Ray Train or in-process)."""
    run = RunDir(run_dir)
    previous = prepare_model_init(run.path, data, config)
    inputs = valid = None  # the track, SIDs and behaviour: loaded once, and only if a stage needs training
    for stage in STAGES:
        done = trained_stage_model(run, stage)
        if done is not None:
            if stage in stages:
                log.info("%s: already trained (%s); skipping", stage, done)
            previous = done
            continue
        if stage not in stages:
            continue
        if inputs is None:
            inputs = stage_inputs(run.path, data, title_spans_per_item=config.title_spans_per_item)
            valid = valid_sample(run.path, inputs, config.select_on_valid)
        if stage == "cooccurrence" and config.distill.enabled:
            add_distillation(run.path, inputs, config.distill)
        pairs = build_stage_pairs(inputs, stage)
        if not pairs:
            log.warning("%s: this track has no training signal for the stage; skipped", stage)
            continue
        check_training_pairs(inputs, stage, pairs)
        log.info("%s: %d training pairs", stage, len(pairs))
        selected = valid if stage in config.select_on_valid.stages else None
        job = StageJob(
            stage, (run / f"sft/{stage}").resolve(), previous.resolve(), config.stages[stage], selected
        )
        write_stage_examples(job.stage_dir, pairs)
        train_stage(job)
        previous = finish_stage(run, job, config.num_workers, str(data))
    write_latest_model(run.path, previous)
    return previous
