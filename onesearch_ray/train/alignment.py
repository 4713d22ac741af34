"""Preference alignment after SFT: list-wise DPO and TPMA-GRPO stages (``docs/onesearch.md`` section 3).

The driver (:func:`align_stage`) builds the stage's data once into ``RUN/align/<stage>/``, hands a
:class:`AlignJob` to a trainer (Ray Train workers in ``pipelines/train.py``, or this process in
``onesearch_ray.train.local``), then turns the last checkpoint into ``RUN/model/<stage>`` and makes
it the run's latest model. The per-worker loop (:func:`run_align_loop`) knows nothing of Ray, and
each optimisation step is one function (:func:`dpo_step`, :func:`grpo_step`).

DPO (OneSearch): one positive against up to K negatives, weighted by the reward gap, an SFT anchor,
and the starting (SFT) model as the frozen reference. Lists come from

- ``beams`` (phase 1): the starting model's own trie-constrained beams for train-search prompts,
  re-ranked by the combined reward (``preference_reward``: the reward model's expected feedback
  level weight, the calibrated CTR/CVR of the item and its relevance grade, 10x);
- ``log`` (phase 2): the track's search log, feedback levels 1-3 positive and 4-6 negative;
- ``--feedback LOG`` (phase 2, live): the server's feedback log, per impression the clicked or
  ordered items positive and the shown-not-clicked ones negative, the logged prompt as the prompt.

GRPO (OneSearch-V2): per prompt, G rollouts are the current policy's top-G constrained beams (the
reference engine, in this process): TPMA per-position advantages against the search's clicked and
ordered SIDs plus the group-normalised composite item reward, one on-policy update per batch, and a
k3 KL guard to the frozen starting model. Why not vLLM for the rollouts: the policy changes every
step, and pushing new weights into a vLLM engine each step costs more than decoding a few prompts
with the model already in memory; on CPU there is no vLLM at all.

A stage reruns nothing it has: data files are reused, training resumes from the last complete
checkpoint, and a finished stage is skipped (delete ``RUN/align/<stage>`` and ``RUN/model/<stage>``
to train it again).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from onesearch_ray.config import parse_config, read_yaml_section, require_non_negative
from onesearch_ray.data import Event
from onesearch_ray.decoding.beam import TransformersEngine
from onesearch_ray.decoding.trie import SidTrie
from onesearch_ray.io import read_json, write_json, write_parquet
from onesearch_ray.khqe import SemanticIdTokenizer
from onesearch_ray.model import load_model, save_model
from onesearch_ray.prompts import SidVocabulary
from onesearch_ray.prompts.tokenizer import encode_prompts, prompt_block
from onesearch_ray.rewards import (
    FeedbackLevel,
    RelevanceOracle,
    RewardConfig,
    assign_feedback_levels,
    calibrated_rates,
    composite_item_reward,
    interaction_counts,
    level_weights,
    load_reward_config,
    lookup_counts,
    preference_reward,
)
from onesearch_ray.rewards.model import (
    REWARD_MODEL_DIR,
    RewardModel,
    RewardModelConfig,
    candidate_examples,
    load_reward_model,
    log_examples,
    save_reward_model,
    train_reward_model,
)
from onesearch_ray.runs import RunDir, latest_model_dir, write_latest_model
from onesearch_ray.train import checkpoints
from onesearch_ray.train.preference import (
    listwise_dpo_loss,
    sid_token_logprobs,
    tpma_advantages,
    tpma_grpo_loss,
)
from onesearch_ray.train.stages import StageInputs
from onesearch_ray.train.workflow import check_training_pairs, stage_inputs, trained_stage_model

log = logging.getLogger(__name__)
ALIGN_STAGES = ("dpo", "grpo")
DPO_PHASES = ("beams", "log")
LISTS_FILE = "lists.parquet"
PROMPTS_FILE = "prompts.parquet"
HELDOUT_FILE = "heldout.parquet"
JOB_FILE = "job.json"


# ---- configuration -------------------------------------------------------------------------------
@dataclass
class OptimConfig:
    """What every alignment stage shares: steps, optimiser, checkpoints."""

    max_steps: int = 200
    batch_size: int = 8  # preference lists (DPO) or prompts (GRPO) per worker per step
    learning_rate: float = 1e-4
    warmup_steps: int = 10
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    checkpoint_every: int = 50
    log_every: int = 10
    seed: int = 0
    # the latest train searches, kept out of the stage's data; the model is measured on them before
    # and after the stage (recorded in the manifest)
    heldout_searches: int = 50

    def __post_init__(self) -> None:
        if min(self.max_steps, self.batch_size, self.checkpoint_every, self.log_every) < 1:
            raise ValueError("max_steps, batch_size, checkpoint_every and log_every must be >= 1")
        require_non_negative(
            self, ("learning_rate", "warmup_steps", "weight_decay", "grad_clip", "heldout_searches")
        )


@dataclass
class DPOConfig(OptimConfig):
    beta: float = 0.1
    alpha: float = 1.5  # reward-gap weight exponent
    sft_weight: float = 0.1  # lambda of the SFT anchor -log pi(y+)
    guard_weight: float = 0.0
    negatives: int = 8  # K, per list
    phases: tuple[str, ...] = DPO_PHASES
    beam: int = 16  # phase 1: constrained beams decoded per prompt
    max_prompts: int = 200  # phase 1: prompts decoded (a seeded sample of the train searches; 0: all)

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = set(self.phases) - set(DPO_PHASES)
        if unknown or not self.phases:
            raise ValueError(f"dpo.phases {list(self.phases)}: expected a non-empty subset of {DPO_PHASES}")
        if self.beta <= 0 or self.negatives < 1 or self.beam < 2:
            raise ValueError("dpo: beta must be > 0, negatives >= 1 and beam >= 2")
        require_non_negative(self, ("alpha", "sft_weight", "guard_weight", "max_prompts"), "dpo.")


@dataclass
class GRPOConfig(OptimConfig):
    batch_size: int = 4
    learning_rate: float = 5e-5
    group: int = 8  # G rollouts per prompt: the policy's top-G constrained beams
    w_item: float = 1.0  # weight of the group-normalised composite item reward in the advantage
    kl_weight: float = 0.05  # k3 KL guard to the frozen starting model
    max_prompts: int = 0  # train searches with a click used as prompts (a seeded sample; 0: all)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.group < 2:
            raise ValueError(f"grpo.group {self.group}: group normalisation needs >= 2 rollouts")
        require_non_negative(self, ("w_item", "kl_weight", "max_prompts"), "grpo.")


@dataclass
class AlignConfig:
    """YAML section ``align:``; workers and GPUs come from ``train:`` (num_workers, use_gpu)."""

    dpo: DPOConfig = field(default_factory=DPOConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    reward_model: RewardModelConfig = field(default_factory=RewardModelConfig)


def load_align_config(path: str | Path | None = None, *, max_steps: int | None = None) -> AlignConfig:
    config = parse_config(AlignConfig, read_yaml_section(path, "align"), str(path or "defaults"))
    if max_steps:
        config.dpo.max_steps = config.grpo.max_steps = max_steps
    return config


# ---- rewards of items for a query -----------------------------------------------------------------
@dataclass
class ItemRewards:
    """Per-item calibrated rates (from log counts) and graded relevance; pickled to workers."""

    config: RewardConfig
    oracle: RelevanceOracle
    counts: pa.Table  # item_id, impressions, clicks, orders

    def calibrated(self, item_ids: Sequence[int]):
        keys = pa.table({"item_id": pa.array(list(item_ids), pa.int64())})
        return calibrated_rates(*lookup_counts(self.counts, keys), lam=self.config.calibration_lambda)

    def grades(self, query_ids: Sequence[int | None], item_ids: Sequence[int]) -> np.ndarray:
        """Relevance 1..3; unknown queries (None: a live query not in the track) get ``unjudged``."""
        known = [q is not None for q in query_ids]
        grades = np.full(len(item_ids), self.oracle.unjudged)
        if any(known):
            rows = np.flatnonzero(known)
            grades[rows] = self.oracle.grades([query_ids[r] for r in rows], [item_ids[r] for r in rows])
        return grades


def item_rewards(inputs: StageInputs, config: RewardConfig) -> ItemRewards:
    interactions = inputs.track.interactions
    if interactions is None:
        counts = pa.table(
            {n: pa.array([], pa.int64()) for n in ("item_id", "impressions", "clicks", "orders")}
        )
    else:
        counts = interaction_counts(interactions)
    return ItemRewards(config, RelevanceOracle.from_track(inputs.track), counts)


# ---- searches of the log --------------------------------------------------------------------------
@dataclass
class Search:
    """One logged search: its prompt as SFT builds it, the user's recent items and what was done."""

    session_id: int
    timestamp: int  # the search's first event
    query_id: int
    prompt: str
    recent_items: list[int]
    events: dict[int, int]  # item_id -> strongest Event


def log_searches(inputs: StageInputs, split: str = "train") -> list[Search]:
    """Searches of ``split`` queries, prompted with the user's context when the search began."""
    track = inputs.track
    if track.interactions is None or inputs.behavior is None or track.queries is None:
        return []
    queries = track.queries.filter(pc.equal(track.queries["split"], split))
    text_of = dict(zip(queries["query_id"].to_pylist(), queries["query"].to_pylist(), strict=True))
    log_rows = track.interactions.filter(
        pc.is_in(track.interactions["query_id"], value_set=pa.array(list(text_of), pa.int64()))
    )
    grouped = log_rows.group_by(["session_id", "user_id", "query_id", "item_id"]).aggregate(
        [("event", "max"), ("timestamp", "min")]
    )
    searches: dict[int, Search] = {}
    start: dict[int, int] = {}
    columns = ("session_id", "user_id", "query_id", "item_id", "event_max", "timestamp_min")
    rows = list(zip(*(grouped[c].to_pylist() for c in columns), strict=True))
    for session, _, _, _, _, ts in rows:
        start[session] = min(ts, start.get(session, ts))
    for session, user, qid, item, event, _ in sorted(rows):
        if session not in searches:
            context = inputs.behavior.context_for(
                user, before_timestamp=start[session], query_id=qid, exclude_session=session
            )
            prompt = inputs.builder.search_prompt(text_of[qid], inputs.query_codes.get(qid), context)
            searches[session] = Search(session, start[session], qid, prompt, list(context.short_items), {})
        searches[session].events[item] = event
    return [searches[s] for s in sorted(searches)]


def split_searches(searches: Sequence[Search], heldout: int) -> tuple[list[Search], list[Search]]:
    """(training searches, the latest ``heldout`` ones), the held-out part never trained on."""
    ordered = sorted(searches, key=lambda s: (s.timestamp, s.session_id))
    cut = max(0, len(ordered) - heldout)
    return ordered[:cut], ordered[cut:]


def _sample(values: list, limit: int, seed: int) -> list:
    if not limit or len(values) <= limit:
        return values
    return [values[i] for i in sorted(np.random.default_rng(seed).permutation(len(values))[:limit])]


# ---- DPO preference lists -------------------------------------------------------------------------
LIST_SCHEMA = pa.schema(
    [
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("positive", pa.list_(pa.int64()), nullable=False),
        pa.field("negatives", pa.list_(pa.list_(pa.int64())), nullable=False),
        pa.field("reward_pos", pa.float64(), nullable=False),
        pa.field("reward_neg", pa.list_(pa.float64()), nullable=False),
        pa.field("source", pa.string(), nullable=False),
    ]
)


@dataclass
class PreferenceList:
    prompt: str
    positive: tuple[int, ...]
    negatives: list[tuple[int, ...]]
    reward_pos: float
    reward_neg: list[float]
    source: str


def make_list(
    prompt: str,
    candidates: Sequence[tuple[int, ...]],
    rewards: np.ndarray,
    positive: int,
    limit: int,
    source: str,
) -> PreferenceList | None:
    """``candidates[positive]`` against up to ``limit`` others, in the given order, whose reward is
    below max(R+, 1) (the loss's condition); None when none is."""
    bar = max(float(rewards[positive]), 1.0)
    kept = [i for i in range(len(candidates)) if i != positive and rewards[i] < bar - 1e-9][:limit]
    if not kept:
        return None
    return PreferenceList(
        prompt,
        tuple(candidates[positive]),
        [tuple(candidates[i]) for i in kept],
        float(rewards[positive]),
        [float(rewards[i]) for i in kept],
        source,
    )


def lists_table(lists: Sequence[PreferenceList]) -> pa.Table:
    return pa.Table.from_pylist(
        [{**dataclasses.asdict(x), "positive": list(x.positive)} for x in lists], schema=LIST_SCHEMA
    )


def log_preference_lists(
    searches: Sequence[Search], inputs: StageInputs, rewards: ItemRewards, negatives: int, seed: int = 0
) -> list[PreferenceList]:
    """Phase 2 from the track's log: per search, each level 1-3 item against its level 4-6 items
    (shown ones first, then the sampled same-category and other-category items)."""
    if not searches or inputs.track.interactions is None:
        return []
    sessions = pa.array([s.session_id for s in searches], pa.int64())
    log_rows = inputs.track.interactions.filter(pc.is_in(inputs.track.interactions["session_id"], sessions))
    levels = assign_feedback_levels(
        log_rows, inputs.track.items, weights=rewards.config.level_weights, seed=seed
    )
    by_session: dict[int, list[tuple[int, int, float]]] = {}
    for session, item, level, weight in zip(
        *(levels[c].to_pylist() for c in ("session_id", "item_id", "level", "weight")), strict=True
    ):
        if inputs.sids.has_item(item):
            by_session.setdefault(session, []).append((level, item, weight))
    lists = []
    for search in searches:
        rows = sorted(by_session.get(search.session_id, []))  # level, then item id
        if not any(level in _POSITIVE for level, _, _ in rows):
            continue
        items = [item for _, item, _ in rows]
        reward = preference_reward(
            [w for _, _, w in rows],
            rewards.calibrated(items).reward,
            rewards.grades([search.query_id] * len(items), items),
            rewards.config,
        )
        codes = [tuple(int(c) for c in row) for row in inputs.sids.item_codes(items)]
        negative_rows = [i for i, (level, _, _) in enumerate(rows) if level not in _POSITIVE]
        for i, (level, _, _) in enumerate(rows):
            if level in _POSITIVE:
                order = [i, *negative_rows]
                made = make_list(search.prompt, [codes[j] for j in order], reward[order], 0, negatives, "log")
                if made is not None:
                    lists.append(made)
    return lists


_POSITIVE = {
    int(level) for level in (FeedbackLevel.ORDERED, FeedbackLevel.ORDERED_ELSEWHERE, FeedbackLevel.CLICKED)
}
_LEVEL_OF_EVENT = {Event.ORDERED: FeedbackLevel.ORDERED, Event.CLICKED: FeedbackLevel.CLICKED}
FEEDBACK_COLUMNS = ("impression_id", "query", "prompt", "position", "item_id", "sid", "event")


def feedback_preference_lists(
    table: pa.Table, inputs: StageInputs, rewards: ItemRewards, negatives: int, source: str = "feedback"
) -> list[PreferenceList]:
    """Phase 2 from the live feedback log (``rewards.feedback_log.read_feedback``): per impression,
    each clicked or ordered item against the shown-not-clicked ones (in shown order), with the logged
    prompt. Rates are counted over the log itself; relevance is known for queries of the track."""
    missing = [c for c in FEEDBACK_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"feedback log: missing column(s) {missing}")
    sids, skipped = [], 0
    for text in table["sid"].to_pylist():
        try:
            sids.append(inputs.sids.parse_sid(text))
        except ValueError:
            sids.append(None)
            skipped += 1
    if skipped:
        log.warning(
            "feedback log: %d of %d rows carry a SID this run does not know; ignored", skipped, len(sids)
        )
    events = np.asarray(table["event"].to_numpy(zero_copy_only=False), dtype=np.int64)
    items = table["item_id"].to_pylist()
    live = ItemRewards(rewards.config, rewards.oracle, _live_counts(items, events))
    query_id_of = _query_ids_by_text(inputs)
    level = np.where(
        events == int(Event.ORDERED),
        int(FeedbackLevel.ORDERED),
        np.where(events == int(Event.CLICKED), int(FeedbackLevel.CLICKED), int(FeedbackLevel.SHOWN)),
    )
    reward = preference_reward(
        level_weights(level, rewards.config.level_weights),
        live.calibrated(items).reward,
        live.grades([query_id_of.get(q.strip().lower()) for q in table["query"].to_pylist()], items),
        rewards.config,
    )
    impressions: dict[str, list[int]] = {}
    for row, impression in enumerate(table["impression_id"].to_pylist()):
        if sids[row] is not None:
            impressions.setdefault(impression, []).append(row)
    positions, prompts = table["position"].to_pylist(), table["prompt"].to_pylist()
    lists = []
    for rows in impressions.values():
        rows.sort(key=positions.__getitem__)
        shown = [r for r in rows if events[r] == int(Event.SHOWN)]
        for r in rows:
            if events[r] >= int(Event.CLICKED):
                order = [r, *shown]
                made = make_list(prompts[r], [sids[j] for j in order], reward[order], 0, negatives, source)
                if made is not None:
                    lists.append(made)
    if not lists:
        raise ValueError(
            "feedback log: no impression has both a clicked/ordered item and a shown-not-clicked one "
            f"({table.num_rows} shown items, {int((events >= int(Event.CLICKED)).sum())} clicked or ordered)"
        )
    return lists


def _live_counts(items: list[int], events: np.ndarray) -> pa.Table:
    """Impressions, clicks and orders per item of a live log (one row per shown item, its strongest
    event: an order implies the click)."""
    table = pa.table(
        {
            "item_id": pa.array(items, pa.int64()),
            "impressions": pa.array(np.ones(len(items), np.int64)),
            "clicks": pa.array((events >= int(Event.CLICKED)).astype(np.int64)),
            "orders": pa.array((events == int(Event.ORDERED)).astype(np.int64)),
        }
    )
    sums = table.group_by(["item_id"]).aggregate([(n, "sum") for n in ("impressions", "clicks", "orders")])
    return sums.rename_columns(["item_id", "impressions", "clicks", "orders"])


def _query_ids_by_text(inputs: StageInputs) -> dict[str, int]:
    queries = inputs.track.queries
    if queries is None:
        return {}
    return {
        t.strip().lower(): q
        for q, t in zip(queries["query_id"].to_pylist(), queries["query"].to_pylist(), strict=True)
    }


def beam_preference_lists(
    searches: Sequence[Search],
    inputs: StageInputs,
    rewards: ItemRewards,
    engine: TransformersEngine,
    reward_model: RewardModel,
    config: DPOConfig,
) -> list[PreferenceList]:
    """Phase 1: each search prompt's constrained beams, re-ranked by the combined reward; the best
    beam is the positive, the others (in beam order: the model's favourites first) the negatives."""
    weights = np.asarray(rewards.config.level_weights)
    lists = []
    for search in searches:
        hits = engine.search([search.prompt], config.beam)[0]
        codes = [hit.codes for hit in hits]
        items = [inputs.sids.items_for_sid(c)[0] for c in codes]
        examples = candidate_examples(
            inputs.sids,
            inputs.query_codes.get(search.query_id),
            inputs.behavior.query_text.get(search.query_id),
            search.recent_items,
            np.asarray(codes, dtype=np.int64),
            reward_model.config,
        )
        predicted = reward_model.predict(examples)
        # expected level weight: ordered (level 1), clicked not ordered (3), shown only (4)
        expected = (
            predicted["ctcvr"] * weights[0]
            + (predicted["ctr"] - predicted["ctcvr"]) * weights[2]
            + (1.0 - predicted["ctr"]) * weights[3]
        )
        reward = preference_reward(
            expected,
            rewards.calibrated(items).reward,
            rewards.grades([search.query_id] * len(items), items),
            rewards.config,
        )
        made = make_list(search.prompt, codes, reward, int(np.argmax(reward)), config.negatives, "beams")
        if made is not None:
            lists.append(made)
    return lists


def reward_model_for_run(run: Path, inputs: StageInputs, config: RewardModelConfig) -> RewardModel:
    """``RUN/reward_model`` when trained before, else trained now on the track's search log."""
    directory = run / REWARD_MODEL_DIR
    if (directory / "config.json").exists():
        return load_reward_model(directory)
    if inputs.track.interactions is None or inputs.behavior is None:
        raise ValueError("dpo phase 'beams' needs a search log to train the reward model on")
    examples = log_examples(
        inputs.track.interactions, inputs.sids, inputs.query_codes, inputs.behavior, config
    )
    model, metrics = train_reward_model(examples, inputs.sids.layout.level_sizes, config)
    save_reward_model(model, directory, metrics)
    return model


def build_dpo_lists(
    run: Path,
    inputs: StageInputs,
    init_dir: Path,
    config: AlignConfig,
    rewards: ItemRewards,
    searches: Sequence[Search],
    feedback: pa.Table | None = None,
) -> list[PreferenceList]:
    """All of the stage's lists: phase 1 beams, phase 2 from the live log when given, else the track's."""
    lists: list[PreferenceList] = []
    if "beams" in config.dpo.phases:
        model, tokenizer = load_model(init_dir)
        vocabulary = SidVocabulary.from_tokenizers(tokenizer, inputs.sids)
        engine = TransformersEngine(
            model, tokenizer, vocabulary.position_token_ids, SidTrie.of_catalogue(inputs.sids)
        )
        reward_model = reward_model_for_run(run, inputs, config.reward_model)
        chosen = _sample(searches, config.dpo.max_prompts, config.dpo.seed)
        lists += beam_preference_lists(chosen, inputs, rewards, engine, reward_model, config.dpo)
    if "log" in config.dpo.phases:
        if feedback is not None:
            lists += feedback_preference_lists(feedback, inputs, rewards, config.dpo.negatives)
        else:
            lists += log_preference_lists(searches, inputs, rewards, config.dpo.negatives, config.dpo.seed)
    if not lists:
        raise ValueError("dpo: no preference list could be built (no searches with a preferred item)")
    if feedback is None:  # live prompts are traffic, not the track's held-out queries
        check_training_pairs(inputs, "dpo", [(x.prompt, "") for x in lists])
    return lists


# ---- GRPO prompts ---------------------------------------------------------------------------------
PROMPT_SCHEMA = pa.schema(
    [
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("query_id", pa.int64(), nullable=False),
        pa.field("truth", pa.list_(pa.list_(pa.int64())), nullable=False),  # clicked/ordered SIDs
        pa.field("clicked", pa.list_(pa.int64()), nullable=False),  # item ids clicked (not ordered)
        pa.field("ordered", pa.list_(pa.int64()), nullable=False),
    ]
)


def grpo_prompts(searches: Sequence[Search], inputs: StageInputs) -> pa.Table:
    """Searches with at least one clicked or ordered item that has a SID: the ground truth."""
    rows = []
    for search in searches:
        clicked = [i for i, e in search.events.items() if e == int(Event.CLICKED) and inputs.sids.has_item(i)]
        ordered = [i for i, e in search.events.items() if e == int(Event.ORDERED) and inputs.sids.has_item(i)]
        if clicked or ordered:
            truth = [list(map(int, c)) for c in inputs.sids.item_codes(sorted(clicked + ordered))]
            rows.append(
                {
                    "prompt": search.prompt,
                    "query_id": search.query_id,
                    "truth": truth,
                    "clicked": clicked,
                    "ordered": ordered,
                }
            )
    return pa.Table.from_pylist(rows, schema=PROMPT_SCHEMA)


# ---- the per-worker loop ----------------------------------------------------------------------------
@dataclass
class AlignJob:
    """Where one alignment stage trains; pickled to Ray Train workers."""

    stage: str  # dpo | grpo
    stage_dir: Path
    init_dir: Path  # the starting model: the policy's first weights and the frozen reference
    sid_dir: Path
    config: DPOConfig | GRPOConfig
    rewards: ItemRewards | None = None  # grpo: scores the rollouts


def sequence_batch(
    tokenizer, vocabulary: SidVocabulary, prompts: Sequence[str], codes: Sequence[Sequence[int]], block: int
) -> tuple[list[list[int]], torch.Tensor]:
    """(prompt token ids, SID token ids (N, L)) of (prompt, SID) rows, encoded as the engines encode."""
    prompt_ids = encode_prompts(tokenizer, prompts, block)
    sid_ids = torch.tensor([vocabulary.codes_to_ids(c) for c in codes], dtype=torch.long)
    return prompt_ids, sid_ids


def sequence_logprobs(
    model: torch.nn.Module, prompt_ids: list[list[int]], sid_ids: torch.Tensor, device, pad_id: int
) -> torch.Tensor:
    """log pi(SID | prompt) per row (N,) on ``device``, with the engines' scoring (sum over SID tokens)."""
    return sid_token_logprobs(model, prompt_ids, sid_ids.to(device), pad_id).sum(-1)


def batch_rows(n: int, step: int, config: OptimConfig, rank: int) -> np.ndarray:
    """This rank's rows at ``step``: a pure function of (seed, step, rank), so resuming repeats nothing."""
    return np.random.default_rng((config.seed, step, rank)).integers(0, n, size=config.batch_size)


def learning_rate(step: int, config: OptimConfig) -> float:
    return config.learning_rate * min(1.0, (step + 1) / max(1, config.warmup_steps))


def dpo_step(
    policy: torch.nn.Module,
    reference: torch.nn.Module,
    batch: pa.Table,
    optimizer: torch.optim.Optimizer,
    config: DPOConfig,
    encode: Callable[[Sequence[str], Sequence[Sequence[int]]], tuple[list[list[int]], torch.Tensor]],
    device,
    pad_id: int,
) -> dict[str, float]:
    """One list-wise DPO update on a batch of lists (one forward over every positive and negative)."""
    prompts, positives = batch["prompt"].to_pylist(), batch["positive"].to_pylist()
    negatives, reward_neg = batch["negatives"].to_pylist(), batch["reward_neg"].to_pylist()
    rows_prompt = prompts + [p for p, negs in zip(prompts, negatives, strict=True) for _ in negs]
    rows_codes = positives + [c for negs in negatives for c in negs]
    prompt_ids, sid_ids = encode(rows_prompt, rows_codes)
    policy.train()
    policy_scores = sequence_logprobs(policy, prompt_ids, sid_ids, device, pad_id)
    with torch.no_grad():
        reference_scores = sequence_logprobs(reference, prompt_ids, sid_ids, device, pad_id)
    size, width = len(prompts), max(len(n) for n in negatives)
    mask = torch.zeros((size, width), dtype=torch.bool)
    index = torch.zeros((size, width), dtype=torch.long)
    rewards = torch.zeros((size, width), dtype=torch.float64)
    cursor = size
    for row, negs in enumerate(negatives):
        mask[row, : len(negs)] = True
        index[row, : len(negs)] = torch.arange(cursor, cursor + len(negs))
        rewards[row, : len(negs)] = torch.tensor(reward_neg[row], dtype=torch.float64)
        cursor += len(negs)
    mask, index = mask.to(device), index.to(device)
    out = listwise_dpo_loss(
        policy_scores[:size].double(),
        reference_scores[:size].double(),
        policy_scores[index].double(),
        reference_scores[index].double(),
        torch.tensor(batch["reward_pos"].to_pylist(), dtype=torch.float64, device=device),
        rewards.to(device),
        mask,
        beta=config.beta,
        alpha=config.alpha,
        sft_weight=config.sft_weight,
        guard_weight=config.guard_weight,
    )
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(policy.parameters(), config.grad_clip)
    optimizer.step()
    with torch.no_grad():
        margin = (policy_scores[:size, None] - policy_scores[index]).masked_select(mask).mean()
    return {
        "loss": out.loss.item(),
        "preference": out.preference.item(),
        "anchor": out.anchor.item(),
        "margin": margin.item(),  # mean log pi(y+) - log pi(y-) over the batch's pairs
    }


@dataclass
class Rollouts:
    """G rollouts per prompt: SID codes (B, G, L), their items and composite rewards (B, G)."""

    codes: np.ndarray
    items: np.ndarray
    rewards: np.ndarray


def rollout(
    engine: TransformersEngine, sids: SemanticIdTokenizer, batch: pa.Table, group: int, rewards: ItemRewards
) -> Rollouts:
    """The policy's top-``group`` constrained beams per prompt, scored by the composite item reward."""
    hits = engine.search(batch["prompt"].to_pylist(), group)
    if any(len(h) < group for h in hits):
        raise ValueError(f"grpo: the catalogue has fewer than group={group} SIDs for a prompt")
    codes = np.array([[hit.codes for hit in h[:group]] for h in hits], dtype=np.int64)
    found = [[sids.items_for_sid(c) for c in row] for row in codes]
    valid = np.array([[bool(f) for f in row] for row in found])
    items = np.array([[f[0] if f else -1 for f in row] for row in found], dtype=np.int64)
    clicked = [set(c) for c in batch["clicked"].to_pylist()]
    ordered = [set(o) for o in batch["ordered"].to_pylist()]
    flat = items.ravel().tolist()
    queries = np.repeat(batch["query_id"].to_numpy(), group).tolist()
    reward = composite_item_reward(
        np.array([[i in ordered[b] for i in row] for b, row in enumerate(items)]),
        np.array([[i in clicked[b] for i in row] for b, row in enumerate(items)]),
        rewards.calibrated(flat).ctr.reshape(items.shape),
        rewards.oracle.tiers(queries, flat).reshape(items.shape),
        valid,
        rewards.config,
    )
    return Rollouts(codes, items, reward)


def truth_tensors(
    truths: Sequence[Sequence[Sequence[int]]], length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ground-truth SIDs (B, M, L) padded with -1, and their mask (B, M)."""
    width = max(1, max(len(t) for t in truths))
    codes = torch.full((len(truths), width, length), -1, dtype=torch.long)
    mask = torch.zeros((len(truths), width), dtype=torch.bool)
    for row, truth in enumerate(truths):
        if truth:
            codes[row, : len(truth)] = torch.tensor(truth)
            mask[row, : len(truth)] = True
    return codes, mask


def grpo_step(
    policy: torch.nn.Module,
    reference: torch.nn.Module,
    engine: TransformersEngine,
    batch: pa.Table,
    optimizer: torch.optim.Optimizer,
    config: GRPOConfig,
    encode: Callable[[Sequence[str], Sequence[Sequence[int]]], tuple[list[list[int]], torch.Tensor]],
    job: AlignJob,
    sids: SemanticIdTokenizer,
    device,
    pad_id: int,
) -> dict[str, float]:
    """Rollouts from the current policy, TPMA advantages, one on-policy update with the KL guard."""
    out = rollout(engine, sids, batch, config.group, job.rewards)
    size, group, length = out.codes.shape
    truth, truth_mask = truth_tensors(batch["truth"].to_pylist(), length)
    advantages = tpma_advantages(
        torch.as_tensor(out.codes), truth, truth_mask, torch.as_tensor(out.rewards), config.w_item
    )
    prompts = [p for p in batch["prompt"].to_pylist() for _ in range(group)]
    prompt_ids, sid_ids = encode(prompts, out.codes.reshape(-1, length).tolist())
    policy.train()
    logprobs = sid_token_logprobs(policy, prompt_ids, sid_ids.to(device), pad_id).view(size, group, length)
    with torch.no_grad():
        reference_logprobs = sid_token_logprobs(reference, prompt_ids, sid_ids.to(device), pad_id)
    loss = tpma_grpo_loss(
        logprobs,
        logprobs.detach(),
        advantages.advantages.to(device),
        advantages.gates.to(device),
        reference_logprobs.view(size, group, length),
        config.kl_weight,
    )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(policy.parameters(), config.grad_clip)
    optimizer.step()
    return {
        "loss": loss.item(),
        "reward": float(out.rewards.mean()),  # mean composite reward of the rollouts
        "top_reward": float(out.rewards[:, 0].mean()),  # of the policy's best beam
        "truth_hit": _truth_hits(out.codes, batch["truth"].to_pylist()),  # rollouts that are a truth
    }


def _truth_hits(codes: np.ndarray, truths: Sequence[Sequence[Sequence[int]]]) -> float:
    hits = [tuple(c) in {tuple(t) for t in truths[b]} for b in range(len(codes)) for c in codes[b].tolist()]
    return float(np.mean(hits))


def run_align_loop(
    job: AlignJob,
    *,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str = "cpu",
    wrap_model: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
    save_checkpoint: Callable[[int, torch.nn.Module, torch.optim.Optimizer, dict], None],
) -> None:
    """One worker's share of an alignment stage: load policy and frozen reference, resume from the
    last checkpoint, step, log, checkpoint (``save_checkpoint`` receives the unwrapped model)."""
    config = job.config
    policy, tokenizer = load_model(job.init_dir)
    reference, _ = load_model(job.init_dir)
    reference.requires_grad_(False).eval().to(device)
    start_step, optimizer_state = 0, None
    last = checkpoints.latest(job.stage_dir)
    if last is not None:
        start_step, optimizer_state = checkpoints.restore(last, policy)
        if rank == 0:
            log.info("%s: resuming from %s (step %d)", job.stage, last.name, start_step)
    policy = wrap_model(policy) if wrap_model else policy.to(device)
    bare = getattr(policy, "module", policy)
    optimizer = torch.optim.AdamW(
        policy.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    sids = SemanticIdTokenizer.load(job.sid_dir)
    vocabulary = SidVocabulary.from_tokenizers(tokenizer, sids)
    block, pad_id = prompt_block(bare.config), tokenizer.pad_token_id

    def encode(
        prompts: Sequence[str], codes: Sequence[Sequence[int]]
    ) -> tuple[list[list[int]], torch.Tensor]:
        return sequence_batch(tokenizer, vocabulary, prompts, codes, block)

    if job.stage == "dpo":
        data = pq.read_table(job.stage_dir / LISTS_FILE)

        def step_fn(rows: np.ndarray) -> dict[str, float]:
            return dpo_step(policy, reference, data.take(rows), optimizer, config, encode, device, pad_id)
    else:
        data = pq.read_table(job.stage_dir / PROMPTS_FILE)
        engine = TransformersEngine(
            bare, tokenizer, vocabulary.position_token_ids, SidTrie.of_catalogue(sids)
        )

        def step_fn(rows: np.ndarray) -> dict[str, float]:
            return grpo_step(
                policy,
                reference,
                engine,
                data.take(rows),
                optimizer,
                config,
                encode,
                job,
                sids,
                device,
                pad_id,
            )

    window: list[dict[str, float]] = []
    for step in range(start_step, config.max_steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config)
        window.append(step_fn(batch_rows(data.num_rows, step, config, rank)))
        done = step + 1
        metrics: dict[str, float] = {}
        if done % config.log_every == 0 or done == config.max_steps:
            metrics = {
                "step": done,
                "steps": config.max_steps,
                **{k: float(np.mean([w[k] for w in window])) for k in window[0]},
            }
            window = []
            if rank == 0:
                log.info(
                    "%s step %d/%d %s",
                    job.stage,
                    done,
                    config.max_steps,
                    {k: round(v, 4) for k, v in metrics.items()},
                )
                append_metrics(job, metrics)
        if done % config.checkpoint_every == 0 or done == config.max_steps:
            save_checkpoint(done, bare, optimizer, metrics)


def append_metrics(job: AlignJob, record: dict) -> None:
    with open(job.stage_dir / "metrics.jsonl", "a") as handle:
        handle.write(json.dumps({"stage": job.stage, **record}) + "\n")


# ---- measuring a model against the stage's data ----------------------------------------------------
@dataclass
class ModelScorer:
    """A model with what it takes to score (prompt, SID) rows and decode beams; for before/after
    measurements of a stage (tests, bench), outside training."""

    model: torch.nn.Module
    tokenizer: object
    sids: SemanticIdTokenizer

    @classmethod
    def load(cls, model_dir: str | Path, sid_dir: str | Path) -> ModelScorer:
        model, tokenizer = load_model(model_dir)
        return cls(model.eval(), tokenizer, SemanticIdTokenizer.load(sid_dir))

    def engine(self) -> TransformersEngine:
        vocabulary = SidVocabulary.from_tokenizers(self.tokenizer, self.sids)
        return TransformersEngine(
            self.model, self.tokenizer, vocabulary.position_token_ids, SidTrie.of_catalogue(self.sids)
        )

    @torch.no_grad()
    def preference_margin(self, lists: pa.Table) -> float:
        """Mean over lists of log pi(y+) - mean_k log pi(y_k): how far the model prefers positives."""
        vocabulary = SidVocabulary.from_tokenizers(self.tokenizer, self.sids)
        block, margins = prompt_block(self.model.config), []
        for prompt, positive, negatives in zip(
            *(lists[c].to_pylist() for c in ("prompt", "positive", "negatives")), strict=True
        ):
            prompt_ids, sid_ids = sequence_batch(
                self.tokenizer, vocabulary, [prompt] * (1 + len(negatives)), [positive, *negatives], block
            )
            scores = sequence_logprobs(self.model, prompt_ids, sid_ids, "cpu", self.tokenizer.pad_token_id)
            margins.append(float(scores[0] - scores[1:].mean()))
        return float(np.mean(margins))

    def rollout_rewards(self, prompts: pa.Table, group: int, rewards: ItemRewards) -> dict[str, float]:
        """Mean composite reward of the top beam and of the top ``group`` beams, and the share of
        top beams that are a clicked or ordered SID of the search."""
        out = rollout(self.engine(), self.sids, prompts, group, rewards)
        return {
            "top_reward": float(out.rewards[:, 0].mean()),
            "group_reward": float(out.rewards.mean()),
            "top_truth_hit": _truth_hits(out.codes[:, :1], prompts["truth"].to_pylist()),
        }


# ---- the driver -----------------------------------------------------------------------------------
def align_stage(
    run_dir: str | Path,
    data: str | Path,
    stage: str,
    config: AlignConfig,
    rewards: RewardConfig,
    train_stage: Callable[[AlignJob], None],
    *,
    feedback: pa.Table | None = None,
    workers: int = 1,
) -> Path:
    """Build the stage's data (once), train it with ``train_stage``, and make ``RUN/model/<stage>``
    the run's latest model. ``feedback``: the live feedback log's table (DPO phase 2 from it)."""
    if stage not in ALIGN_STAGES:
        raise ValueError(f"unknown alignment stage {stage!r} (known: {', '.join(ALIGN_STAGES)})")
    if feedback is not None and stage != "dpo":
        raise ValueError("--feedback trains DPO phase 2; it does not apply to grpo")
    run = RunDir(run_dir)
    done = trained_stage_model(run, stage)
    if done is not None:
        log.info("%s: already trained (%s); skipping", stage, done)
        return done
    stage_dir = (run / f"align/{stage}").resolve()
    init_dir = _starting_model(run, stage_dir)
    inputs = stage_inputs(run.path, data)
    scores = item_rewards(inputs, rewards)
    stage_config = config.dpo if stage == "dpo" else config.grpo
    if not (stage_dir / HELDOUT_FILE).exists():  # written last: the data is complete
        searches, heldout = split_searches(log_searches(inputs), stage_config.heldout_searches)
        if stage == "dpo":
            lists = build_dpo_lists(run.path, inputs, init_dir, config, scores, searches, feedback)
            write_parquet(stage_dir / LISTS_FILE, lists_table(lists))
            log.info("dpo: %d preference lists (%s)", len(lists), _sources(lists))
            held = lists_table(log_preference_lists(heldout, inputs, scores, config.dpo.negatives))
        else:
            prompts = grpo_prompts(_sample(searches, config.grpo.max_prompts, config.grpo.seed), inputs)
            if prompts.num_rows == 0:
                raise ValueError(
                    "grpo: the track's log has no train search with a clicked item to learn from"
                )
            check_training_pairs(inputs, "grpo", [(p, "") for p in prompts["prompt"].to_pylist()])
            write_parquet(stage_dir / PROMPTS_FILE, prompts)
            log.info("grpo: %d prompts", prompts.num_rows)
            held = grpo_prompts(heldout, inputs)
        write_parquet(stage_dir / HELDOUT_FILE, held)
    job = AlignJob(
        stage,
        stage_dir,
        init_dir,
        (run.path / "sid_tokenizer").resolve(),
        stage_config,
        scores if stage == "grpo" else None,
    )
    train_stage(job)
    final_dir = finish_alignment(run, job, workers, str(data), scores)
    write_latest_model(run.path, final_dir)
    return final_dir


def align_run(
    run_dir: str | Path,
    data: str | Path,
    stage: str,
    config_path: str | Path | None,
    train_stage: Callable[[AlignJob], None],
    *,
    feedback: str | Path | None = None,
    max_steps: int | None = None,
    workers: int = 1,
) -> Path:
    """:func:`align_stage` with its configs read from ``config_path`` (``align:`` and ``rewards:``)
    and the live feedback log read from ``feedback`` (a missing or bad log is a clear error)."""
    if feedback is not None and stage != "dpo":
        raise ValueError("--feedback applies to --stage dpo only")
    table = None
    if feedback is not None:
        from onesearch_ray.rewards.feedback_log import read_feedback

        table = read_feedback(feedback)
    return align_stage(
        run_dir,
        data,
        stage,
        load_align_config(config_path, max_steps=max_steps),
        load_reward_config(config_path),
        train_stage,
        feedback=table,
        workers=workers,
    )


def align_options(args, config) -> dict:
    """The keyword arguments of :func:`align_run` from a CLI's parsed ``args`` and its TrainConfig."""
    return {"feedback": args.feedback, "max_steps": args.max_steps, "workers": config.num_workers}


def _starting_model(run: RunDir, stage_dir: Path) -> Path:
    """The run's latest model, recorded in ``job.json`` on the first attempt: a resumed stage keeps
    the model it started from."""
    path = stage_dir / JOB_FILE
    if path.exists():
        return Path(read_json(path)["init"])
    init_dir = latest_model_dir(run.path).resolve()
    write_json(path, {"init": str(init_dir)})
    return init_dir


def _sources(lists: Sequence[PreferenceList]) -> str:
    counts: dict[str, int] = {}
    for item in lists:
        counts[item.source] = counts.get(item.source, 0) + 1
    return ", ".join(f"{n} from {s}" for s, n in counts.items())


def heldout_report(job: AlignJob, model_dir: Path, rewards: ItemRewards) -> dict[str, float]:
    """The stage's measure of ``model_dir`` on its held-out searches: DPO, the preference margin of
    their logged lists; GRPO, the composite reward of the top beams. Empty without held-out data."""
    heldout = pq.read_table(job.stage_dir / HELDOUT_FILE)
    if heldout.num_rows == 0:
        return {}
    scorer = ModelScorer.load(model_dir, job.sid_dir)
    if job.stage == "dpo":
        return {"margin": scorer.preference_margin(heldout), "lists": heldout.num_rows}
    return {**scorer.rollout_rewards(heldout, job.config.group, rewards), "prompts": heldout.num_rows}


def finish_alignment(run: RunDir, job: AlignJob, workers: int, data: str, rewards: ItemRewards) -> Path:
    """The last checkpoint as ``RUN/model/<stage>``, measured on the held-out searches before and
    after, recorded in the manifest."""
    chosen = checkpoints.latest(job.stage_dir)
    if chosen is None:
        raise RuntimeError(f"{job.stage}: training finished without a checkpoint in {job.stage_dir}")
    model, tokenizer = load_model(job.init_dir)
    step = checkpoints.load_weights(chosen, model)
    final_dir = run / f"model/{job.stage}"
    save_model(model, tokenizer, final_dir)
    heldout = {
        "before": heldout_report(job, job.init_dir, rewards),
        "after": heldout_report(job, final_dir, rewards),
    }
    log.info("%s on held-out searches: %s", job.stage, heldout)
    run.record_stage(
        f"train.{job.stage}",
        config={job.stage: dataclasses.asdict(job.config), "workers": workers},
        inputs={"data": data, "init": str(job.init_dir)},
        outputs={
            "model": str(final_dir),
            "checkpoint": chosen.name,
            "step": step,
            "metrics": checkpoints.read_state(chosen)["metrics"],
            "heldout": heldout,
        },
    )
    return final_dir
