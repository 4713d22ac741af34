"""The generator's training job, free of Ray: build from an encoded run, train, select, save, score.

    RUN/generator/            the trained model (``generator.store``), replaced atomically at the end
    RUN/generator/metrics.json  valid and test metrics of the untrained start and the trained model
    RUN/generator_train.pt    the resumable training state (removed once the model is saved)

``pipelines/generator.py`` runs ``train_on_worker`` inside Ray Train, then ``evaluate_run``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from onesearch_ray.config import parse_config, read_yaml_section
from onesearch_ray.data import Track, load_track
from onesearch_ray.generator.catalogue import Catalogue, build_generator, load_catalogue
from onesearch_ray.generator.config import GeneratorConfig
from onesearch_ray.generator.evaluate import search_split
from onesearch_ray.generator.examples import check_no_leak, distilled_searches, judged_searches, log_searches
from onesearch_ray.generator.model import CodeItemGenerator
from onesearch_ray.generator.store import load_generator, save_generator
from onesearch_ray.generator.train import Example, TrainConfig, train
from onesearch_ray.io import write_json
from onesearch_ray.runs import GENERATOR_DIR
from onesearch_ray.train.distill import DistillConfig

log = logging.getLogger(__name__)

MODEL_DIR = GENERATOR_DIR
CHECKPOINT = "generator_train.pt"
SELECTION_METRIC = "NDCG@10"


@dataclass
class GeneratorJobConfig:
    model: GeneratorConfig = field(default_factory=GeneratorConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # cascade-labelled pseudo-queries (off: 0 per item)
    distill: DistillConfig = field(default_factory=DistillConfig)
    select_queries: int = 400  # the first N valid queries with a relevant item score each checkpoint
    evaluate_k: int = 350


def load_job_config(path: str | Path | None) -> GeneratorJobConfig:
    """The ``generator:`` section of a YAML config (defaults when absent)."""
    config = parse_config(GeneratorJobConfig, read_yaml_section(path, "generator"), str(path or "defaults"))
    config.model.validate()
    config.train.validate()
    return config


def training_searches(
    run: Path, track: Track, catalogue: Catalogue, config: GeneratorJobConfig
) -> list[Example]:
    """Every kind of training search the track has (train split only: the leak guard)."""
    rows, vectors = catalogue.row_of_item(), catalogue.query_vectors
    if vectors is None:
        raise ValueError(f"track {track.name} has no queries: the generator trains on searches")
    examples = judged_searches(track, rows, vectors) + log_searches(
        track, rows, vectors, config.model.history
    )
    examples += distilled_searches(run, track, catalogue, config.distill)
    if not examples:
        raise ValueError(
            f"track {track.name} has no judged train query and no logged click or order to learn from"
        )
    check_no_leak(examples, track)
    return examples


def selection(
    catalogue: Catalogue, track: Track, config: GeneratorJobConfig
) -> Callable[[CodeItemGenerator], float]:
    def score(model: CodeItemGenerator) -> float:
        metrics = search_split(
            model, catalogue, track, "valid", config.evaluate_k, limit=config.select_queries
        )
        return float(metrics[SELECTION_METRIC])

    return score


def train_on_worker(
    run: Path, data: Path, config: GeneratorJobConfig, rank: int = 0, world_size: int = 1
) -> None:
    """One worker's share: build, train on its shard of the searches, and (rank 0) save the model."""
    track = load_track(data)
    catalogue = load_catalogue(run, track)
    model = build_generator(catalogue, config.model)
    examples = training_searches(run, track, catalogue, config)[rank::world_size]
    select = selection(catalogue, track, config) if rank == 0 else None
    history = train(model, examples, config.train, select, checkpoint=run / CHECKPOINT if rank == 0 else None)
    if rank == 0:
        save_generator(model, catalogue.item_ids, run / MODEL_DIR)
        write_json(run / MODEL_DIR / "history.json", history)
        (run / CHECKPOINT).unlink(missing_ok=True)


def evaluate_run(run: Path, data: Path, config: GeneratorJobConfig) -> dict:
    """Valid and test metrics of the untrained start and of the saved model (``metrics.json``)."""
    track = load_track(data)
    catalogue = load_catalogue(run, track)
    trained, _ = load_generator(run / MODEL_DIR)
    untrained = build_generator(catalogue, trained.config)
    results: dict = {}
    for name, model in (("untrained", untrained), ("trained", trained)):
        for split in ("valid", "test"):
            started = time.perf_counter()
            results[f"{name}/{split}"] = search_split(model, catalogue, track, split, config.evaluate_k)
            log.info(
                "%s on %s: %s in %.0f s",
                name,
                split,
                results[f"{name}/{split}"],
                time.perf_counter() - started,
            )
    write_json(run / MODEL_DIR / "metrics.json", results)
    return results
