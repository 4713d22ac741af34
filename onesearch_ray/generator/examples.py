"""Where the generator's training searches come from, per kind of signal a track has.

- ``judged_searches``: each train query with its judged items, gain = relevance - 1 (the NDCG gain).
- ``log_searches``: each train-query search of the log with a click or an order (an order weighs
  2, a click 1), the user's earlier clicks as the history.
- ``distilled_searches``: pseudo-queries drawn from titles, labelled by the project's cascade
  (BM25 + dense RRF, ``generator.distill``), the rank-r item with gain 1 / (r + 1): the model learns
  the teacher's order on queries shaped like the catalogue, not only the few thousand judged ones.
- ``next_item_searches``: next-item rows with no query (the history is the prompt), plus sliding
  windows inside each history (prefix -> next item, at most ``WINDOWS`` per row).

Only the ``train`` split's queries (and the ``valid`` next-item rows, as evaluation.md allows)
ever become examples: the leak guard is here, in one place.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from collections.abc import Collection
from pathlib import Path

import numpy as np

from onesearch_ray.data import Track
from onesearch_ray.data.schemas import Event
from onesearch_ray.generator.catalogue import Catalogue
from onesearch_ray.generator.config import DistillConfig
from onesearch_ray.generator.distill import distilled_queries
from onesearch_ray.generator.leak import LeakError, held_out_query_keys, query_key
from onesearch_ray.generator.train import Example
from onesearch_ray.khqe import SemanticIdTokenizer
from onesearch_ray.khqe.cache import load_embeddings, store_embeddings
from onesearch_ray.khqe.online import RunTextEncoder

TRAIN_SPLIT = "train"
NEXT_ITEM_TRAIN_SPLIT = "valid"
WINDOWS = 3
ORDER_GAIN, CLICK_GAIN = 2.0, 1.0


def train_query_rows(track: Track) -> dict[int, int]:
    """{query_id: row in ``track.queries``} of the train split only."""
    if track.queries is None:
        return {}
    ids, splits = track.queries["query_id"].to_pylist(), track.queries["split"].to_pylist()
    return {
        qid: row for row, (qid, split) in enumerate(zip(ids, splits, strict=True)) if split == TRAIN_SPLIT
    }


def judged_searches(track: Track, row_of_item: dict[int, int], query_vectors: np.ndarray) -> list[Example]:
    """One example per train query with a judged item above "irrelevant"."""
    rows = train_query_rows(track)
    if track.judgments is None or not rows:
        return []
    targets: dict[int, dict[int, float]] = defaultdict(dict)
    judged = track.judgments
    for qid, item, rel in zip(
        judged["query_id"].to_pylist(),
        judged["item_id"].to_pylist(),
        judged["relevance"].to_pylist(),
        strict=True,
    ):
        if qid in rows and item in row_of_item and rel > 1.0:
            targets[qid][row_of_item[item]] = rel - 1.0
    texts = track.queries["query"].to_pylist()
    return [
        Example(
            texts[rows[qid]],
            query_vectors[rows[qid]],
            np.array(list(t)),
            np.array(list(t.values())),
            query_id=qid,
        )
        for qid, t in targets.items()
    ]


def log_searches(
    track: Track, row_of_item: dict[int, int], query_vectors: np.ndarray, history: int
) -> list[Example]:
    """One example per logged train-query search (user, query, time) with a click or an order."""
    rows = train_query_rows(track)
    log = track.interactions
    if log is None or not rows:
        return []
    log = log.sort_by("timestamp")
    clicks_so_far: dict[str, list[int]] = defaultdict(list)
    searches: dict[tuple, dict[int, float]] = {}
    contexts: dict[tuple, list[int]] = {}
    columns = [log[c].to_pylist() for c in ("user_id", "query_id", "item_id", "event", "timestamp")]
    for user, qid, item, event, when in zip(*columns, strict=True):
        if item not in row_of_item or event not in (Event.CLICKED, Event.ORDERED):
            continue
        if qid in rows:
            key = (user, qid, when)
            contexts.setdefault(key, clicks_so_far[user][-history:] if history else [])
            gain = ORDER_GAIN if event == Event.ORDERED else CLICK_GAIN
            target = searches.setdefault(key, {})
            target[row_of_item[item]] = max(target.get(row_of_item[item], 0.0), gain)
        if event == Event.CLICKED:
            clicks_so_far[user].append(row_of_item[item])
    texts = track.queries["query"].to_pylist()
    return [
        Example(
            texts[rows[key[1]]],
            query_vectors[rows[key[1]]],
            np.array(list(t)),
            np.array(list(t.values())),
            contexts[key],
            query_id=key[1],
        )
        for key, t in searches.items()
    ]


def distilled_searches(run: Path, track: Track, catalogue: Catalogue, config: DistillConfig) -> list[Example]:
    """Cascade-labelled pseudo-queries (none unless ``config.pseudo_queries_per_item``); their query
    vectors are encoded once and cached in ``RUN/embeddings/pseudo_queries.npy``."""
    if not config.enabled:
        return []
    train_texts = [track.queries["query"][row].as_py() for row in train_query_rows(track).values()]
    exclude = held_out_query_keys(track, TRAIN_SPLIT) | {query_key(q) for q in train_texts}
    sids = SemanticIdTokenizer.load(Path(run) / "sid_tokenizer")
    labelled = distilled_queries(Path(run), track.items, sids, exclude, config)
    texts = labelled["query"].to_pylist()
    encoder = RunTextEncoder.from_run(run).encoder
    vectors = load_embeddings(Path(run), "pseudo_queries", texts, encoder.config)
    if vectors is None:
        vectors = encoder.encode(texts, "query")
        store_embeddings(Path(run), "pseudo_queries", texts, encoder.config, vectors)
    rows = catalogue.row_of_item()
    out = []
    for text, vector, labels in zip(texts, vectors, labelled["labels"].to_pylist(), strict=True):
        ranked = [(rows[item], 1.0 / (rank + 1)) for rank, item in enumerate(labels) if item in rows]
        if ranked:
            targets, gains = zip(*ranked, strict=True)
            out.append(Example(text, vector, np.array(targets), np.array(gains)))
    return out


def tuning_user(user: str) -> bool:
    """Whether ``user`` is in the tuning half of a next-item track's users (a stable hash of the id):
    selection rows and every default choice come from this half only; the other half's test rows
    check that the choices generalise (``held_out_user_rows``)."""
    return zlib.crc32(str(user).encode()) % 2 == 0


def next_item_selection_rows(track: Track, users: int, seed: int = 0) -> list[int]:
    """Positions in ``track.sequences`` to select on: the last ``valid`` row (table order: the newest)
    of each of ``users`` users of the tuning half (``tuning_user``) drawn at random (``seed``);
    ``next_item_searches`` keeps every row of those users out of training."""
    users_of, splits = (track.sequences.column(c).to_pylist() for c in ("user_id", "split"))
    last_row: dict[str, int] = {}
    for row, (user, split) in enumerate(zip(users_of, splits, strict=True)):
        if split == NEXT_ITEM_TRAIN_SPLIT and tuning_user(user):
            last_row[user] = row
    pool = sorted(last_row)
    picked = np.random.default_rng(seed).permutation(len(pool))[:users]
    return sorted(last_row[pool[i]] for i in picked)


def held_out_user_rows(track: Track, split: str = "test") -> list[int]:
    """Positions of ``split``'s rows whose users are outside the tuning half: no choice saw them."""
    users_of, splits = (track.sequences.column(c).to_pylist() for c in ("user_id", "split"))
    return [
        row
        for row, (user, s) in enumerate(zip(users_of, splits, strict=True))
        if s == split and not tuning_user(user)
    ]


def next_item_searches(
    track: Track, row_of_item: dict[int, int], dim: int, held_out: Collection[int] = ()
) -> list[Example]:
    """The ``valid`` next-item rows (history -> next item) and up to ``WINDOWS`` windows inside each;
    ``held_out``: positions in ``track.sequences`` kept for selection. No row of their users trains:
    a selection row must stand where a test row does, on a user the model never saw, not on the
    next step of sequences it was trained on (which rewards memorising them)."""
    if track.sequences is None:
        return []
    users = track.sequences["user_id"].to_pylist()
    held_out_users = {users[position] for position in held_out}
    columns = (track.sequences[c].to_pylist() for c in ("history_item_ids", "item_id", "split"))
    empty = np.zeros(dim, dtype=np.float32)
    out = []
    for user, history, target, split in zip(users, *columns, strict=True):
        if split != NEXT_ITEM_TRAIN_SPLIT or user in held_out_users:
            continue
        known = [row_of_item[i] for i in history if i in row_of_item]
        if target in row_of_item:
            out.append(Example("", empty, np.array([row_of_item[target]]), np.ones(1), known))
        for end in range(len(known) - 1, max(0, len(known) - 1 - WINDOWS), -1):
            out.append(Example("", empty, np.array([known[end]]), np.ones(1), known[:end]))
    return out


def drop_held_out_queries(examples: list[Example], track: Track) -> list[Example]:
    """The examples whose query is not the text of a valid or test query (live traffic may hold them)."""
    held_out = held_out_query_keys(track, TRAIN_SPLIT)
    return [e for e in examples if not (e.query and query_key(e.query) in held_out)]


def check_no_leak(examples: list[Example], track: Track) -> None:
    """Raise ``LeakError`` when a training search carries the text of a valid or test query."""
    held_out = held_out_query_keys(track, TRAIN_SPLIT)
    for example in examples:
        if example.query and query_key(example.query) in held_out:
            raise LeakError(
                f"a training search carries the valid/test query {example.query!r} "
                "(evaluation.md: no valid or test query text enters training)"
            )
