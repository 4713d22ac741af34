"""The generator's training job, free of Ray: build from an encoded run, train, select, save, score.

    RUN/generator/            the trained model (``generator.store``), replaced atomically at the end
    RUN/generator/metrics.json  valid and test metrics of the untrained start and the trained model
    RUN/generator-NAME/       an aligned copy (``align_on_worker``: DPO on a feedback log, or GRPO)

Each saved model becomes the run's latest model (``runs.write_latest_model``): what ``onesearch
serve`` and ``onesearch eval`` use by default.

``pipelines/generator.py`` runs ``train_on_worker`` or ``align_on_worker`` inside Ray Train, with
Ray Train's checkpoints as the resumable training state (``train.Checkpoints``), then
``evaluate_run``.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch

from onesearch_ray.data import Track, load_track
from onesearch_ray.generator.catalogue import Catalogue, build_generator, load_catalogue
from onesearch_ray.generator.config import (
    GeneratorJobConfig,
)
from onesearch_ray.generator.evaluate import next_item_split, search_split
from onesearch_ray.generator.examples import (
    check_no_leak,
    distilled_searches,
    drop_held_out_queries,
    held_out_user_rows,
    judged_searches,
    log_searches,
    next_item_searches,
    next_item_selection_rows,
)
from onesearch_ray.generator.grpo import ItemRewardTable, grpo_loss_of, grpo_prompts
from onesearch_ray.generator.model import CodeItemGenerator
from onesearch_ray.generator.preference import attach_reference, dpo_loss_of, feedback_searches
from onesearch_ray.generator.store import load_generator, save_generator
from onesearch_ray.generator.train import Checkpoints, Example, train
from onesearch_ray.io import write_json
from onesearch_ray.khqe.online import RunTextEncoder
from onesearch_ray.rewards import RewardConfig
from onesearch_ray.runs import GENERATOR_DIR, served_model_dir, write_latest_model

log = logging.getLogger(__name__)

MODEL_DIR = GENERATOR_DIR
SELECTION_METRIC = "NDCG@10"
# next-item tracks: the test rows of the users outside the tuning half (no selection or default saw them)
HELD_OUT_USERS = "test-held-out-users"


def selection_rows(track: Track, config: GeneratorJobConfig) -> list[int]:
    """Next-item tracks: positions in ``track.sequences`` held out of training to select on (the last
    valid row of ``select_queries`` sampled users); search tracks select on valid queries: none."""
    if track.queries is not None or track.sequences is None:
        return []
    return next_item_selection_rows(track, config.select_queries)


def training_searches(
    run: Path, track: Track, catalogue: Catalogue, config: GeneratorJobConfig
) -> list[Example]:
    """Every kind of training search the track has: a search track's train queries (judged, logged,
    distilled), or a next-item track's valid rows less the selection rows; then the leak guard."""
    rows, vectors = catalogue.row_of_item(), catalogue.query_vectors
    if vectors is not None:  # a search track: its searches (a synthetic track's sequences are not used)
        examples = judged_searches(track, rows, vectors)
        examples += log_searches(track, rows, vectors, config.model.history)
        examples += distilled_searches(run, track, catalogue, config.distill)
    else:
        dim = catalogue.item_vectors.shape[1]
        examples = next_item_searches(track, rows, dim, set(selection_rows(track, config)))
    if not examples:
        raise ValueError(
            f"track {track.name} has no judged train query, no logged click or order and no "
            "next-item row to learn from"
        )
    check_no_leak(examples, track)
    return examples


def split_metrics(
    model: CodeItemGenerator, catalogue: Catalogue, track: Track, split: str, config: GeneratorJobConfig
) -> dict:
    """``split``'s metrics: its queries on a search track; on a next-item track its rows, and for
    ``valid`` only the held-out selection rows (the other valid rows are training data)."""
    k = config.evaluate_k
    if track.queries is not None:
        return search_split(
            model, catalogue, track, split, k, limit=config.select_queries if split == "valid" else 0
        )
    held_out = selection_rows(track, config) if split == "valid" else None
    return next_item_split(model, catalogue, track, split, k, rows=held_out)


def selection(
    catalogue: Catalogue, track: Track, config: GeneratorJobConfig
) -> Callable[[CodeItemGenerator], float]:
    def score(model: CodeItemGenerator) -> float:
        return float(split_metrics(model, catalogue, track, "valid", config)[SELECTION_METRIC])

    return score


def train_on_worker(
    run: Path,
    data: Path,
    config: GeneratorJobConfig,
    rank: int = 0,
    checkpoints: Checkpoints | None = None,
) -> None:
    """One worker's part: build, train (every worker on the same searches, each taking its share of
    every batch; resuming from ``checkpoints``' latest state), and (rank 0) save the model."""
    track = load_track(data)
    catalogue = load_catalogue(run, track)
    searches = training_searches(run, track, catalogue, config)
    torch.manual_seed(config.train.seed)  # the same start whatever the number of workers
    model = build_generator(catalogue, config.model, searches)
    select = selection(catalogue, track, config) if rank == 0 else None
    history = train(model, searches, config.train, select, checkpoints)
    if rank == 0:
        save_generator(model, catalogue.item_ids, run / MODEL_DIR)
        write_json(run / MODEL_DIR / "history.json", history)
        write_latest_model(run, run / MODEL_DIR)


def align_on_worker(
    run: Path,
    data: Path,
    config: GeneratorJobConfig,
    name: str,
    feedback: Path | None = None,
    rewards: RewardConfig | None = None,
    rank: int = 0,
    checkpoints: Checkpoints | None = None,
) -> None:
    """Align the run's served generator (``RUN/generator`` after SFT, the last alignment after one)
    into ``RUN/generator-NAME`` (rank 0 saves): DPO on the ``feedback`` log's impressions, or
    without one TPMA-GRPO on the track's logged train searches."""
    track = load_track(data)
    start = served_model_dir(run)  # a run without a generator: FileNotFoundError
    log.info("aligning %s into %s-%s", start, MODEL_DIR, name)
    model, item_ids = load_generator(start)
    reference = copy.deepcopy(model)  # frozen: the start both losses measure against
    rows = {int(item): row for row, item in enumerate(item_ids)}
    if feedback is not None:
        examples = _preference_examples(run, track, feedback, rows)
        attach_reference(reference, examples)
        settings = config.dpo
        loss = partial(dpo_loss_of, beta=settings.beta, anchor=settings.anchor)
    else:
        settings = config.grpo
        settings.validate()
        vectors = load_catalogue(run, track).query_vectors
        searches = log_searches(track, rows, vectors, model.config.history) if vectors is not None else []
        if not searches:
            raise ValueError(
                f"track {track.name}: GRPO needs a search log with clicks or orders on train queries"
            )
        check_no_leak(searches, track)
        examples = grpo_prompts(searches, settings)
        log.info("grpo: %d prompts (%d logged searches)", len(examples), len(searches))
        table = ItemRewardTable.from_track(track, item_ids, rewards or RewardConfig())
        loss = partial(grpo_loss_of, reference=reference, rewards=table, config=settings)
    train_config = replace(
        config.train,
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        weight_learning_rate=settings.weight_learning_rate,
        patience=0,
    )
    history = train(model, examples, train_config, None, checkpoints, loss)
    if rank == 0:
        save_generator(model, item_ids, run / f"{MODEL_DIR}-{name}")
        write_json(run / f"{MODEL_DIR}-{name}" / "history.json", history)
        write_latest_model(run, run / f"{MODEL_DIR}-{name}")  # what the run serves from now on


def _preference_examples(run: Path, track: Track, feedback: Path, rows: dict[int, int]) -> list[Example]:
    encoder = RunTextEncoder.from_run(run).encoder
    examples = feedback_searches(feedback, rows, lambda texts: encoder.encode(texts, "query"))
    kept = drop_held_out_queries(examples, track)
    log.info(
        "%d impressions with a preference in %s, %d kept (valid/test queries left out)",
        len(examples),
        feedback,
        len(kept),
    )
    if not kept:
        raise ValueError(
            f"{feedback}: no impression of a generator with a click or order above a skipped item"
        )
    return kept


def evaluate_run(run: Path, data: Path, config: GeneratorJobConfig, model_dir: str = MODEL_DIR) -> dict:
    """Valid and test metrics of the untrained start and of the saved model (its ``metrics.json``)."""
    track = load_track(data)
    catalogue = load_catalogue(run, track)
    trained, _ = load_generator(run / model_dir)
    untrained = build_generator(catalogue, trained.config, lexical=trained.lexical)
    evaluation = replace(config, select_queries=0) if track.queries is not None else config  # all valid
    splits = ["valid", "test"] + ([HELD_OUT_USERS] if track.queries is None else [])
    results: dict = {}
    for name, model in (("untrained", untrained), ("trained", trained)):
        for split in splits:
            started = time.perf_counter()
            if split == HELD_OUT_USERS:
                metrics = next_item_split(
                    model, catalogue, track, "test", config.evaluate_k, held_out_user_rows(track)
                )
            else:
                metrics = split_metrics(model, catalogue, track, split, evaluation)
            results[f"{name}/{split}"] = metrics
            log.info("%s on %s: %s in %.0f s", name, split, metrics, time.perf_counter() - started)
    write_json(run / model_dir / "metrics.json", results)
    return results
