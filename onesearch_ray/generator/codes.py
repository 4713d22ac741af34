"""The KHQE code levels the generator decodes, and the geometry that scores them untrained.

The generator emits the first ``levels`` codes of each item's KHQE SID (the coarse levels), then
ranks the items under the kept prefixes. Each code gets a *residual centroid* in the text
encoder's space: level 1's centroid is the mean vector of its items, level l's the mean of its
items' residuals after the levels above. ``<query, centroid>`` summed over a prefix's levels is then
the untrained prefix score (the probe's "beam over the sum of <query vector, centroid>"), and the
model learns corrections on top. The prefix constraint is the project's ``SidTrie``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onesearch_ray.decoding.trie import SidTrie


@dataclass
class CodeTree:
    level_sizes: tuple[int, ...]
    item_codes: np.ndarray  # (items, levels) int64, catalogue row order
    centroids: list[np.ndarray]  # per level: (level_size, dim) residual centroids

    @classmethod
    def build(
        cls, item_codes: np.ndarray, level_sizes: tuple[int, ...], item_vectors: np.ndarray
    ) -> CodeTree:
        codes = np.asarray(item_codes, dtype=np.int64)
        if codes.ndim != 2 or codes.shape[1] != len(level_sizes):
            raise ValueError(f"item codes of shape {codes.shape} for {len(level_sizes)} levels")
        residual = np.asarray(item_vectors, dtype=np.float32).copy()
        centroids = []
        for level, size in enumerate(level_sizes):
            sums = np.zeros((size, residual.shape[1]), dtype=np.float64)
            np.add.at(sums, codes[:, level], residual)
            counts = np.bincount(codes[:, level], minlength=size)[:, None]
            centroid = (sums / np.maximum(counts, 1)).astype(np.float32)
            residual -= centroid[codes[:, level]]
            centroids.append(centroid)
        return cls(tuple(int(s) for s in level_sizes), codes, centroids)

    @property
    def levels(self) -> int:
        return len(self.level_sizes)

    def trie(self) -> SidTrie:
        return SidTrie(self.item_codes, self.level_sizes)

    def prefix_keys(self, level: int) -> np.ndarray:
        """(items,) the mixed-radix key of each item's prefix of ``level + 1`` codes."""
        keys = np.zeros(len(self.item_codes), dtype=np.int64)
        for depth in range(level + 1):
            keys = keys * self.level_sizes[depth] + self.item_codes[:, depth]
        return keys

    def groups(self, level: int) -> PrefixGroups:
        """Items grouped by their prefix of ``level + 1`` codes (cached until items are added)."""
        cache = self.__dict__.setdefault("_groups", {})
        if level not in cache:
            keys = self.prefix_keys(level)
            order = np.argsort(keys, kind="stable")
            unique, starts = np.unique(keys[order], return_index=True)
            cache[level] = PrefixGroups(unique, order, np.append(starts, len(order)))
        return cache[level]

    def add_items(self, codes: np.ndarray) -> None:
        """New items under existing codes (frozen codebooks): centroids do not move."""
        self.item_codes = np.concatenate(
            [self.item_codes, np.asarray(codes, np.int64).reshape(-1, self.levels)]
        )
        self.__dict__.pop("_groups", None)


@dataclass
class PrefixGroups:
    """The catalogue rows sorted by prefix key: group j holds ``order[bounds[j]:bounds[j + 1]]``."""

    keys: np.ndarray  # sorted unique prefix keys
    order: np.ndarray  # catalogue rows sorted by key
    bounds: np.ndarray  # (groups + 1,)

    def group_max(self, item_scores: np.ndarray) -> np.ndarray:
        """(groups,) the best item score in each group."""
        return np.maximum.reduceat(item_scores[self.order], self.bounds[:-1])

    def index_of(self, keys: np.ndarray) -> np.ndarray:
        """Group index of each key (keys must exist)."""
        return np.searchsorted(self.keys, keys)

    def rows_of(self, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The catalogue rows of ``groups`` and, for each row, its position in ``groups``."""
        lengths = self.bounds[groups + 1] - self.bounds[groups]
        starts = np.repeat(self.bounds[groups] - np.cumsum(lengths) + lengths, lengths)
        positions = np.arange(lengths.sum()) + starts
        return self.order[positions], np.repeat(np.arange(len(groups)), lengths)
