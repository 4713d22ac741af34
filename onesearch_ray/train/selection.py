"""Checkpoint selection and early stopping on the ``valid`` split (evaluation.md: valid chooses epochs
and checkpoints; test is read only by the evaluation).

At every checkpoint of a selected stage, rank 0 ranks a fixed sample of valid prompts with the
reference engine (constrained beam search, exactly as ``onesearch eval`` does), scores one metric,
and every rank receives the value (a broadcast), so all ranks agree on when to stop. The stage stops
after ``patience`` evaluations without a gain, and its final model is the best-scoring checkpoint.

- Search tracks (queries + judgments): a fixed random sample of valid queries with a relevant item;
  search metrics as evaluation.md defines them.
- Next-item tracks (Amazon): the valid rows ARE the training signal, so the sample is held out of it:
  for a fixed random sample of users, their last valid row (table order: the newest) is kept for
  selection; its target never trains (its history still does, as the history of an earlier target),
  and no other valid row of that user comes later, so no training history holds it. Test rows are
  never touched.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from onesearch_ray.behavior import BehaviorIndex
from onesearch_ray.data import Track
from onesearch_ray.decoding.beam import TransformersEngine
from onesearch_ray.decoding.trie import SidTrie
from onesearch_ray.eval.generative import next_item_prompts, rank_prompts, search_prompts
from onesearch_ray.eval.metrics import NDCG_K, next_item_metrics, relevant_items, search_metrics
from onesearch_ray.eval.tracks import search_eval_inputs
from onesearch_ray.khqe import SemanticIdTokenizer
from onesearch_ray.prompts import PromptBuilder, SidVocabulary
from onesearch_ray.train.stages import STAGES

_METRIC = re.compile(r"^(ndcg|recall|hr)@(\d+)$")
_METRIC_KEYS = {"ndcg": "NDCG", "recall": "Recall", "hr": "HR"}  # config name -> eval.metrics key
VALID_SPLIT = "valid"


@dataclass
class SelectionConfig:
    """YAML ``train.select_on_valid``."""

    queries: int = 0  # valid queries (or held-out valid rows) scored per checkpoint; 0: off (last wins)
    beam: int = 20
    metric: str = "ndcg@10"  # ndcg@K | recall@K | hr@K (search: ndcg@10 only)
    patience: int = 3  # stop a stage after this many evaluations without a gain; 0: never stop early
    stages: list[str] = field(default_factory=lambda: ["cooccurrence", "personalization"])
    seed: int = 0

    def __post_init__(self) -> None:
        if not _METRIC.match(self.metric.lower()):
            raise ValueError(
                f"train.select_on_valid.metric {self.metric!r}: expected ndcg@K, recall@K or hr@K"
            )
        unknown = set(self.stages) - set(STAGES)
        if unknown:
            raise ValueError(
                f"train.select_on_valid.stages: unknown {sorted(unknown)} (known: {', '.join(STAGES)})"
            )
        if self.queries < 0 or self.beam < 1 or self.patience < 0:
            raise ValueError("train.select_on_valid: queries >= 0, beam >= 1 and patience >= 0 expected")

    @property
    def enabled(self) -> bool:
        return self.queries > 0

    @property
    def k(self) -> int:
        return int(_METRIC.match(self.metric.lower()).group(2))

    @property
    def key(self) -> str:
        """Where the value goes in metrics.jsonl and the checkpoint state."""
        return f"valid_{self.metric.lower()}"


@dataclass
class ValidSample:
    """Fixed valid prompts and what each should retrieve; pickled to Ray Train workers."""

    kind: str  # "search" | "next_item"
    prompts: list[str]
    judgments: list[dict[int, float]]  # search: the judged items of each query
    targets: list[int]  # next_item: the held-out row's next item
    config: SelectionConfig
    sid_dir: str  # the run's SID tokenizer (the trie the engine decodes with)


def search_sample(
    track: Track,
    builder: PromptBuilder,
    query_codes: dict[int, tuple[int, ...]],
    behavior: BehaviorIndex | None,
    config: SelectionConfig,
    sid_dir: str,
) -> ValidSample:
    """``config.queries`` valid queries with a relevant item, a fixed random sample, prompted as eval does."""
    name, k = config.metric.lower().split("@")
    if name == "ndcg" and int(k) != NDCG_K:
        raise ValueError(
            f"train.select_on_valid.metric {config.metric!r}: search tracks report ndcg@{NDCG_K}"
        )
    ids, texts, judgments = search_eval_inputs(track, VALID_SPLIT)
    usable = [i for i, qid in enumerate(ids) if relevant_items(judgments[qid])]
    chosen = _sample(usable, config.queries, config.seed)
    queries = [(ids[i], texts[i]) for i in chosen]
    return ValidSample(
        "search",
        search_prompts(builder, queries, query_codes, behavior),
        [judgments[ids[i]] for i in chosen],
        [],
        config,
        sid_dir,
    )


def next_item_selection_rows(track: Track, config: SelectionConfig) -> list[int]:
    """Positions in ``track.sequences`` of the held-out rows: the last valid row of sampled users."""
    users, splits = (track.sequences.column(c).to_pylist() for c in ("user_id", "split"))
    last_row: dict[str, int] = {}
    for row, (user, split) in enumerate(zip(users, splits, strict=True)):
        if split == VALID_SPLIT:
            last_row[user] = row
    return sorted(last_row[user] for user in _sample(sorted(last_row), config.queries, config.seed))


def next_item_sample(
    track: Track, builder: PromptBuilder, rows: Sequence[int], config: SelectionConfig, sid_dir: str
) -> ValidSample:
    sequences = track.sequences.take(list(rows))
    users, histories, targets = (
        sequences.column(c).to_pylist() for c in ("user_id", "history_item_ids", "item_id")
    )
    return ValidSample(
        "next_item", next_item_prompts(builder, users, histories), [], targets, config, sid_dir
    )


def _sample(pool: Sequence, n: int, seed: int) -> list:
    """``n`` entries of ``pool`` chosen at random (``seed``), in pool order."""
    picked = np.random.default_rng(seed).permutation(len(pool))[:n]
    return [pool[i] for i in sorted(picked)]


class ValidScorer:
    """Scores a model on a :class:`ValidSample` with the reference engine (rank 0 only)."""

    def __init__(self, tokenizer, sids: SemanticIdTokenizer, sample: ValidSample) -> None:
        self.tokenizer, self.sids, self.sample = tokenizer, sids, sample
        self.position_token_ids = SidVocabulary.from_tokenizers(tokenizer, sids).position_token_ids
        self.trie = SidTrie.of_catalogue(sids)

    def score(self, model: torch.nn.Module) -> float:
        config = self.sample.config
        was_training = model.training
        engine = TransformersEngine(model, self.tokenizer, self.position_token_ids, self.trie)
        rankings = rank_prompts(engine, self.sample.prompts, self.sids, config.beam, config.k, progress=False)
        model.train(was_training)
        name, k = config.metric.lower().split("@")
        if self.sample.kind == "search":
            ranked = dict(enumerate(rankings.rankings))
            metrics = search_metrics(ranked, dict(enumerate(self.sample.judgments)), ks=(int(k),))
        else:
            metrics = next_item_metrics(rankings.rankings, self.sample.targets, ks=(int(k),))
            name = "hr" if name == "recall" else name  # a single target: recall@K is HR@K
        return float(metrics[f"{_METRIC_KEYS[name]}@{k}"])


def broadcast_value(value: float, device: torch.device | str) -> float:
    """Rank 0's ``value`` on every rank (unchanged without torch.distributed)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.broadcast(tensor, src=0)
    return float(tensor.item())


@dataclass
class EarlyStopping:
    """Best valid value so far and evaluations since; its state travels in every checkpoint."""

    patience: int
    best: float = -math.inf
    best_step: int = 0
    since_best: int = 0

    def update(self, step: int, value: float) -> bool:
        """Record one evaluation; True when it is a new best (ties keep the earlier checkpoint)."""
        if value > self.best:
            self.best, self.best_step, self.since_best = value, step, 0
            return True
        self.since_best += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.since_best >= self.patience

    def state(self) -> dict[str, float]:
        return {
            "valid_best": self.best,
            "valid_best_step": self.best_step,
            "valid_since_best": self.since_best,
        }

    @classmethod
    def from_state(cls, patience: int, metrics: dict) -> EarlyStopping:
        """Resume from a checkpoint's metrics (a fresh tracker when they carry none)."""
        if "valid_best" not in metrics:
            return cls(patience)
        return cls(
            patience,
            float(metrics["valid_best"]),
            int(metrics["valid_best_step"]),
            int(metrics["valid_since_best"]),
        )
