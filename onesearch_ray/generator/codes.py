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
