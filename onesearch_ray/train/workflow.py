"""Run-directory glue for training: build the tokenizer + initial model, and each stage's pairs.

Reads what ``onesearch encode`` wrote (``sid_tokenizer/``, ``queries.parquet``) plus the track, so
the Ray shell only has to call two functions. No Ray here.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow.parquet as pq

from onesearch_ray.behavior import BehaviorIndex
from onesearch_ray.data import Track, load_track
from onesearch_ray.khqe import SemanticIdTokenizer
from onesearch_ray.model import build_model, save_model
from onesearch_ray.prompts import PromptBuilder, PromptConfig, train_text_tokenizer
from onesearch_ray.train.config import TrainConfig
from onesearch_ray.train.stages import STAGE_BUILDERS, Pairs, StageInputs

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
    tokenizer = train_text_tokenizer(tokenizer_corpus(track), sids, config.tokenizer_vocab_size)
    model = build_model(config.model, tokenizer)
    save_model(model, tokenizer, init_dir)
    log.info(
        "model init: %s, %d parameters, vocabulary %d",
        config.model.size,
        sum(p.numel() for p in model.parameters()),
        len(tokenizer),
    )
    return init_dir


def behavior_index(track: Track) -> BehaviorIndex | None:
    """User behaviour of a track; None for search-only tracks (no users at all)."""
    if track.interactions is None and track.sequences is None:
        return None
    return BehaviorIndex.from_track(track)


def stage_inputs(run: Path, data: str | Path, prompt_config: PromptConfig | None = None) -> StageInputs:
    track = load_track(data)
    sids = SemanticIdTokenizer.load(Path(run) / "sid_tokenizer")
    return StageInputs(
        track=track,
        sids=sids,
        query_codes=load_query_codes(Path(run)),
        builder=PromptBuilder(sids, prompt_config or PromptConfig()),
        behavior=behavior_index(track),
    )


def build_stage_pairs(run: Path, data: str | Path, stage: str) -> Pairs:
    """The stage's (prompt, target) pairs; empty when the track has no signal for it
    (e.g. co-occurrence on a track without queries)."""
    if stage not in STAGE_BUILDERS:
        raise ValueError(f"unknown SFT stage {stage!r} (known: {', '.join(STAGE_BUILDERS)})")
    return STAGE_BUILDERS[stage](stage_inputs(run, data))
