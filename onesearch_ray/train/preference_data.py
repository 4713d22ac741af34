"""The data of the alignment stages, built from a run and its track (no Ray; see ``train.alignment``).

- rewards of items for a query (:class:`ItemRewards`): calibrated CTR/CVR from the log's counts,
  graded relevance (``RelevanceOracle``);
- the searches the stages learn from (:func:`track_searches`): the search log's, prompted as SFT
  prompts them; on a track without one, a search per ``valid`` sequence row (the next purchase as
  its order: Amazon) or per judged train query (its relevant items: Home Depot), prompted as
  evaluation prompts them; the latest held out;
- DPO preference lists, one positive against up to K negatives whose reward is below max(R+, 1):
  ``beams`` (phase 1, :func:`beam_preference_lists`): the starting model's trie-constrained beams
  re-ranked by the combined reward (``preference_reward`` of the reward model's expected feedback
  level weight, the calibrated rate and the relevance grade, 10x); ``log`` (phase 2,
  :func:`log_preference_lists`): feedback levels 1-3 against 4-6; the live feedback log
  (:func:`feedback_preference_lists`): per impression, clicked or ordered against shown-not-clicked;
  ``targets`` (:func:`target_preference_lists`): each search's targets (clicked or ordered, bought
  next, judged relevant) against the starting model's beams that score below them;
- GRPO prompts (:func:`grpo_prompts`): searches with their targets' SIDs as ground truth.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from onesearch_ray.data import Event
from onesearch_ray.decoding.beam import TransformersEngine
from onesearch_ray.eval.generative import next_item_prompts, search_prompts
from onesearch_ray.model import load_model
from onesearch_ray.rewards import (
    POSITIVE_LEVELS,
    CalibratedRates,
    FeedbackLevel,
    RelevanceOracle,
    RewardConfig,
    assign_feedback_levels,
    calibrated_rates,
    interaction_counts,
    level_weights,
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
from onesearch_ray.train.config import AlignConfig, DPOConfig
from onesearch_ray.train.stages import StageInputs, positive_items_by_query
from onesearch_ray.train.workflow import check_training_pairs

log = logging.getLogger(__name__)


# ---- rewards of items for a query -----------------------------------------------------------------
@dataclass
class ItemRewards:
    """Per-item calibrated rates (from log counts) and graded relevance; pickled to workers."""

    config: RewardConfig
    oracle: RelevanceOracle
    counts: pa.Table  # item_id, impressions, clicks, orders

    def calibrated(self, item_ids: Sequence[int]) -> CalibratedRates:
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


def item_rewards(inputs: StageInputs, config: RewardConfig, hidden: Collection[int] = ()) -> ItemRewards:
    """Rates counted over the track's log without the ``hidden`` sessions (the held-out searches)."""
    interactions = without_sessions(inputs.track.interactions, hidden)
    if interactions is None:
        counts = pa.table(
            {n: pa.array([], pa.int64()) for n in ("item_id", "impressions", "clicks", "orders")}
        )
    else:
        counts = interaction_counts(interactions)
    return ItemRewards(config, RelevanceOracle.from_track(inputs.track), counts)


def without_sessions(interactions: pa.Table | None, sessions: Collection[int]) -> pa.Table | None:
    """The log without the events of ``sessions``."""
    if interactions is None or not sessions:
        return interactions
    hidden = pc.is_in(interactions["session_id"], pa.array(sorted(sessions), pa.int64()))
    return interactions.filter(pc.invert(hidden))


# ---- searches of the log --------------------------------------------------------------------------
@dataclass
class Search:
    """One search: its prompt, the user's recent items, what was done and what is known to answer it."""

    session_id: int  # a sequence row or a query id on tracks without a search log
    timestamp: int  # the search's first event (the row or query order without a log)
    query_id: int | None  # None: no query (a next-purchase prompt)
    prompt: str
    recent_items: list[int]
    events: dict[int, int]  # item_id -> strongest Event
    relevant: list[int] = dataclasses.field(default_factory=list)  # judged relevant, no event

    def targets(self) -> list[int]:
        """Items known to answer the search: clicked or ordered, then judged relevant."""
        acted = sorted(i for i, e in self.events.items() if e >= int(Event.CLICKED))
        return acted + [i for i in self.relevant if i not in self.events]


def has_search_log(inputs: StageInputs) -> bool:
    """Whether the track logs searches with their users (what phases ``beams`` and ``log`` need)."""
    return inputs.track.interactions is not None and inputs.behavior is not None


def track_searches(inputs: StageInputs) -> list[Search]:
    """The train searches of the track: its search log's; without one, a search per ``valid``
    sequence row if it has sequences, else per train query with a relevant judgment."""
    if has_search_log(inputs):
        return log_searches(inputs)
    if inputs.track.sequences is not None:
        return sequence_searches(inputs)
    return judged_searches(inputs)


def sequence_searches(inputs: StageInputs) -> list[Search]:
    """Per training sequence row, the history prompted as evaluation prompts it and the next
    purchase as its order (the purchase is the positive level)."""
    rows = inputs.track.sequences
    rows = rows.filter(pc.equal(rows["split"], inputs.sequence_split))
    users, histories, targets = (rows[c].to_pylist() for c in ("user_id", "history_item_ids", "item_id"))
    prompts = next_item_prompts(inputs.builder, users, histories)
    return [
        Search(row, row, None, prompt, list(history), {target: int(Event.ORDERED)})
        for row, (prompt, history, target) in enumerate(zip(prompts, histories, targets, strict=True))
    ]


def judged_searches(inputs: StageInputs) -> list[Search]:
    """Per train query with a relevant judgment, the cold-start prompt evaluation uses and the
    relevant items (no events: judgments are not feedback)."""
    relevant = positive_items_by_query(inputs)
    queries = [(qid, text) for qid, text in inputs.train_queries() if qid in relevant]
    prompts = search_prompts(inputs.builder, queries, inputs.query_codes, inputs.behavior)
    return [
        Search(qid, order, qid, prompt, [], {}, relevant[qid])
        for order, ((qid, _), prompt) in enumerate(zip(queries, prompts, strict=True))
    ]


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


def sample(values: list, limit: int, seed: int) -> list:
    """At most ``limit`` of ``values`` (0: all), a seeded choice kept in order."""
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
    searches: Sequence[Search],
    inputs: StageInputs,
    rewards: ItemRewards,
    negatives: int,
    seed: int = 0,
    hidden: Collection[int] = (),
) -> list[PreferenceList]:
    """Phase 2 from the track's log: per search, each level 1-3 item against its level 4-6 items
    (shown ones first, then the sampled same-category and other-category items).

    Levels come from the whole log (level 2 is an order in another session) except the ``hidden``
    sessions (the held-out searches: their orders must not shape the training lists)."""
    log_rows = without_sessions(inputs.track.interactions, hidden)
    if not searches or log_rows is None:
        return []
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
        if not any(level in POSITIVE_LEVELS for level, _, _ in rows):
            continue
        items = [item for _, item, _ in rows]
        reward = preference_reward(
            [w for _, _, w in rows],
            rewards.calibrated(items).reward,
            rewards.grades([search.query_id] * len(items), items),
            rewards.config,
        )
        codes = [tuple(int(c) for c in row) for row in inputs.sids.item_codes(items)]
        negative_rows = [i for i, (level, _, _) in enumerate(rows) if level not in POSITIVE_LEVELS]
        for i, (level, _, _) in enumerate(rows):
            if level in POSITIVE_LEVELS:
                order = [i, *negative_rows]
                made = make_list(search.prompt, [codes[j] for j in order], reward[order], 0, negatives, "log")
                if made is not None:
                    lists.append(made)
    return lists


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
    reward = preference_reward(
        level_weights(event_levels(events), rewards.config.level_weights),
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


def event_levels(events: np.ndarray) -> np.ndarray:
    """The feedback level of items by their strongest event in the search: ordered 1, clicked 3,
    shown 4."""
    return np.where(
        events == int(Event.ORDERED),
        int(FeedbackLevel.ORDERED),
        np.where(events == int(Event.CLICKED), int(FeedbackLevel.CLICKED), int(FeedbackLevel.SHOWN)),
    )


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


def target_preference_lists(
    searches: Sequence[Search],
    inputs: StageInputs,
    rewards: ItemRewards,
    engine: TransformersEngine,
    config: DPOConfig,
) -> list[PreferenceList]:
    """Phase ``targets``: each target of a search (clicked or ordered, the next purchase, judged
    relevant) against the starting model's constrained beams whose combined reward is below its own,
    the model's favourites first. The feedback term is the item's logged level in the search (0 for
    an item without an event), so on Home Depot relevance alone decides and on Amazon the purchase.
    The model's own beams are the negatives the tracks without a search log do not log, and the
    hardest ones: what the model would show instead."""
    lists = []
    for search in searches:
        targets = [item for item in search.targets() if inputs.sids.has_item(item)]
        if not targets:
            continue
        target_codes = [tuple(int(c) for c in row) for row in inputs.sids.item_codes(targets)]
        beams = [
            h.codes for h in engine.search([search.prompt], config.beam)[0] if h.codes not in target_codes
        ]
        codes = [*target_codes, *beams]
        items = [*targets, *(inputs.sids.items_for_sid(c)[0] for c in beams)]
        events = [search.events.get(item) for item in items]
        acted = np.array([e is not None for e in events])
        levels = event_levels(np.array([e if e is not None else int(Event.SHOWN) for e in events]))
        feedback = np.where(acted, level_weights(levels, rewards.config.level_weights), 0.0)
        reward = preference_reward(
            feedback,
            rewards.calibrated(items).reward,
            rewards.grades([search.query_id] * len(items), items),
            rewards.config,
        )
        beam_rows = list(range(len(targets), len(codes)))
        for t in range(len(targets)):
            order = [t, *beam_rows]
            made = make_list(
                search.prompt, [codes[j] for j in order], reward[order], 0, config.negatives, "targets"
            )
            if made is not None:
                lists.append(made)
    return lists


def reward_model_for_run(
    run: Path, inputs: StageInputs, config: RewardModelConfig, hidden: Collection[int] = ()
) -> RewardModel:
    """``RUN/reward_model`` when trained before, else trained now on the track's search log without
    the ``hidden`` sessions."""
    directory = run / REWARD_MODEL_DIR
    if (directory / "config.json").exists():
        return load_reward_model(directory)
    interactions = without_sessions(inputs.track.interactions, hidden)
    if interactions is None or inputs.behavior is None:
        raise ValueError("dpo phase 'beams' needs a search log to train the reward model on")
    examples = log_examples(interactions, inputs.sids, inputs.query_codes, inputs.behavior, config)
    model, metrics = train_reward_model(examples, inputs.sids.layout.level_sizes, config)
    save_reward_model(model, directory, metrics)
    return model


def starting_engine(init_dir: Path, inputs: StageInputs) -> TransformersEngine:
    """The starting model's trie-constrained decoder (phases ``beams`` and ``targets``)."""
    model, tokenizer = load_model(init_dir)
    return TransformersEngine.for_catalogue(model, tokenizer, inputs.sids)


def build_dpo_lists(
    run: Path,
    inputs: StageInputs,
    init_dir: Path,
    config: AlignConfig,
    rewards: ItemRewards,
    searches: Sequence[Search],
    feedback: pa.Table | None = None,
    hidden: Collection[int] = (),
) -> list[PreferenceList]:
    """All of the stage's lists: phase 1 beams, phase 2 from the live log when given, else the
    track's, and the searches' targets against the beams."""
    lists: list[PreferenceList] = []
    engine = starting_engine(init_dir, inputs) if {"beams", "targets"} & set(config.dpo.phases) else None
    # the reward model of phase 1 learns from the log
    if "beams" in config.dpo.phases and has_search_log(inputs) and searches:
        reward_model = reward_model_for_run(run, inputs, config.reward_model, hidden)
        chosen = sample(searches, config.dpo.max_prompts, config.dpo.seed)
        lists += beam_preference_lists(chosen, inputs, rewards, engine, reward_model, config.dpo)
    if "log" in config.dpo.phases:
        if feedback is not None:
            lists += feedback_preference_lists(feedback, inputs, rewards, config.dpo.negatives)
        else:
            negatives, seed = config.dpo.negatives, config.dpo.seed
            lists += log_preference_lists(searches, inputs, rewards, negatives, seed, hidden)
    if "targets" in config.dpo.phases:
        chosen = sample(searches, config.dpo.max_prompts, config.dpo.seed)
        lists += target_preference_lists(chosen, inputs, rewards, engine, config.dpo)
    if not lists:
        raise ValueError(
            f"dpo: no preference list could be built with phases {list(config.dpo.phases)} (no "
            "logged search with a preferred item); a track without a search log needs phase "
            "'targets' (its purchases or judgments) or --feedback LOG"
        )
    if feedback is None:  # live prompts are traffic, not the track's held-out queries
        check_training_pairs(inputs, "dpo", [(x.prompt, "") for x in lists])
    return lists


def heldout_dpo_lists(
    inputs: StageInputs, init_dir: Path, config: DPOConfig, rewards: ItemRewards, heldout: Sequence[Search]
) -> list[PreferenceList]:
    """The held-out searches' lists the stage is measured on: their logged ones, or on a track
    without a search log their targets against the starting model's beams."""
    if has_search_log(inputs):
        return log_preference_lists(heldout, inputs, rewards, config.negatives)
    if not heldout:
        return []
    return target_preference_lists(heldout, inputs, rewards, starting_engine(init_dir, inputs), config)


def new_user_searches(
    searches: Sequence[Search], inputs: StageInputs, share: float, seed: int
) -> list[Search]:
    """A seeded ``share`` of the query searches, prompted as ``/search`` prompts a new user's (no
    user id, no history), with the same targets."""
    asked = [s for s in searches if s.query_id is not None]
    if not asked or share <= 0 or inputs.behavior is None:
        return []
    chosen = sample(asked, max(1, round(share * len(asked))), seed)
    return [
        dataclasses.replace(
            s,
            prompt=inputs.builder.search_prompt(
                inputs.behavior.query_text[s.query_id], inputs.query_codes.get(s.query_id), None
            ),
            recent_items=[],
        )
        for s in chosen
    ]


# ---- GRPO prompts ---------------------------------------------------------------------------------
PROMPT_SCHEMA = pa.schema(
    [
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("query_id", pa.int64()),  # null: a next-purchase prompt
        pa.field("truth", pa.list_(pa.list_(pa.int64())), nullable=False),  # the targets' SIDs
        pa.field("clicked", pa.list_(pa.int64()), nullable=False),  # item ids clicked (not ordered)
        pa.field("ordered", pa.list_(pa.int64()), nullable=False),
    ]
)


def grpo_prompts(searches: Sequence[Search], inputs: StageInputs) -> pa.Table:
    """Searches with at least one target that has a SID: the targets' SIDs are the ground truth."""
    rows = []
    for search in searches:
        clicked = [i for i, e in search.events.items() if e == int(Event.CLICKED) and inputs.sids.has_item(i)]
        ordered = [i for i, e in search.events.items() if e == int(Event.ORDERED) and inputs.sids.has_item(i)]
        targets = [i for i in search.targets() if inputs.sids.has_item(i)]
        if targets:
            truth = [list(map(int, c)) for c in inputs.sids.item_codes(targets)]
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
