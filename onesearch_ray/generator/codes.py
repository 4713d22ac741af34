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
from functools import cached_property

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

    def sample_under(self, codes: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
        """``count`` rows drawn uniformly (with replacement) from the items whose first-level code is
        one of ``codes``: a cost set by ``count``, not by the catalogue."""
        order, starts = self._by_first_code
        sizes = starts[codes + 1] - starts[codes]
        ends = np.cumsum(sizes)
        if not len(ends) or ends[-1] == 0:
            return np.zeros(0, np.int64)
        picks = rng.integers(0, ends[-1], count)
        which = np.searchsorted(ends, picks, side="right")
        return order[starts[codes][which] + picks - (ends - sizes)[which]]

    @cached_property
    def _by_first_code(self) -> tuple[np.ndarray, np.ndarray]:
        """Rows ordered by first-level code, and where each code's rows start in that order."""
        first = self.item_codes[:, 0]
        order = np.argsort(first, kind="stable")
        return order, np.searchsorted(first[order], np.arange(self.level_sizes[0] + 1))

    def trie(self) -> SidTrie:
        return SidTrie(self.item_codes, self.level_sizes)
