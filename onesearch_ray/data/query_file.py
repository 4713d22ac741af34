"""A file of new queries with judgments, to score a trained run on (``onesearch eval --queries``).

One row per judgment, parquet (``.parquet``) or JSON lines (any other name):

    {"query_id": 7, "query": "cordless drill", "item_id": 100231, "relevance": 3.0}

``query`` and ``item_id`` are required; ``query_id`` (default: the query's first row) and
``relevance`` (default 3.0, the top grade) are not. A query with several judged items has a row
per item; its text must be the same in each. Judgments of items the track does not hold are
dropped and counted (a warning), like any dangling reference.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pyarrow as pa

from onesearch_ray.data.jsonl import JsonLine, read_jsonl
from onesearch_ray.data.loaders import read_parquet
from onesearch_ray.data.schemas import JUDGMENT_SCHEMA, QUERY_SCHEMA, DataError

log = logging.getLogger(__name__)
DEFAULT_RELEVANCE = 3.0


def read_query_file(path: str | os.PathLike, split: str, known_items: set[int]) -> tuple[pa.Table, pa.Table]:
    """The file's queries (all of ``split``) and their judgments, as the track's tables."""
    lines = _lines(Path(path))
    if not lines:
        raise DataError(path, None, None, "holds no query")
    query_of: dict[int, str] = {}
    first_line: dict[str, int] = {}  # a query without an id is known by its text
    judgments: list[tuple[int, int, float]] = []
    dropped = 0
    for line in lines:
        text = line.text("query")
        query_id = line.integer("query_id", required=False)
        query_id = first_line.setdefault(text, line.line_no - 1) if query_id is None else query_id
        if query_of.setdefault(query_id, text) != text:
            raise line.error("query", f"query_id {query_id} already has text {query_of[query_id]!r}")
        item = line.integer("item_id")
        relevance = line.number("relevance", required=False)
        if item not in known_items:
            dropped += 1
            continue
        judgments.append((query_id, item, DEFAULT_RELEVANCE if relevance is None else relevance))
    if dropped:
        log.warning("%s: %d judgment(s) of items the track does not hold were dropped", path, dropped)
    queries = pa.table(
        {"query_id": list(query_of), "query": list(query_of.values()), "split": [split] * len(query_of)},
        schema=QUERY_SCHEMA,
    )
    columns = list(zip(*judgments, strict=True)) if judgments else [[], [], []]
    names = ("query_id", "item_id", "relevance")
    judged = pa.table(dict(zip(names, columns, strict=True)), schema=JUDGMENT_SCHEMA)
    return queries, judged


def _lines(path: Path) -> list[JsonLine]:
    """The file's rows as JSON lines (a parquet file's rows numbered as lines from 1)."""
    if path.suffix != ".parquet":
        return list(read_jsonl(path))
    return [JsonLine(path, number, row) for number, row in enumerate(read_parquet(path).to_pylist(), start=1)]
