"""A file of new queries with judgments, to score a trained run on (``onesearch eval --queries``).

One row per judgment, parquet (``.parquet``) or JSON lines (any other name):

    {"query_id": 7, "query": "cordless drill", "item_id": 100231, "relevance": 3.0}

``query`` and ``item_id`` are required; ``query_id`` (default: the query's first row) and
``relevance`` (default 3.0, the top grade) are not. A query with several judged items has a row
per item; its text must be the same in each. Judgments of items the track does not hold are
dropped and counted (a warning), like any dangling reference.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pyarrow as pa

from onesearch_ray.data.loaders import read_parquet
from onesearch_ray.data.schemas import JUDGMENT_SCHEMA, QUERY_SCHEMA, DataError

log = logging.getLogger(__name__)
DEFAULT_RELEVANCE = 3.0


def read_query_file(path: str | os.PathLike, split: str, known_items: set[int]) -> tuple[pa.Table, pa.Table]:
    """The file's queries (all of ``split``) and their judgments, as the track's tables."""
    rows = _rows(Path(path))
    if not rows:
        raise DataError(path, None, None, "holds no query")
    query_of: dict[int, str] = {}
    first_row: dict[str, int] = {}  # a query without an id is known by its text
    judgments: list[tuple[int, int, float]] = []
    dropped = 0
    for number, row in enumerate(rows):
        text = row.get("query")
        if not isinstance(text, str) or not text.strip():
            raise DataError(path, number, "query", "must be a non-empty string")
        query_id = first_row.setdefault(text, number) if row.get("query_id") is None else row["query_id"]
        query_id = _integer(query_id, path, number, "query_id")
        if query_of.setdefault(query_id, text) != text:
            problem = f"query_id {query_id} already has text {query_of[query_id]!r}"
            raise DataError(path, number, "query", problem)
        item = _integer(row.get("item_id"), path, number, "item_id")
        relevance = row.get("relevance", DEFAULT_RELEVANCE)
        if not isinstance(relevance, int | float) or isinstance(relevance, bool):
            raise DataError(path, number, "relevance", f"must be a number, got {relevance!r}")
        if item not in known_items:
            dropped += 1
            continue
        judgments.append((query_id, item, float(relevance)))
    if dropped:
        log.warning("%s: %d judgment(s) of items the track does not hold were dropped", path, dropped)
    queries = pa.table(
        {"query_id": list(query_of), "query": list(query_of.values()), "split": [split] * len(query_of)},
        schema=QUERY_SCHEMA,
    )
    columns = list(zip(*judgments, strict=True)) if judgments else [[], [], []]
    judged = pa.table(
        dict(zip(("query_id", "item_id", "relevance"), columns, strict=True)), schema=JUDGMENT_SCHEMA
    )
    return queries, judged


def _rows(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        return read_parquet(path).to_pylist()
    try:
        lines = path.read_text().splitlines()
    except OSError as err:
        raise DataError(path, None, None, f"not readable ({err})") from err
    rows = []
    for number, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(path, number, None, f"not a JSON line ({err.msg})") from None
        if not isinstance(row, dict):
            raise DataError(path, number, None, "not a JSON object")
        rows.append(row)
    return rows


def _integer(value: object, path: Path, row: int, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(path, row, field, f"must be an integer, got {value!r}")
    return value
