"""The SID prefix constraint: which code may come next after a partial SID.

A SID has P positions; position d has ``level_sizes[d]`` codes. For each depth the trie keeps the
sorted (prefix key, next code) pairs of the catalogue, where a prefix key is the prefix read as a
mixed-radix number. ``allowed_mask`` answers a whole batch of partial beams with a few numpy
calls (searchsorted + scatter), so it scales to wide beams. The trie is immutable and holds the
prefixes a model was trained on: items added later join existing SIDs (``catalogue``), so it
never changes while the model serves.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    pass


class SidTrie:
    def __init__(self, sids: Iterable[tuple[int, ...]] | np.ndarray, level_sizes: tuple[int, ...]):
        self.level_sizes = tuple(int(k) for k in level_sizes)
        if float(np.prod(self.level_sizes[:-1], dtype=np.float64)) >= 2**62:
            raise ValueError(f"SID layout {self.level_sizes} is too large for 64-bit prefix keys")
        codes = np.asarray(list(sids) if not isinstance(sids, np.ndarray) else sids, dtype=np.int64)
        codes = codes.reshape(-1, len(self.level_sizes))
        if len(codes) and ((codes < 0) | (codes >= np.asarray(self.level_sizes))).any():
            raise ValueError("SID trie: a code is outside its position's codebook")
        self.sids = np.unique(codes, axis=0) if len(codes) else codes
        self._prefix_keys: list[np.ndarray] = []
        self._next_codes: list[np.ndarray] = []
        for depth in range(len(self.level_sizes)):
            keys = self.prefix_keys(self.sids[:, :depth])
            pairs = np.unique(np.stack([keys, self.sids[:, depth]], axis=1), axis=0)
            self._prefix_keys.append(pairs[:, 0] if len(pairs) else np.zeros(0, np.int64))
            self._next_codes.append(pairs[:, 1] if len(pairs) else np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.sids)

    @property
    def depth(self) -> int:
        return len(self.level_sizes)

    def prefix_keys(self, prefixes: np.ndarray) -> np.ndarray:
        """Mixed-radix integer key of each row of ``prefixes`` (shape (n, depth))."""
        return prefix_keys(_as_2d(prefixes), self.level_sizes)

    def allowed_mask(self, prefixes: np.ndarray) -> np.ndarray:
        """Bool mask (n, level_sizes[depth]) of codes allowed after each prefix (all of one depth)."""
        prefixes = _as_2d(prefixes)
        depth = prefixes.shape[1]
        if depth >= self.depth:
            raise ValueError(f"a SID has {self.depth} positions; no code follows a full SID")
        keys = self.prefix_keys(prefixes)
        table_keys, table_codes = self._prefix_keys[depth], self._next_codes[depth]
        starts = np.searchsorted(table_keys, keys, side="left")
        lengths = np.searchsorted(table_keys, keys, side="right") - starts
        rows = np.repeat(np.arange(len(keys)), lengths)
        offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        mask = np.zeros((len(keys), self.level_sizes[depth]), dtype=bool)
        mask[rows, table_codes[np.repeat(starts, lengths) + offsets]] = True
        return mask

    def __contains__(self, sid: tuple[int, ...]) -> bool:
        sid = np.asarray(sid, dtype=np.int64).reshape(1, len(sid))
        if sid.shape[1] != self.depth or not 0 <= sid[0, -1] < self.level_sizes[-1]:
            return False
        return bool(self.allowed_mask(sid[:, :-1])[0, sid[0, -1]])


def prefix_keys(prefixes: np.ndarray, level_sizes: Sequence[int]) -> np.ndarray:
    """(n,) each row of ``prefixes`` (n, depth) read as a mixed-radix number in ``level_sizes``: the key
    the trie and the catalogue's groups (``catalogue.segment``) both use."""
    keys = np.zeros(len(prefixes), dtype=np.int64)
    for depth in range(prefixes.shape[1]):
        keys = keys * int(level_sizes[depth]) + prefixes[:, depth]
    return keys


def _as_2d(prefixes: np.ndarray) -> np.ndarray:
    prefixes = np.asarray(prefixes, dtype=np.int64)
    if prefixes.ndim != 2:
        raise ValueError(f"prefixes must be a 2-d array (batch, depth), got shape {prefixes.shape}")
    return prefixes
