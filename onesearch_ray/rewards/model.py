"""The PARS reward model: CTR, CVR and CTCVR of a (query, user, item) from the generator's own inputs.

Inputs are what the generator reads and writes: the query's SID and words (hashed), the user's
recently clicked items' SIDs (the prompt's short-term view) and the candidate item's SID. Each SID
position has its own embedding rows; a SID is the sum of its positions' vectors, the history their
mean; how long a SID prefix the item shares with the query and with each history item is given
explicitly (the hierarchy's "same kind of item"). An MLP over the vectors and their products gives
two logits; ESMM-style, the model predicts pCTR and pCVR = P(order | click), and pCTCVR = pCTR *
pCVR. It trains on every shown item of the search log: pCTR against "clicked", pCTCVR against
"ordered" (so CVR learns over the whole impression space, not only over clicks), and reports ROC AUC
on the latest searches, held out. Small enough to train on CPU in seconds.

Saved as ``RUN/reward_model/`` (``config.json`` + ``model.pt``), written whole or not at all.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn.functional as F
from torch import nn

from onesearch_ray.behavior import BehaviorIndex
from onesearch_ray.data.schemas import Event
from onesearch_ray.io import atomic_dir, read_json, write_json
from onesearch_ray.khqe import SemanticIdTokenizer

log = logging.getLogger(__name__)
MISSING = -1  # code of an absent SID (no query SID, a shorter history)
REWARD_MODEL_DIR = "reward_model"
_SESSION_KEYS = ["session_id", "user_id", "query_id"]
_WORD = re.compile(r"[a-z0-9]+")


@dataclass
class RewardModelConfig:
    """Size and training of the reward model (YAML ``align.reward_model``)."""

    embedding_dim: int = 16
    hidden: int = 64
    history: int = 5  # recent clicked items of the user, as in the prompt's short-term view
    word_buckets: int = 4096  # hashed query words (the prompt's query text)
    max_words: int = 8
    epochs: int = 8
    batch_size: int = 256
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    holdout_fraction: float = 0.2  # the latest searches, kept out of training to report AUC on
    seed: int = 0

    def __post_init__(self) -> None:
        sizes = (
            self.embedding_dim,
            self.hidden,
            self.epochs,
            self.batch_size,
            self.word_buckets,
            self.max_words,
        )
        if min(sizes) < 1 or self.history < 0:
            raise ValueError("reward_model: sizes, epochs and batch_size must be >= 1, history >= 0")
        if not 0 <= self.holdout_fraction < 1:
            raise ValueError(f"reward_model.holdout_fraction {self.holdout_fraction}: expected [0, 1)")


@dataclass
class RewardExamples:
    """One row per shown item of a search: SID codes (MISSING where absent) and outcomes."""

    query_codes: np.ndarray  # (N, L) int64
    query_words: np.ndarray  # (N, W) hashed words of the query text
    item_codes: np.ndarray  # (N, L)
    history_codes: np.ndarray  # (N, H, L)
    clicked: np.ndarray  # (N,) float32, 1 for clicked or ordered
    ordered: np.ndarray  # (N,)
    timestamp: np.ndarray  # (N,) int64, the search's first event

    def __len__(self) -> int:
        return len(self.clicked)

    def take(self, rows: np.ndarray) -> RewardExamples:
        return RewardExamples(*(getattr(self, f.name)[rows] for f in dataclasses.fields(self)))


class RewardPrediction(NamedTuple):
    ctr: torch.Tensor
    cvr: torch.Tensor
    ctcvr: torch.Tensor  # ctr * cvr


def codes_or_missing(codes: Sequence[Sequence[int] | None], length: int) -> np.ndarray:
    """(N, length) int64 codes, MISSING rows where a SID is None."""
    out = np.full((len(codes), length), MISSING, dtype=np.int64)
    for row, sid in enumerate(codes):
        if sid is not None:
            out[row] = sid
    return out


def hashed_words(texts: Sequence[str | None], buckets: int, max_words: int) -> np.ndarray:
    """(N, max_words) bucket ids of each text's first lower-case words (crc32, stable across runs),
    MISSING-padded."""
    out = np.full((len(texts), max_words), MISSING, dtype=np.int64)
    for row, text in enumerate(texts):
        words = _WORD.findall((text or "").lower())[:max_words]
        out[row, : len(words)] = [zlib.crc32(w.encode()) % buckets for w in words]
    return out


def candidate_examples(
    sids: SemanticIdTokenizer,
    query_codes: Sequence[int] | None,
    query_text: str | None,
    recent_items: Sequence[int],
    item_codes: np.ndarray,
    config: RewardModelConfig,
) -> RewardExamples:
    """Rows to score candidate items (``item_codes`` (N, L)) for one search; outcomes unknown (0)."""
    n = len(item_codes)
    return RewardExamples(
        query_codes=np.repeat(codes_or_missing([query_codes], sids.sid_length), n, axis=0),
        query_words=np.repeat(hashed_words([query_text], config.word_buckets, config.max_words), n, axis=0),
        item_codes=np.asarray(item_codes, dtype=np.int64),
        history_codes=np.repeat(history_codes([recent_items], sids, config.history), n, axis=0),
        clicked=np.zeros(n, np.float32),
        ordered=np.zeros(n, np.float32),
        timestamp=np.zeros(n, np.int64),
    )


def history_codes(items: Sequence[Sequence[int]], sids: SemanticIdTokenizer, history: int) -> np.ndarray:
    """(N, history, L) codes of each row's last ``history`` items that have a SID, MISSING-padded."""
    out = np.full((len(items), history, sids.sid_length), MISSING, dtype=np.int64)
    for row, recent in enumerate(items):
        known = [int(i) for i in recent if sids.has_item(int(i))][-history:] if history else []
        if known:
            out[row, : len(known)] = sids.item_codes(known)
    return out


def log_examples(
    interactions: pa.Table,
    sids: SemanticIdTokenizer,
    query_codes: Mapping[int, Sequence[int]],
    behavior: BehaviorIndex,
    config: RewardModelConfig,
) -> RewardExamples:
    """The shown items of every search in the log (``query_id`` not null) whose item has a SID.

    The user's history is what the prompt would hold when the query was typed: clicks strictly
    before the search's first event.
    """
    searched = interactions.filter(pc.is_valid(interactions["query_id"]))
    rows = searched.group_by([*_SESSION_KEYS, "item_id"]).aggregate([("event", "max"), ("timestamp", "min")])
    keep = np.array([sids.has_item(i) for i in rows["item_id"].to_pylist()], dtype=bool)
    rows = rows.filter(pa.array(keep))
    if rows.num_rows == 0:
        raise ValueError("reward model: the log has no shown items of searches with a SID to learn from")
    starts = searched.group_by(["session_id"]).aggregate([("timestamp", "min")])
    start_of = dict(zip(starts["session_id"].to_pylist(), starts["timestamp_min"].to_pylist(), strict=True))
    sessions, users = rows["session_id"].to_pylist(), rows["user_id"].to_pylist()
    contexts: dict[int, list[int]] = {}
    for session, user in zip(sessions, users, strict=True):
        if session not in contexts:
            context = behavior.context_for(user, before_timestamp=start_of[session], short_len=config.history)
            contexts[session] = context.short_items
    event = rows["event_max"].to_numpy()
    length, queries = sids.sid_length, rows["query_id"].to_pylist()
    texts = [behavior.query_text.get(q) for q in queries]
    return RewardExamples(
        query_codes=codes_or_missing([query_codes.get(q) for q in queries], length),
        query_words=hashed_words(texts, config.word_buckets, config.max_words),
        item_codes=np.asarray(sids.item_codes(rows["item_id"].to_pylist()), dtype=np.int64),
        history_codes=history_codes([contexts[s] for s in sessions], sids, config.history),
        clicked=(event >= int(Event.CLICKED)).astype(np.float32),
        ordered=(event == int(Event.ORDERED)).astype(np.float32),
        timestamp=np.asarray([start_of[s] for s in sessions], dtype=np.int64),
    )


class RewardModel(nn.Module):
    """pCTR, pCVR and pCTCVR of (query SID, history SIDs, item SID) rows."""

    def __init__(self, level_sizes: Sequence[int], config: RewardModelConfig) -> None:
        super().__init__()
        self.level_sizes = [int(n) for n in level_sizes]
        self.config = config
        # one table for all positions; a position's codes are offset past the earlier positions'
        self.register_buffer(
            "offsets", torch.tensor(np.cumsum([0, *self.level_sizes[:-1]])), persistent=False
        )
        dim = config.embedding_dim
        self.codes = nn.Embedding(sum(self.level_sizes) + 1, dim, padding_idx=sum(self.level_sizes))
        self.words = nn.EmbeddingBag(
            config.word_buckets + 1, dim, mode="sum", padding_idx=config.word_buckets
        )
        width = 7 * dim + 2 * len(self.level_sizes)
        self.mlp = nn.Sequential(nn.Linear(width, config.hidden), nn.ReLU(), nn.Linear(config.hidden, 2))

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """(..., L) codes -> (..., dim): the sum of the positions' vectors; MISSING codes add nothing."""
        index = torch.where(codes == MISSING, self.codes.padding_idx, codes + self.offsets)
        return self.codes(index).sum(dim=-2)

    def forward(
        self, query: torch.Tensor, words: torch.Tensor, item: torch.Tensor, history: torch.Tensor
    ) -> RewardPrediction:
        q, i = self.embed(query), self.embed(item)
        present_words = (words != MISSING).float()
        w = self.words(torch.where(words == MISSING, self.words.padding_idx, words)) / present_words.sum(
            dim=1, keepdim=True
        ).clamp(min=1.0)
        present = (history != MISSING).all(dim=-1, keepdim=True).float()  # (B, H, 1)
        count = present.sum(dim=1).clamp(min=1.0)
        u = (self.embed(history) * present).sum(dim=1) / count
        query_match = prefix_match(query, item)
        history_match = (prefix_match(history, item[:, None, :]) * present).sum(dim=1) / count
        features = [q, w, i, u, q * i, w * i, u * i, query_match, history_match]
        logits = self.mlp(torch.cat(features, dim=-1))
        ctr, cvr = torch.sigmoid(logits[:, 0]), torch.sigmoid(logits[:, 1])
        return RewardPrediction(ctr, cvr, ctr * cvr)

    @torch.no_grad()
    def predict(self, examples: RewardExamples, batch_size: int = 4096) -> dict[str, np.ndarray]:
        """pCTR, pCVR and pCTCVR of every row, as numpy arrays."""
        self.eval()
        parts: dict[str, list[np.ndarray]] = {"ctr": [], "cvr": [], "ctcvr": []}
        for start in range(0, len(examples), batch_size):
            out = self(*_tensors(examples, np.arange(start, min(start + batch_size, len(examples)))))
            for name in parts:
                parts[name].append(getattr(out, name).numpy())
        return {name: np.concatenate(values) for name, values in parts.items()}


def prefix_match(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(..., L) float: 1 at position l where the SIDs agree on positions 0..l (MISSING never agrees).

    The hierarchy made explicit: a query whose SID shares a long prefix with the item's is about
    the same kind of item, as is a history that does."""
    return ((a == b) & (a != MISSING)).long().cumprod(dim=-1).float()


def _tensors(examples: RewardExamples, rows: np.ndarray) -> tuple[torch.Tensor, ...]:
    return tuple(
        torch.as_tensor(getattr(examples, name)[rows])
        for name in ("query_codes", "query_words", "item_codes", "history_codes")
    )


def rank_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC of ``scores`` for binary ``labels`` (ties count half); NaN without both classes."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # average ranks over ties (1-based)
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    mean_rank = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(mean_rank, counts)
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def split_by_time(examples: RewardExamples, holdout_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, held-out rows): the latest ``holdout_fraction`` of searches are held out."""
    if holdout_fraction == 0:
        return np.arange(len(examples)), np.zeros(0, dtype=np.int64)
    cut = np.quantile(examples.timestamp, 1.0 - holdout_fraction)
    held = examples.timestamp > cut
    return np.flatnonzero(~held), np.flatnonzero(held)


def train_reward_model(
    examples: RewardExamples, level_sizes: Sequence[int], config: RewardModelConfig
) -> tuple[RewardModel, dict[str, float]]:
    """Fit on all but the latest searches; report loss and held-out CTR/CTCVR AUC."""
    train_rows, held_rows = split_by_time(examples, config.holdout_fraction)
    torch.manual_seed(config.seed)
    model = RewardModel(level_sizes, config)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    rng = np.random.default_rng(config.seed)
    loss = torch.zeros(())
    for _ in range(config.epochs):
        model.train()
        order = rng.permutation(train_rows)
        for start in range(0, len(order), config.batch_size):
            rows = order[start : start + config.batch_size]
            out = model(*_tensors(examples, rows))
            clicked, ordered = (torch.as_tensor(getattr(examples, n)[rows]) for n in ("clicked", "ordered"))
            loss = F.binary_cross_entropy(out.ctr, clicked) + F.binary_cross_entropy(
                out.ctcvr.clamp(1e-7, 1 - 1e-7), ordered
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    metrics = {
        "train_rows": float(len(train_rows)),
        "heldout_rows": float(len(held_rows)),
        "loss": loss.item(),
    }
    if len(held_rows):
        held = examples.take(held_rows)
        predicted = model.predict(held)
        metrics["heldout_ctr_auc"] = rank_auc(predicted["ctr"], held.clicked)
        metrics["heldout_ctcvr_auc"] = rank_auc(predicted["ctcvr"], held.ordered)
    log.info("reward model: %s", {k: round(v, 4) for k, v in metrics.items()})
    return model, metrics


def save_reward_model(model: RewardModel, directory: str | Path, metrics: Mapping[str, float]) -> Path:
    """``config.json`` + ``model.pt`` in ``directory``, replaced whole or not at all."""
    with atomic_dir(directory) as tmp:
        torch.save(model.state_dict(), tmp / "model.pt")
        write_json(
            tmp / "config.json",
            {
                "level_sizes": model.level_sizes,
                "config": dataclasses.asdict(model.config),
                "metrics": dict(metrics),
            },
        )
    return Path(directory)


def load_reward_model(directory: str | Path) -> RewardModel:
    directory = Path(directory)
    if not (directory / "config.json").exists():
        raise FileNotFoundError(f"{directory}: no reward model here (config.json missing)")
    saved = read_json(directory / "config.json")
    model = RewardModel(saved["level_sizes"], RewardModelConfig(**saved["config"]))
    try:
        state = torch.load(directory / "model.pt", map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated/corrupt files
        raise ValueError(f"{directory / 'model.pt'}: corrupt or unreadable reward model ({err})") from err
    model.load_state_dict(state)
    return model.eval()
