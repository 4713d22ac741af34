"""Track directories: the ``Track``, its checks, the parquet formats' loaders and our own
("onesearch") format's writer. ``formats.load_track`` tells the formats apart and loads any of them.

Formats (auto-detected; ``format=`` forces one):

- ``homedepot``: products.parquet, queries.parquet, judgments.parquet (search, graded relevance)
- ``amazon18``: items.parquet, sequences.parquet (personalisation; reference_sid goes to ``extras``)
- ``onesearch``: items, queries, judgments, interactions, users (+ optional sequences) .parquet,
  and a ``track.json`` manifest when written by :func:`write_track`; a synthetic track's
  ``synthetic_world.json`` (its query intents) goes to ``extras["query_intent"]``, so the rewards
  know the relevance of every item, not only of the judged ones.
- ``kuaisearch``: items, users, sessions (+ optional impressions, relevance) .jsonl, the KuaiSearch
  dataset's layout (:mod:`onesearch_ray.data.kuaisearch`, which converts them into these tables).

Every table is cast to its schema and checked (ids unique, references resolve); any problem is a
:class:`DataError` naming the file, row and field.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from onesearch_ray.data.schemas import (
    INTERACTION_SCHEMA,
    ITEM_SCHEMA,
    JUDGMENT_SCHEMA,
    QUERY_SCHEMA,
    SEQUENCE_SCHEMA,
    SPLITS,
    USER_SCHEMA,
    DataError,
    Event,
    validate_table,
)
from onesearch_ray.io import read_json, write_json, write_parquet

MANIFEST = "track.json"
WORLD_FILE = "synthetic_world.json"  # a synthetic track's generating config and query intents
TABLES = ("items", "queries", "judgments", "interactions", "users", "sequences")
# Files each format needs, in detection order; onesearch also accepts sequences.parquet.
FORMAT_FILES: dict[str, tuple[str, ...]] = {
    "onesearch": (
        "items.parquet",
        "queries.parquet",
        "judgments.parquet",
        "interactions.parquet",
        "users.parquet",
    ),
    "homedepot": ("products.parquet", "queries.parquet", "judgments.parquet"),
    "amazon18": ("items.parquet", "sequences.parquet"),
    "kuaisearch": ("items.jsonl", "users.jsonl", "sessions.jsonl"),
}


@dataclass
class Track:
    """A catalogue plus whatever queries, judgments, behaviour and sequences the source has."""

    name: str
    root: Path
    items: pa.Table
    queries: pa.Table | None = None
    judgments: pa.Table | None = None
    interactions: pa.Table | None = None
    users: pa.Table | None = None
    sequences: pa.Table | None = None
    format: str = "onesearch"
    # Side information that is not part of the schemas (e.g. amazon18 reference_sid by item_id,
    # synthetic query intents by query_id); not written by write_track.
    extras: dict[str, Any] = field(default_factory=dict)

    def tables(self) -> dict[str, pa.Table]:
        """The tables this track has, by name (items, queries, ...)."""
        return {name: getattr(self, name) for name in TABLES if getattr(self, name) is not None}

    def split_queries(self, split: str) -> pa.Table:
        """Queries of one split (train/valid/test); empty when the track has no queries."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
        if self.queries is None:
            return QUERY_SCHEMA.empty_table()
        return self.queries.filter(pc.equal(self.queries["split"], split))


def write_track(track: Track, directory: str | os.PathLike) -> Path:
    """Write ``track`` in the onesearch format (each file atomically) and return the directory."""
    root = Path(directory)
    tables = validate_tables(track.tables(), root)
    for name, table in tables.items():
        write_parquet(root / f"{name}.parquet", table)
    # The manifest goes last: a crash before it leaves no manifest naming half-written tables.
    write_json(root / MANIFEST, {"format": "onesearch", "name": track.name, "tables": sorted(tables)})
    return root


def validate_tables(
    tables: dict[str, pa.Table], root: str | os.PathLike, file_names: dict[str, str] | None = None
) -> dict[str, pa.Table]:
    """Cast and check a track's tables, references included.

    Errors name ``root/<name>.parquet``, or ``root/file_names[name]`` for a source format's own names.
    """
    names = {name: f"{name}.parquet" for name in TABLES} | (file_names or {})
    path = {name: Path(root) / file for name, file in names.items()}
    out: dict[str, pa.Table] = {}
    items = out["items"] = _validate_items(tables["items"], path["items"])
    item_ids = items["item_id"]
    if "queries" in tables:
        out["queries"] = validate_table(
            tables["queries"],
            QUERY_SCHEMA,
            path["queries"],
            unique=("query_id",),
            non_empty=("query",),
            allowed={"split": SPLITS},
        )
    if "judgments" in tables:
        refs: dict[str, Any] = {"item_id": item_ids}
        if "queries" in out:
            refs["query_id"] = out["queries"]["query_id"]
        out["judgments"] = validate_table(
            tables["judgments"],
            JUDGMENT_SCHEMA,
            path["judgments"],
            unique=(("query_id", "item_id"),),
            ranges={"relevance": (1.0, 3.0)},
            references=refs,
        )
    if "users" in tables:
        out["users"] = validate_table(tables["users"], USER_SCHEMA, path["users"], unique=("user_id",))
    if "interactions" in tables:
        out["interactions"] = _validate_interactions(tables["interactions"], path["interactions"], out)
    if "sequences" in tables:
        refs = {"item_id": item_ids, "history_item_ids": item_ids}
        if "users" in out:
            refs["user_id"] = out["users"]["user_id"]
        out["sequences"] = validate_table(
            tables["sequences"],
            SEQUENCE_SCHEMA,
            path["sequences"],
            allowed={"split": SPLITS},
            references=refs,
        )
    return out


def _validate_items(table: pa.Table, file: Path) -> pa.Table:
    items = validate_table(table, ITEM_SCHEMA, file, unique=("item_id",), non_empty=("title",))
    return _blank_to_null(items, ("brand", "category", "description"))


def _validate_interactions(table: pa.Table, file: Path, known: dict[str, pa.Table]) -> pa.Table:
    refs: dict[str, Any] = {"item_id": known["items"]["item_id"]}
    if "queries" in known:
        refs["query_id"] = known["queries"]["query_id"]
    if "users" in known:
        refs["user_id"] = known["users"]["user_id"]
    return validate_table(
        table, INTERACTION_SCHEMA, file, allowed={"event": {int(e) for e in Event}}, references=refs
    )


def load_homedepot(root: Path) -> Track:
    raw = _read_files(
        root, {"items": "products.parquet", "queries": "queries.parquet", "judgments": "judgments.parquet"}
    )
    tables = validate_tables(raw, root, file_names={"items": "products.parquet"})
    return Track(name=root.name, root=root, format="homedepot", **tables)


def load_amazon18(root: Path) -> Track:
    raw = _read_files(root, {"items": "items.parquet", "sequences": "sequences.parquet"})
    extras: dict[str, Any] = {}
    if "reference_sid" in raw["items"].column_names:
        extras["reference_sid"] = dict(
            zip(raw["items"]["item_id"].to_pylist(), raw["items"]["reference_sid"].to_pylist(), strict=True)
        )
    tables = validate_tables(raw, root)
    return Track(name=root.name, root=root, format="amazon18", extras=extras, **tables)


def load_onesearch(root: Path) -> Track:
    name, wanted = root.name, FORMAT_FILES["onesearch"]
    if (root / MANIFEST).is_file():
        manifest = _read_manifest(root / MANIFEST)
        name, wanted = str(manifest.get("name", name)), tuple(f"{t}.parquet" for t in manifest["tables"])
    elif (root / "sequences.parquet").is_file():
        wanted = (*wanted, "sequences.parquet")
    raw = _read_files(root, {f.removesuffix(".parquet"): f for f in wanted})
    if "items" not in raw:
        raise DataError(root / MANIFEST, None, "tables", "a track needs an items table")
    extras = {"query_intent": read_query_intents(root)} if (root / WORLD_FILE).is_file() else {}
    return Track(name=name, root=root, format="onesearch", extras=extras, **validate_tables(raw, root))


def read_query_intents(root: Path) -> dict[int, dict[str, str]]:
    """The query intents (by query id) in a synthetic track's :data:`WORLD_FILE`."""
    path = root / WORLD_FILE
    try:
        payload = read_json(path)
    except ValueError as err:
        raise DataError(path, None, None, str(err)) from err
    return query_intents(payload, path)


def query_intents(payload: Any, path: Path) -> dict[int, dict[str, str]]:
    """The intents of a :data:`WORLD_FILE` already read from ``path`` (named in the error)."""
    try:
        return {int(q): dict(intent) for q, intent in payload["query_intent"]}
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(
            path, None, "query_intent", f"expected [[query_id, {{kind: value}}], ...]: {err}"
        ) from err


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = read_json(path)
    except ValueError as err:
        raise DataError(path, None, None, str(err)) from err
    tables = manifest.get("tables") if isinstance(manifest, dict) else None
    if not isinstance(tables, list) or not set(tables) <= set(TABLES):
        raise DataError(path, None, "tables", f"expected a list of table names from {list(TABLES)}")
    return manifest


def _read_files(root: Path, files: dict[str, str]) -> dict[str, pa.Table]:
    missing = [f for f in files.values() if not (root / f).is_file()]
    if missing:
        raise DataError(root, None, None, f"missing {', '.join(missing)}")
    return {name: read_parquet(root / f) for name, f in files.items()}


def read_parquet(path: str | os.PathLike) -> pa.Table:
    """Read one parquet file; an unreadable file is a DataError naming it."""
    try:
        return pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise DataError(path, None, None, f"not a readable parquet file ({err})") from err


def existing_dir(directory: str | os.PathLike) -> Path:
    root = Path(directory)
    if not root.exists():
        raise DataError(root, None, None, "no such directory")
    if not root.is_dir():
        raise DataError(root, None, None, "not a directory (expected a track directory of parquet files)")
    return root


def _blank_to_null(table: pa.Table, fields: tuple[str, ...]) -> pa.Table:
    """Empty optional strings mean "unknown" (amazon18 has brand == "" for some items)."""
    for name in fields:
        column = table[name]
        blank = pc.fill_null(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(column)), 0), False)
        if pc.any(blank).as_py():
            column = pc.if_else(blank, pa.scalar(None, column.type), column)
            table = table.set_column(table.schema.get_field_index(name), table.schema.field(name), column)
    return table
