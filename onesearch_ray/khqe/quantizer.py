"""RQ-Kmeans + OPQ: the hierarchical quantizer behind semantic IDs (KHQE's "HQ").

Residual k-means builds a coarse-to-fine hierarchy (large codebooks first). Only the LAST residual
level uses balanced k-means: balancing earlier levels flattens the hierarchy (paper, section 3.1).
OPQ then rotates the final residual and product-quantizes it into ``M`` sub-codes, which is what
pushes most items to a SID of their own. faiss does the clustering; encoding is exact nearest-centroid.
"""

from __future__ import annotations

import logging

import faiss
import numpy as np

from onesearch_ray.khqe.config import QuantizerConfig
from onesearch_ray.khqe.layout import CodebookLayout

log = logging.getLogger(__name__)


class ResidualQuantizer:
    """Fitted codebooks: RQ centroids per level, optional OPQ rotation + PQ centroids."""

    def __init__(
        self,
        layout: CodebookLayout,
        rq_centroids: list[np.ndarray],
        opq_rotation: np.ndarray | None = None,
        opq_centroids: np.ndarray | None = None,
    ) -> None:
        self.layout = layout
        self.rq_centroids = [np.ascontiguousarray(c, dtype=np.float32) for c in rq_centroids]
        self.opq_rotation = None if opq_rotation is None else np.ascontiguousarray(opq_rotation, np.float32)
        self.opq_centroids = (
            None if opq_centroids is None else np.ascontiguousarray(opq_centroids, np.float32)
        )
        self._check_shapes()

    @property
    def dim(self) -> int:
        return int(self.rq_centroids[0].shape[1])

    @classmethod
    def fit(cls, vectors: np.ndarray, config: QuantizerConfig | None = None) -> ResidualQuantizer:
        config = config or QuantizerConfig()
        data = _as_matrix(vectors)
        layout = CodebookLayout.parse(config.layout).scaled_to(len(data), config.min_points_per_code)
        if str(layout) != config.layout.replace(" ", "").lower():
            log.info("layout %s scaled to %s for %d vectors", config.layout, layout, len(data))
        residual = data.copy()
        centroids: list[np.ndarray] = []
        for level, k in enumerate(layout.rq_levels):
            last = level == len(layout.rq_levels) - 1
            seed = config.seed + level
            if last and config.balanced_last_level:
                level_centroids = balanced_kmeans(
                    residual, k, config.kmeans_niter, config.balanced_niter, seed
                )
            else:
                level_centroids = kmeans(residual, k, config.kmeans_niter, seed)
            codes = nearest(residual, level_centroids)
            residual -= level_centroids[codes]
            centroids.append(level_centroids)
        rotation = pq_centroids = None
        if layout.has_opq:
            rotation, pq_centroids = _fit_opq(residual, layout, config)
        return cls(layout, centroids, rotation, pq_centroids)

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        """Codes of shape (n, len(layout.level_sizes)), int32; each column indexes its own codebook."""
        residual = _as_matrix(vectors).copy()
        if residual.shape[1] != self.dim:
            raise ValueError(f"quantizer expects {self.dim}-d vectors, got {residual.shape[1]}-d")
        columns = []
        for level_centroids in self.rq_centroids:
            codes = nearest(residual, level_centroids)
            residual -= level_centroids[codes]
            columns.append(codes)
        if self.opq_rotation is not None:
            for sub_residual, sub_centroids in self._opq_subspaces(residual):
                columns.append(nearest(sub_residual, sub_centroids))
        return np.stack(columns, axis=1).astype(np.int32)

    def tail_alternatives(self, vectors: np.ndarray, codes: np.ndarray, width: int) -> np.ndarray:
        """Next-best codes for the finest SID positions, keeping the coarser prefix fixed.

        With OPQ the tail is the M sub-codes: the ``width`` nearest sub-centroids per subspace are
        combined and ordered by total distance. Without OPQ it is the last RQ level. Returns
        (n, n_alternatives, tail_length) codes, best first (the first is the nearest-code tail).
        """
        residual = _as_matrix(vectors).copy()
        n_rq = len(self.rq_centroids)
        fixed = n_rq if self.opq_rotation is not None else n_rq - 1
        for level in range(fixed):
            residual -= self.rq_centroids[level][codes[:, level]]
        if self.opq_rotation is None:
            _, ids = faiss.knn(residual, self.rq_centroids[-1], min(width, self.layout.rq_levels[-1]))
            return ids[:, :, None]
        n = len(residual)
        per_space = [
            faiss.knn(sub, cents, min(width, len(cents))) for sub, cents in self._opq_subspaces(residual)
        ]
        total, combos = per_space[0][0], per_space[0][1][:, :, None]
        for distances, ids in per_space[1:]:  # cross product of per-subspace choices
            k = ids.shape[1]
            total = (total[:, :, None] + distances[:, None, :]).reshape(n, -1)
            tiled = np.tile(ids[:, None, :], (1, combos.shape[1], 1)).reshape(n, -1, 1)
            combos = np.concatenate([np.repeat(combos, k, axis=1), tiled], axis=2)
        order = np.argsort(total, axis=1, kind="stable")
        return np.take_along_axis(combos, order[:, :, None], axis=1)

    @property
    def tail_length(self) -> int:
        return self.layout.opq_subspaces if self.opq_rotation is not None else 1

    def reconstruct(self, codes: np.ndarray) -> np.ndarray:
        codes = np.asarray(codes)
        n_rq = len(self.rq_centroids)
        out = np.zeros((len(codes), self.dim), dtype=np.float32)
        for level, level_centroids in enumerate(self.rq_centroids):
            out += level_centroids[codes[:, level]]
        if self.opq_rotation is not None:
            rotated = np.concatenate(
                [self.opq_centroids[m][codes[:, n_rq + m]] for m in range(self.layout.opq_subspaces)], axis=1
            )
            out += rotated @ self.opq_rotation  # rotation is orthonormal: inverse = transpose
        return out

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = {f"rq_level_{i}": c for i, c in enumerate(self.rq_centroids)}
        if self.opq_rotation is not None:
            arrays["opq_rotation"] = self.opq_rotation
            arrays["opq_centroids"] = self.opq_centroids
        return arrays

    @classmethod
    def from_arrays(cls, layout: CodebookLayout, arrays: dict[str, np.ndarray]) -> ResidualQuantizer:
        try:
            centroids = [arrays[f"rq_level_{i}"] for i in range(len(layout.rq_levels))]
            rotation = arrays.get("opq_rotation") if layout.has_opq else None
            pq_centroids = arrays.get("opq_centroids") if layout.has_opq else None
        except KeyError as err:
            raise ValueError(f"codebooks: missing array {err.args[0]!r} for layout {layout}") from err
        if layout.has_opq and (rotation is None or pq_centroids is None):
            raise ValueError(f"codebooks: layout {layout} needs opq_rotation and opq_centroids arrays")
        return cls(layout, centroids, rotation, pq_centroids)

    def _opq_subspaces(self, residual: np.ndarray):
        rotated = residual @ self.opq_rotation.T
        dsub = self.dim // self.layout.opq_subspaces
        for m in range(self.layout.opq_subspaces):
            yield np.ascontiguousarray(rotated[:, m * dsub : (m + 1) * dsub]), self.opq_centroids[m]

    def _check_shapes(self) -> None:
        expected = self.layout.rq_levels
        got = tuple(len(c) for c in self.rq_centroids)
        if got != expected or len({c.shape[1] for c in self.rq_centroids}) != 1:
            raise ValueError(f"codebooks: RQ centroid shapes {got} do not match layout {self.layout}")
        if self.layout.has_opq:
            m, k, d = self.layout.opq_subspaces, self.layout.opq_codes, self.dim
            if self.opq_rotation is None or self.opq_rotation.shape != (d, d):
                raise ValueError(f"codebooks: OPQ rotation must be {d}x{d}")
            if self.opq_centroids is None or self.opq_centroids.shape != (m, k, d // m):
                raise ValueError(f"codebooks: OPQ centroids must be {(m, k, d // m)}")


def kmeans(data: np.ndarray, k: int, niter: int, seed: int) -> np.ndarray:
    # min_points_per_centroid=1: small catalogues are expected (layouts are scaled), not warned about
    clustering = faiss.Kmeans(
        data.shape[1], k, niter=niter, seed=seed, max_points_per_centroid=256, min_points_per_centroid=1
    )
    clustering.train(data)
    return np.asarray(clustering.centroids, dtype=np.float32)


def nearest(data: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    _, ids = faiss.knn(np.ascontiguousarray(data), np.ascontiguousarray(centroids), 1)
    return ids[:, 0].astype(np.int64)


def balanced_kmeans(data: np.ndarray, k: int, niter: int, balanced_niter: int, seed: int) -> np.ndarray:
    """k-means whose assignments respect a capacity of ceil(n / k) points per centroid.

    Starts from plain k-means, then alternates capacity-constrained assignment and centroid update.
    """
    centroids = kmeans(data, k, niter, seed)
    for _ in range(balanced_niter):
        assignment = capacity_assign(data, centroids, capacity=-(-len(data) // k))
        sums = np.zeros_like(centroids)
        np.add.at(sums, assignment, data)
        counts = np.bincount(assignment, minlength=k)[:, None]
        centroids = np.where(counts > 0, sums / np.maximum(counts, 1), centroids).astype(np.float32)
    return centroids


def capacity_assign(
    data: np.ndarray, centroids: np.ndarray, capacity: int, candidates: int = 16
) -> np.ndarray:
    """Assign each point to its nearest centroid that still has room (vectorised deferred acceptance).

    Every round, each unassigned point proposes to its best not-yet-full candidate; each centroid
    keeps its closest proposers up to its remaining room. Points whose candidates all fill up fall
    back to a search among the centroids with room left.
    """
    n, k = len(data), len(centroids)
    width = min(candidates, k)
    distances, order = faiss.knn(np.ascontiguousarray(data), np.ascontiguousarray(centroids), width)
    assignment = np.full(n, -1, dtype=np.int64)
    room = np.full(k, capacity, dtype=np.int64)
    pointer = np.zeros(n, dtype=np.int64)
    while True:
        pending = np.flatnonzero((assignment < 0) & (pointer < width))
        if len(pending) == 0:
            break
        choice = order[pending, pointer[pending]]
        dist = distances[pending, pointer[pending]]
        ranked = np.lexsort((dist, choice))
        pending, choice = pending[ranked], choice[ranked]
        first_of_group = np.r_[0, np.flatnonzero(np.diff(choice)) + 1]
        position = np.arange(len(choice)) - np.repeat(
            first_of_group, np.diff(np.r_[first_of_group, len(choice)])
        )
        accepted = position < room[choice]
        assignment[pending[accepted]] = choice[accepted]
        np.subtract.at(room, choice[accepted], 1)
        pointer[pending[~accepted]] += 1
    leftover = np.flatnonzero(assignment < 0)
    for point in leftover:  # rare: only when all `width` nearest centroids are full
        open_codes = np.flatnonzero(room > 0)
        best = open_codes[np.argmin(((centroids[open_codes] - data[point]) ** 2).sum(axis=1))]
        assignment[point] = best
        room[best] -= 1
    return assignment


def _fit_opq(residual: np.ndarray, layout: CodebookLayout, config: QuantizerConfig):
    dim, m = residual.shape[1], layout.opq_subspaces
    if dim % m:
        raise ValueError(f"OPQ: dimension {dim} is not divisible by {m} sub-codebooks")
    opq = faiss.OPQMatrix(dim, m)
    opq.niter = config.opq_niter
    opq.verbose = False
    # OPQ's own default PQ (8 bits, what faiss trains the rotation with) warns on every iteration
    # when there are fewer than 39 points per centroid; small catalogues are expected here. Same
    # PQ, same rotation, with that threshold lowered (it only gates the warning).
    rotation_pq = faiss.ProductQuantizer(dim, m, 8)
    rotation_pq.cp.min_points_per_centroid = 1
    opq.pq = rotation_pq
    opq.train(residual)
    rotation = faiss.vector_to_array(opq.A).reshape(dim, dim).astype(np.float32)
    rotated = residual @ rotation.T
    dsub = dim // m
    centroids = np.stack(
        [
            kmeans(
                np.ascontiguousarray(rotated[:, i * dsub : (i + 1) * dsub]),
                layout.opq_codes,
                config.kmeans_niter,
                config.seed + 100 + i,
            )
            for i in range(m)
        ]
    )
    return rotation, centroids


def _as_matrix(vectors: np.ndarray) -> np.ndarray:
    data = np.ascontiguousarray(vectors, dtype=np.float32)
    if data.ndim != 2 or len(data) == 0:
        raise ValueError(f"quantizer needs a non-empty 2-d array of vectors, got shape {data.shape}")
    if not np.isfinite(data).all():
        raise ValueError("quantizer input contains NaN or infinite values")
    return data
