"""A segment: an immutable block of catalogue items, stored grouped by code prefix.

Rows are sorted by the items' prefix key over the index levels, so the items under any prefix are
one contiguous slice at every level (faiss's inverted lists are the same structure): the item step
reads the kept prefixes' slices and nothing else. Per row a segment holds the item id, its dense row
(text vector plus any trained offset) and bias, its full SID and title; its lexical saturations by
term (postings, CSC: a query reads its own terms' columns only); and per level the largest
saturation of each term in each group (block-max), the bound planning uses without reading items.

Scores are model-agnostic: ``<query, row> + bias + sum_t weight_t * sat(row, t) + bonus(prefix)``,
with the model's scales already folded into ``query`` and ``weight``.

A large segment also holds a :class:`FirstPass`: its rows projected on their leading principal
directions (a quarter of the bytes). When a search keeps many of its rows, everything but the dense
term is computed exactly for all of them (cheap: no row read), the dense term approximately from the
projection, and only a shortlist of the best is rescored with the full rows: the item step then reads
a quarter of the bytes it would (the dense read is memory-bound: docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import scipy.sparse as sp
import torch

from onesearch_ray.decoding.trie import prefix_keys

MAX_KEY_SPACE = 1 << 40  # prefix keys are int64
MAX_SLOTS = 1 << 22  # a level with at most this many prefixes gets a direct key -> group table
FIRST_PASS_DIMS = 96  # Home Depot (384-d): recall@100 of the exact dense top in a 1,000 shortlist 0.995
FIRST_PASS_SAMPLE = 30_000  # rows the principal directions are fitted on
SHORTLIST = 1000  # at least this many kept rows (and 4 k) are rescored exactly after a first pass


@dataclass(frozen=True, eq=False)
class FirstPass:
    """A segment's dense rows projected on their leading principal directions (uncentred: the
    projected inner product ranks as the centred one does, up to a constant per query)."""

    basis: np.ndarray  # (dims, dim) float32
    rows: np.ndarray  # (n, dims) float32

    @classmethod
    def fit(cls, vectors: np.ndarray, seed: int = 0) -> FirstPass:
        dims = min(FIRST_PASS_DIMS, vectors.shape[1])
        rng = np.random.default_rng(seed)
        sample = vectors[
            np.sort(rng.choice(len(vectors), min(len(vectors), FIRST_PASS_SAMPLE), replace=False))
        ]
        sample = np.asarray(sample, np.float32)
        _, _, directions = np.linalg.svd(sample - sample.mean(0), full_matrices=False)
        basis = np.ascontiguousarray(directions[:dims], np.float32)
        rows = np.empty((len(vectors), dims), np.float32)
        for start in range(0, len(vectors), 100_000):  # in blocks: float16 rows convert a block at a time
            rows[start : start + 100_000] = np.asarray(vectors[start : start + 100_000], np.float32) @ basis.T
        return cls(basis, rows)

    @property
    def nbytes(self) -> int:
        return self.basis.nbytes + self.rows.nbytes


@dataclass(frozen=True, eq=False)
class LevelGroups:
    """One index level: group j holds rows ``bounds[j]:bounds[j + 1]`` and has key ``keys[j]``."""

    keys: np.ndarray  # (groups,) sorted unique prefix keys
    bounds: np.ndarray  # (groups + 1,)
    block_max: sp.csc_matrix  # (groups, terms) the largest saturation of each term in each group
    slots: np.ndarray | None  # (key space,) group index of each key, -1 where none; None if too large

    def find(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each key: its group index and whether this segment has that group."""
        if self.slots is not None:  # a direct lookup: planning asks this thousands of times a search
            inside = (keys >= 0) & (keys < len(self.slots))
            index = np.where(inside, self.slots[np.where(inside, keys, 0)], -1)
            present = index >= 0
            return np.where(present, index, 0), present
        index = np.searchsorted(self.keys, keys)
        present = index < len(self.keys)
        present[present] = self.keys[index[present]] == keys[present]
        return np.where(present, index, 0), present


@dataclass(frozen=True, eq=False)
class Segment:
    item_ids: np.ndarray  # (n,) int64
    vectors: np.ndarray  # (n, dim) float32 or float16: the item step's dense rows
    bias: np.ndarray  # (n,) float32
    codes: np.ndarray  # (n, sid positions) int32: full SIDs (the index levels first)
    titles: pa.StringArray  # (n,) compact: offsets and UTF-8 bytes, not fixed-width numpy strings
    postings: sp.csc_matrix  # (n, terms) BM25-saturated term frequencies by term, row indices sorted
    levels: tuple[LevelGroups, ...]
    level_sizes: tuple[int, ...]  # codebook size of each index level
    id_order: np.ndarray  # argsort of item_ids (lookup by id)
    first_pass: FirstPass | None = None  # large segments: the approximate dense term (module docstring)

    def __len__(self) -> int:
        return len(self.item_ids)

    @property
    def nbytes(self) -> int:
        """Memory held by the segment's arrays (titles as Arrow holds them)."""
        sparse = [self.postings, *(level.block_max for level in self.levels)]
        arrays = [self.item_ids, self.vectors, self.bias, self.codes, self.id_order]
        arrays += [a for level in self.levels for a in (level.keys, level.bounds)]
        arrays += [level.slots for level in self.levels if level.slots is not None]
        return (
            sum(a.nbytes for a in arrays)
            + sum(m.data.nbytes + m.indices.nbytes + m.indptr.nbytes for m in sparse)
            + self.titles.nbytes
            + (self.first_pass.nbytes if self.first_pass is not None else 0)
        )

    def rows_of(self, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each id: its row here and whether this segment holds it."""
        position = np.searchsorted(self.item_ids, item_ids, sorter=self.id_order)
        position = np.minimum(position, len(self.item_ids) - 1)
        rows = self.id_order[position] if len(self.item_ids) else position
        present = (self.item_ids[rows] == item_ids) if len(self.item_ids) else np.zeros(len(item_ids), bool)
        return rows, present

    # ---- planning: per-group facts, no item read ------------------------------------------
    def group_facts(
        self, level: int, keys: np.ndarray, terms: np.ndarray, weights: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per key at ``level``: how many items this segment holds under it, and an upper bound of
        their lexical score (block-max: each term's largest saturation in the group; -inf where the
        segment has no such group)."""
        groups = self.levels[level]
        index, present = groups.find(keys)
        sizes = np.where(present, groups.bounds[index + 1] - groups.bounds[index], 0)
        per_group = np.zeros(len(groups.keys), dtype=np.float32)
        block_max = groups.block_max
        for term, weight in zip(terms.tolist(), weights.tolist(), strict=True):
            if term < block_max.shape[1] and weight > 0:  # read the term's column in place
                first, last = block_max.indptr[term], block_max.indptr[term + 1]
                per_group[block_max.indices[first:last]] += weight * block_max.data[first:last]
        return sizes, np.where(present, per_group[index], -np.inf).astype(np.float32)

    # ---- the item step: the kept groups' rows only ----------------------------------------
    def candidates(
        self,
        level: int,
        keys: np.ndarray,
        bonus: np.ndarray,
        query: np.ndarray,
        terms: np.ndarray,
        weights: np.ndarray,
        dense: np.ndarray | None = None,
        k: int = 0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(rows, scores) of the items under ``keys`` (at index level ``level``); ``bonus`` per key.
        ``dense``: ``<query, row>`` for every row when a batch product computed it already. With a
        first pass and more kept rows than the shortlist (``SHORTLIST``, at least 4 ``k``), only the
        shortlist is returned, each with its exact score."""
        groups = self.levels[level]
        index, present = groups.find(keys)
        starts, ends = groups.bounds[index[present]], groups.bounds[index[present] + 1]
        bonus = bonus[present]
        order = np.argsort(starts, kind="stable")
        starts, ends, bonus = starts[order], ends[order], bonus[order]
        lengths = ends - starts
        offsets = np.cumsum(lengths) - lengths
        rows = _ranges(starts, ends)
        scores = np.repeat(bonus.astype(np.float32), lengths) + self.bias[rows]
        self._add_lexical(scores, starts, ends, offsets, terms, weights)
        if dense is not None:
            return rows, scores + dense[rows]
        shortlist = max(SHORTLIST, 4 * k)
        if self.first_pass is None or len(rows) <= shortlist:
            return rows, scores + _dense(self.vectors, starts, ends, offsets, query)
        approximate = scores + _dense(
            self.first_pass.rows, starts, ends, offsets, self.first_pass.basis @ query
        )
        kept = np.sort(np.argpartition(-approximate, shortlist)[:shortlist])
        return rows[kept], scores[kept] + _gathered_dense(self.vectors, rows[kept], query)

    def _add_lexical(self, scores, starts, ends, offsets, terms, weights) -> None:
        """Adds each term's contribution from its postings inside the given row ranges."""
        postings = self.postings
        for term, weight in zip(terms.tolist(), weights.tolist(), strict=True):
            if term >= postings.shape[1] or weight == 0:
                continue
            first, last = postings.indptr[term], postings.indptr[term + 1]
            rows = postings.indices[first:last]
            lo, hi = np.searchsorted(rows, starts), np.searchsorted(rows, ends)
            which = np.repeat(np.arange(len(starts)), hi - lo)
            hits = _ranges(lo, hi)
            if len(hits):
                local = rows[hits] - starts[which] + offsets[which]
                scores[local] += weight * postings.data[first:last][hits]


def build_segment(
    item_ids: np.ndarray,
    vectors: np.ndarray,
    bias: np.ndarray,
    codes: np.ndarray,
    titles: Sequence[str] | pa.StringArray,
    saturation: sp.csr_matrix,
    level_sizes: tuple[int, ...],
    first_pass_rows: int = 0,
) -> Segment:
    """A segment of the given items (any order: rows are sorted here by their index-level prefix);
    with at least ``first_pass_rows`` items (> 0) it gets a :class:`FirstPass`."""
    item_ids = np.asarray(item_ids, dtype=np.int64)
    codes = np.asarray(codes, dtype=np.int32).reshape(len(item_ids), -1)
    n = len(item_ids)
    if not len(vectors) == len(bias) == len(titles) == saturation.shape[0] == n:
        raise ValueError("segment: one vector, bias, code row, title and lexical row per item")
    if codes.shape[1] < len(level_sizes):
        raise ValueError(f"segment: codes of {codes.shape[1]} positions for {len(level_sizes)} index levels")
    if float(np.prod(level_sizes, dtype=np.float64)) > MAX_KEY_SPACE:
        raise ValueError(f"index levels {level_sizes}: too many prefixes for 64-bit keys")
    keys = [prefix_keys(codes[:, : level + 1], level_sizes) for level in range(len(level_sizes))]
    order = np.argsort(keys[-1], kind="stable")
    saturation = sp.csr_matrix(saturation, dtype=np.float32)[order]
    postings = saturation.tocsc()
    postings.sort_indices()
    spaces = np.cumprod(np.asarray(level_sizes, dtype=np.float64))
    levels = tuple(
        _level_groups(level_keys[order], saturation, space)
        for level_keys, space in zip(keys, spaces, strict=True)
    )
    sorted_ids = item_ids[order]
    title_array = titles if isinstance(titles, pa.Array) else pa.array(list(titles), pa.string())
    vectors = np.ascontiguousarray(np.asarray(vectors)[order])
    first_pass = None
    if 0 < first_pass_rows <= n and vectors.shape[1] > 0:
        first_pass = FirstPass.fit(vectors)
    return Segment(
        sorted_ids,
        vectors,
        np.asarray(bias, dtype=np.float32)[order],
        codes[order],
        title_array.take(pa.array(order)),
        postings,
        levels,
        tuple(int(s) for s in level_sizes),
        np.argsort(sorted_ids, kind="stable"),
        first_pass,
    )


def merge_segments(segments: Sequence[Segment], first_pass_rows: int = 0) -> Segment:
    """One segment holding the items of ``segments`` (cost in proportion to their size)."""
    width = max(s.postings.shape[1] for s in segments)
    return build_segment(
        np.concatenate([s.item_ids for s in segments]),
        np.concatenate([s.vectors for s in segments]),
        np.concatenate([s.bias for s in segments]),
        np.concatenate([s.codes for s in segments]),
        pa.concat_arrays([s.titles for s in segments]),
        sp.vstack([_widen(s.postings.tocsr(), width) for s in segments], format="csr"),
        segments[0].level_sizes,
        first_pass_rows,
    )


def _level_groups(keys: np.ndarray, saturation: sp.csr_matrix, key_space: float) -> LevelGroups:
    unique, starts = np.unique(keys, return_index=True)
    bounds = np.append(starts, len(keys)).astype(np.int64)
    coo = saturation.tocoo()
    group_of_row = np.repeat(np.arange(len(unique)), np.diff(bounds))
    cells = group_of_row[coo.row].astype(np.int64) * saturation.shape[1] + coo.col
    order = np.argsort(cells, kind="stable")
    cells, values = cells[order], coo.data[order]
    first = np.flatnonzero(np.r_[True, cells[1:] != cells[:-1]]) if len(cells) else np.zeros(0, np.int64)
    maxima = np.maximum.reduceat(values, first) if len(first) else values
    block_max = sp.csc_matrix(
        (maxima, (cells[first] // saturation.shape[1], cells[first] % saturation.shape[1])),
        shape=(len(unique), saturation.shape[1]),
        dtype=np.float32,
    )
    slots = None
    if key_space <= MAX_SLOTS:
        slots = np.full(int(key_space), -1, dtype=np.int32)
        slots[unique] = np.arange(len(unique), dtype=np.int32)
    return LevelGroups(unique, bounds, block_max, slots)


def _widen(matrix: sp.csr_matrix, width: int) -> sp.csr_matrix:
    return sp.csr_matrix((matrix.data, matrix.indices, matrix.indptr), shape=(matrix.shape[0], width))


def _ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """The concatenation of ``arange(start, end)`` for each pair, without a Python loop."""
    lengths = np.maximum(ends - starts, 0)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    shift = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
    return np.arange(total, dtype=np.int64) + shift


def _dense(table: np.ndarray, starts, ends, offsets, query: np.ndarray) -> np.ndarray:
    """``<query, row>`` for the rows of the given ranges, one product per run of adjacent ranges
    (contiguous reads, no gather). float32 rows go through numpy (BLAS); float16 rows through torch,
    whose matrix-vector product reads them natively (numpy converts float16 ~10x slower)."""
    out = np.empty(int((ends - starts).sum()), dtype=np.float32)
    if table.dtype == np.float32:
        for start, end, offset in _contiguous(starts, ends, offsets):
            out[offset : offset + end - start] = table[start:end] @ query
        return out
    rows = torch.from_numpy(table)
    vector = torch.from_numpy(np.asarray(query, np.float32)).to(rows.dtype)
    for start, end, offset in _contiguous(starts, ends, offsets):
        out[offset : offset + end - start] = (rows[start:end] @ vector).float().numpy()
    return out


def _gathered_dense(table: np.ndarray, rows: np.ndarray, query: np.ndarray) -> np.ndarray:
    """``<query, row>`` for a short list of (sorted) rows."""
    if table.dtype == np.float32:
        return table[rows] @ query
    picked = torch.from_numpy(table)[torch.from_numpy(rows)]
    return (picked @ torch.from_numpy(np.asarray(query, np.float32)).to(picked.dtype)).float().numpy()


def _contiguous(starts: np.ndarray, ends: np.ndarray, offsets: np.ndarray):
    """Adjacent row ranges joined (fewer, longer reads): yields (start, end, offset)."""
    if not len(starts):
        return
    join = np.flatnonzero(starts[1:] != ends[:-1]) + 1
    firsts = np.r_[0, join]
    lasts = np.r_[join, len(starts)] - 1
    yield from zip(starts[firsts].tolist(), ends[lasts].tolist(), offsets[firsts].tolist(), strict=True)
