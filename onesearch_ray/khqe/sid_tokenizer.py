"""SemanticIdTokenizer: the item "ID card" as a first-class, versioned object.

It owns the fitted codebooks and the item -> SID table, turns codes into SID tokens, and places NEW
items with frozen codebooks (cold start).

SID tokens: one letter per RQ level (``<a_i><b_j><c_k>``), then the OPQ sub-codes share one
letter with the m-th sub-code offset by ``m * K`` so that sub-codebooks use disjoint tokens
(``<d_x><d_{K+y}>``), exactly as in the paper.

Collision resolution (initial fit only, on by default, ``collision_candidates``): an item whose SID
another item already holds moves to the nearest free tail code under the same prefix (see
``_resolve_collisions``), so near-duplicate products still get IDs of their own. Items can still
share a SID when every candidate tail is taken (the item step tells them apart).

Cold start (``add_items`` after the fit): the model has learnt to generate exactly the SIDs of the
fitted table, so a new item joins the EXISTING SID that describes it best (least reconstruction
error). A fresh SID (its raw code, or a free tail) would be one the model never generates. Saved
without pickle: JSON + ``.npz`` + parquet.
"""

from __future__ import annotations

import hashlib
import string
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from onesearch_ray.io import atomic_dir, file_sha256, read_json, write_json
from onesearch_ray.khqe.config import QuantizerConfig
from onesearch_ray.khqe.layout import CodebookLayout
from onesearch_ray.khqe.metrics import code_metrics
from onesearch_ray.khqe.quantizer import ResidualQuantizer

FORMAT_NAME = "onesearch-sid-tokenizer"
MANIFEST = "sid_tokenizer.json"  # in the tokenizer's directory, beside its arrays
FORMAT_VERSION = 1


@dataclass
class SidTable:
    """item_id -> codes, with the reconstruction error used as tie-break."""

    item_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    codes: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int32))
    errors: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))


class SemanticIdTokenizer:
    def __init__(
        self,
        quantizer: ResidualQuantizer,
        table: SidTable | None = None,
        metadata: dict | None = None,
        collision_candidates: int = 16,
    ) -> None:
        self.quantizer = quantizer
        self.collision_candidates = collision_candidates
        self.layout = quantizer.layout
        self.metadata = dict(metadata or {})
        self._table = table or SidTable(codes=np.zeros((0, len(self.layout.level_sizes)), np.int32))
        self._sids = np.zeros((0, len(self.layout.level_sizes)), np.int32)  # the distinct SIDs
        self._sid_search: tuple[np.ndarray, faiss.Index] | None = None  # built on the first cold add
        self._rebuild_index()

    # ---- fitting and encoding -------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        item_ids: Sequence[int] | np.ndarray,
        item_vectors: np.ndarray,
        query_vectors: np.ndarray | None = None,
        config: QuantizerConfig | None = None,
        metadata: dict | None = None,
    ) -> SemanticIdTokenizer:
        """Fit codebooks on items and queries together (as the paper does), then encode the items."""
        config = config or QuantizerConfig()
        training = item_vectors if query_vectors is None else np.concatenate([item_vectors, query_vectors])
        quantizer = ResidualQuantizer.fit(training, config)
        meta = {"quantizer": asdict(config), **(metadata or {})}
        tokenizer = cls(quantizer, metadata=meta, collision_candidates=config.collision_candidates)
        ids, vectors = tokenizer._check_new(item_ids, item_vectors, replace=False)
        codes = tokenizer.encode(vectors)
        if tokenizer.collision_candidates > 0:
            codes = tokenizer._resolve_collisions(vectors, codes, taken=set())
        tokenizer._insert(ids, vectors, codes)
        return tokenizer

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        """Codes for any vectors (items or queries) with the frozen codebooks."""
        return self.quantizer.encode(vectors)

    def add_items(
        self, item_ids: Sequence[int] | np.ndarray, vectors: np.ndarray, replace: bool = False
    ) -> np.ndarray:
        """Cold start: put new items on the existing SIDs that describe them best; returns their codes.

        The codebooks stay frozen and no SID is created, so every new item is reachable through a
        SID the model was trained to generate (module docstring). ``replace`` moves items that
        already have a SID.
        """
        ids, vectors = self._check_new(item_ids, vectors, replace)
        codes = self.nearest_existing_sids(vectors)
        self._insert(ids, vectors, codes)
        return codes

    def nearest_existing_sids(self, vectors: np.ndarray) -> np.ndarray:
        """For each vector, the codes of the table's SID whose reconstruction is nearest (exact L2)."""
        if not len(self._sids):
            raise ValueError("no SID in the table yet: fit the tokenizer on the catalogue first")
        if self._sid_search is None:  # the reconstructions of every SID, kept while the SID set holds
            sids = self._sids
            index = faiss.IndexFlatL2(self.quantizer.dim)
            index.add(np.ascontiguousarray(self.quantizer.reconstruct(sids), dtype=np.float32))
            self._sid_search = (sids, index)
        sids, index = self._sid_search
        _, rows = index.search(np.ascontiguousarray(vectors, dtype=np.float32), 1)
        return sids[rows[:, 0]]

    def _check_new(
        self, item_ids: Sequence[int] | np.ndarray, vectors: np.ndarray, replace: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        ids = np.asarray(item_ids, dtype=np.int64)
        if len(ids) != len(vectors):
            raise ValueError(f"add_items: {len(ids)} item ids but {len(vectors)} vectors")
        if len(np.unique(ids)) != len(ids):
            raise ValueError("add_items: duplicate item ids in the batch")
        existing = np.isin(ids, self._table.item_ids)
        if existing.any() and not replace:
            raise ValueError(f"add_items: item {int(ids[existing][0])} already has a SID (pass replace=True)")
        vectors = np.asarray(vectors, np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.quantizer.dim:
            raise ValueError(f"add_items: vectors of shape {vectors.shape}, not (n, {self.quantizer.dim})")
        return ids, vectors

    def _insert(self, ids: np.ndarray, vectors: np.ndarray, codes: np.ndarray) -> None:
        """Add (or move) items to ``codes``; their tie-break error is measured against those codes."""
        keep = ~np.isin(self._table.item_ids, ids)
        errors = ((self.quantizer.reconstruct(codes) - vectors) ** 2).sum(axis=1)
        self._table = SidTable(
            item_ids=np.concatenate([self._table.item_ids[keep], ids]),
            codes=np.concatenate([self._table.codes[keep], codes]).astype(np.int32),
            errors=np.concatenate([self._table.errors[keep], errors.astype(np.float32)]),
        )
        self._rebuild_index()

    def _resolve_collisions(self, vectors: np.ndarray, codes: np.ndarray, taken: set) -> np.ndarray:
        """Give colliding items the nearest FREE tail codes under their own prefix.

        Items are visited best-described first; one whose SID is taken moves to the next-nearest
        tail (OPQ sub-codes, or the last RQ level) that no item holds yet. The prefix, which carries
        the semantics, never changes. Only when all candidate tails are taken do items share a SID.
        """
        errors = ((self.quantizer.reconstruct(codes) - vectors) ** 2).sum(axis=1)
        codes = codes.copy()
        colliders = []
        for row in np.argsort(errors, kind="stable"):
            sid = tuple(codes[row].tolist())
            if sid in taken:
                colliders.append(row)
            else:
                taken.add(sid)
        if not colliders:
            return codes
        colliders = np.asarray(colliders)
        tails = self.quantizer.tail_alternatives(
            vectors[colliders], codes[colliders], self.collision_candidates
        )
        prefix_length = self.sid_length - self.quantizer.tail_length
        for row, alternatives in zip(colliders, tails, strict=True):
            prefix = tuple(codes[row, :prefix_length].tolist())
            for tail in alternatives.tolist():
                if prefix + tuple(tail) not in taken:
                    codes[row, prefix_length:] = tail
                    break
            taken.add(tuple(codes[row].tolist()))
        return codes

    @property
    def codebooks_digest(self) -> str:
        """SHA-256 of the frozen codebooks: codes made under other codebooks do not mean the same."""
        digest = hashlib.sha256()
        for name, array in sorted(self.quantizer.to_arrays().items()):
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()

    # ---- SID <-> tokens <-> items ---------------------------------------------------------
    @property
    def n_items(self) -> int:
        return len(self._table.item_ids)

    @property
    def sid_length(self) -> int:
        return len(self.layout.level_sizes)

    def item_codes(self, item_ids: Sequence[int] | None = None) -> np.ndarray:
        if item_ids is None:
            return self._table.codes
        return self._table.codes[[self._row_of(int(i)) for i in item_ids]]

    def has_item(self, item_id: int) -> bool:
        return int(item_id) in self._row_by_item

    def codes_to_tokens(self, codes: Sequence[int]) -> list[str]:
        if len(codes) != self.sid_length:
            raise ValueError(f"a SID has {self.sid_length} codes, got {len(codes)}")
        tokens = []
        for position, code in enumerate(codes):
            size = self.layout.level_sizes[position]
            if not 0 <= int(code) < size:
                raise ValueError(f"SID position {position}: code {code} outside [0, {size})")
            letter, offset = self._position_letter_offset(position)
            tokens.append(f"<{letter}_{offset + int(code)}>")
        return tokens

    def sid_string(self, codes: Sequence[int]) -> str:
        return "".join(self.codes_to_tokens(codes))

    def metrics(self) -> dict:
        return code_metrics(self._table.codes, self.layout.level_sizes)

    # ---- persistence ----------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        with atomic_dir(directory) as tmp:
            np.savez(tmp / "codebooks.npz", **self.quantizer.to_arrays())
            table = pa.table(
                {
                    "item_id": pa.array(self._table.item_ids, pa.int64()),
                    "codes": pa.array(self._table.codes.tolist(), pa.list_(pa.int32())),
                    "error": pa.array(self._table.errors, pa.float32()),
                }
            )
            pq.write_table(table, tmp / "items.parquet")
            write_json(
                tmp / MANIFEST,
                {
                    "format": FORMAT_NAME,
                    "version": FORMAT_VERSION,
                    "layout": str(self.layout),
                    "dim": self.quantizer.dim,
                    "n_items": self.n_items,
                    "metadata": self.metadata,
                    "sha256": {name: file_sha256(tmp / name) for name in ("codebooks.npz", "items.parquet")},
                },
            )
        return directory

    @staticmethod
    def is_saved(directory: str | Path) -> bool:
        """Whether ``directory`` holds a saved tokenizer (what :meth:`load` reads first)."""
        return (Path(directory) / MANIFEST).is_file()

    @classmethod
    def load(cls, directory: str | Path) -> SemanticIdTokenizer:
        directory = Path(directory)
        manifest_path = directory / MANIFEST
        if not manifest_path.exists():
            raise FileNotFoundError(f"{manifest_path}: no SID tokenizer here (run `onesearch encode` first)")
        manifest = read_json(manifest_path)
        if manifest.get("format") != FORMAT_NAME or manifest.get("version") != FORMAT_VERSION:
            raise ValueError(
                f"{manifest_path}: format {manifest.get('format')!r} v{manifest.get('version')!r} "
                f"is not {FORMAT_NAME} v{FORMAT_VERSION}"
            )
        for name, digest in manifest.get("sha256", {}).items():
            if not (directory / name).exists() or file_sha256(directory / name) != digest:
                raise ValueError(f"{directory / name}: missing or corrupt (checksum mismatch)")
        layout = CodebookLayout.parse(manifest["layout"])
        with np.load(directory / "codebooks.npz", allow_pickle=False) as arrays:
            quantizer = ResidualQuantizer.from_arrays(layout, dict(arrays))
        table = pq.read_table(directory / "items.parquet")
        codes = np.asarray(table.column("codes").to_pylist(), np.int32).reshape(
            len(table), len(layout.level_sizes)
        )
        sid_table = SidTable(
            table.column("item_id").to_numpy().astype(np.int64), codes, table.column("error").to_numpy()
        )
        metadata = manifest.get("metadata") or {}
        candidates = int(metadata.get("quantizer", {}).get("collision_candidates", 0))
        return cls(quantizer, sid_table, metadata, collision_candidates=candidates)

    # ---- internals ------------------------------------------------------------------------
    def _position_letter_offset(self, position: int) -> tuple[str, int]:
        n_rq = len(self.layout.rq_levels)
        if position < n_rq:
            return string.ascii_lowercase[position], 0
        return string.ascii_lowercase[n_rq], (position - n_rq) * self.layout.opq_codes

    def _row_of(self, item_id: int) -> int:
        try:
            return self._row_by_item[item_id]
        except KeyError:
            raise KeyError(f"item {item_id} has no SID") from None

    def _rebuild_index(self) -> None:
        table = self._table
        self._row_by_item = {int(i): row for row, i in enumerate(table.item_ids)}
        sids = np.unique(table.codes, axis=0).astype(np.int32)
        if not np.array_equal(sids, self._sids):
            self._sid_search = None
        self._sids = sids
