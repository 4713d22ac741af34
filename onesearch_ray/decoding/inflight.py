"""SID beam search carried out inside an inference engine's batch, one SID position per engine step.

Each live beam of a search is one engine request whose tokens are the search prompt plus the
beam's SID tokens so far (its *path*). At every engine step the rows of all of a search's beams come
out of the model together; :meth:`SearchState.advance_from_logits` scores them (full-vocabulary
log-softmax, trie-masked, not renormalised: the rule of ``onesearch_ray.decoding.beam``), keeps the
best ``beam`` extensions with :func:`select_beams` (the reference engine's ranking and tie-break)
and answers with the token each beam's request must emit next:

* a beam whose best selected child is ``c`` continues in its own request, which emits ``c``;
* a second, third... selected child of the same beam is a *fork*: a new request (prompt + its
  path), queued in :attr:`SearchState.pending` for the driver to add before the next step (prefix
  caching makes its prompt blocks free);
* a beam with no selected child emits the stop token, which ends its request.

So the engine computes one new token per surviving beam per step instead of re-running a request
per beam per position, and requests are only created where beams fork. :class:`BeamRows` is the
engine-side half: it knows which batch row holds which search's request, reads each row's path off
the request's tokens (paths are unique within a search) and forces each row's token by masking
every other logit. It finds searches in :data:`LIVE_SEARCHES`, so the driver and the engine must
share one process (vLLM: the in-process engine core).

Everything here is plain numpy/torch, testable without an engine.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from onesearch_ray.decoding.beam import SidHit, select_beams
from onesearch_ray.decoding.trie import SidTrie

LIVE_SEARCHES: dict[int, SearchState] = {}  # search id -> state, registered by the driver
_search_ids = itertools.count()


@dataclass
class SearchState:
    """One prompt's beam search; each live beam is the engine request whose SID tokens are its path."""

    prompt_ids: list[int]
    beam: int
    trie: SidTrie
    position_token_ids: Sequence[np.ndarray]
    search_id: int = field(default_factory=lambda: next(_search_ids))
    codes: np.ndarray = field(default_factory=lambda: np.zeros((1, 0), np.int64))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(1))
    pending: list[list[int]] = field(default_factory=list)  # prompts of requests to add before the next step
    requests: int = 0  # requests added to the engine so far
    done: bool = False
    error: str | None = None

    def __post_init__(self) -> None:
        self.done = self.trie.depth == 0
        self._paths: list[tuple[int, ...]] = [()]  # SID token path of each beam, in beam order
        if not self.done:
            self.pending.append(list(self.prompt_ids))

    @property
    def depth(self) -> int:
        return self.codes.shape[1]

    def hits(self) -> list[SidHit]:
        if self.error:
            raise RuntimeError(self.error)
        rows = zip(self.codes.tolist(), self.scores.tolist(), strict=True)
        return [SidHit(tuple(codes), score) for codes, score in rows]

    def fail(self, reason: str) -> None:
        self.error, self.done, self.pending = reason, True, []

    def advance(self, sid_logprobs: np.ndarray) -> dict[tuple[int, ...], int]:
        """One beam step. ``sid_logprobs`` (beams, codes of this position), rows in beam order.

        Returns the token each continuing beam's request emits next, keyed by the beam's path before
        this step; requests of beams left out have no child left.
        """
        depth, paths = self.depth, self._paths
        mask = self.trie.allowed_mask(self.codes)
        parents, self.codes, self.scores = select_beams(
            self.scores, self.codes, sid_logprobs, mask, self.beam
        )
        self.done = len(self.codes) == 0 or self.depth == self.trie.depth
        tokens = self.position_token_ids[depth][self.codes[:, -1]].tolist() if len(self.codes) else []
        next_tokens: dict[tuple[int, ...], int] = {}
        self._paths = []
        for parent, token in zip(parents.tolist(), tokens, strict=True):
            path = paths[parent]
            if path in next_tokens:  # another child of the same beam: a new request
                if not self.done:
                    self.pending.append([*self.prompt_ids, *path, token])
            else:
                next_tokens[path] = token
            self._paths.append((*path, token))
        return next_tokens

    def advance_from_logits(
        self, row_of_path: dict[tuple[int, ...], int], logits: torch.Tensor
    ) -> dict[tuple[int, ...], int]:
        """:meth:`advance` from the engine's logits; every live beam must have its row in this batch."""
        if self.done:
            return {}
        rows = [row_of_path.get(path) for path in self._paths]
        if None in rows:
            missing = rows.count(None)
            self.fail(
                f"search {self.search_id}: {missing} of its {len(rows)} beams were not scheduled in the "
                "same engine step (engine out of batch capacity or KV cache)"
            )
            return {}
        index = torch.as_tensor(rows, device=logits.device)
        columns = torch.as_tensor(self.position_token_ids[self.depth], device=logits.device)
        logprobs = torch.log_softmax(logits[index].float(), dim=-1)[:, columns]
        return self.advance(logprobs.cpu().numpy())


@dataclass(frozen=True)
class BeamRow:
    """An engine request of a search: its SID path is ``path_prefix`` + the tokens it generated."""

    search_id: int
    path_prefix: tuple[int, ...]
    output_ids: list[int]  # the engine's live list of the request's generated tokens
    stop_token_id: int

    def path(self) -> tuple[int, ...]:
        return (*self.path_prefix, *self.output_ids)


class BeamRows:
    """Which engine batch row holds which beam; forces every such row's next token."""

    def __init__(self, searches: dict[int, SearchState] | None = None) -> None:
        self.searches = LIVE_SEARCHES if searches is None else searches
        self.rows: dict[int, BeamRow] = {}

    def update(
        self,
        removed: Iterable[int],
        added: Iterable[tuple[int, BeamRow | None]],
        moved: Iterable[tuple[int, int, bool]],
    ) -> None:
        """Apply a batch change in the engine's order: removed, added, then moved (``swap`` or one-way)."""
        for index in removed:
            self.rows.pop(index, None)
        for index, row in added:
            if row is None:
                self.rows.pop(index, None)
            else:
                self.rows[index] = row
        for first, second, swap in moved:
            a, b = self.rows.pop(first, None), self.rows.pop(second, None)
            if a is not None:
                self.rows[second] = a
            if swap and b is not None:
                self.rows[first] = b

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """Advance every search with rows in this batch; each beam row keeps only its next token."""
        if not self.rows:
            return logits
        by_search: dict[int, dict[tuple[int, ...], int]] = {}
        for index, row in self.rows.items():
            by_search.setdefault(row.search_id, {})[row.path()] = index
        batch_rows, tokens = [], []
        for search_id, row_of_path in by_search.items():
            search = self.searches.get(search_id)
            next_tokens = search.advance_from_logits(row_of_path, logits) if search is not None else {}
            for path, index in row_of_path.items():
                batch_rows.append(index)
                tokens.append(next_tokens.get(path, self.rows[index].stop_token_id))
        batch_index = torch.as_tensor(batch_rows, device=logits.device)
        logits[batch_index] = float("-inf")
        logits[batch_index, torch.as_tensor(tokens, device=logits.device)] = 0.0
        return logits
