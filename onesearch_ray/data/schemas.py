"""Arrow schemas of a track's tables and one validator that reports the first bad row.

Non-nullable schema fields are required: a missing column or a null value is an error. Every
problem is a :class:`DataError` naming the file, the 0-based row (None for a whole column or file)
and the field, so a bad row in a million-row catalogue can be found without guessing.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Collection, Iterable, Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SPLITS = frozenset({"train", "valid", "test"})


class Event(enum.IntEnum):
    """Interaction event type; stored as int8."""

    SHOWN = 0
    CLICKED = 1
    ORDERED = 2


ITEM_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.int64(), nullable=False),
        pa.field("title", pa.string(), nullable=False),
        pa.field("brand", pa.string()),
        pa.field("category", pa.string()),
        pa.field("description", pa.string()),
        # Keys are attribute types: brand, colour, material, entity, style, audience, size.
        pa.field("attributes", pa.map_(pa.string(), pa.string())),
        pa.field("popularity", pa.float64()),
    ]
)

QUERY_SCHEMA = pa.schema(
    [
        pa.field("query_id", pa.int64(), nullable=False),
        pa.field("query", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
    ]
)

JUDGMENT_SCHEMA = pa.schema(
    [
        pa.field("query_id", pa.int64(), nullable=False),
        pa.field("item_id", pa.int64(), nullable=False),
        pa.field("relevance", pa.float64(), nullable=False),
    ]
)

INTERACTION_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("query_id", pa.int64()),  # null for non-search events (browsing, recommendations)
        pa.field("item_id", pa.int64(), nullable=False),
        pa.field("event", pa.int8(), nullable=False),
        pa.field("timestamp", pa.int64(), nullable=False),  # seconds
        pa.field("session_id", pa.int64(), nullable=False),
    ]
)

USER_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("segment", pa.string()),
        pa.field("preferred_categories", pa.list_(pa.string()), nullable=False),
        pa.field("preferred_brands", pa.list_(pa.string()), nullable=False),
        pa.field("preferred_colours", pa.list_(pa.string())),
    ]
)

SEQUENCE_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("history_item_ids", pa.list_(pa.int64()), nullable=False),  # oldest first
        pa.field("item_id", pa.int64(), nullable=False),  # the next item
        pa.field("split", pa.string(), nullable=False),
    ]
)


class DataError(ValueError):
    """A data problem located by file, row (0-based, or None) and field (or None)."""

    def __init__(
        self,
        file: str | os.PathLike,
        row: int | None = None,
        field: str | None = None,
        problem: str = "invalid data",
    ) -> None:
        self.file = str(file)
        self.row = None if row is None else int(row)
        self.field = field
        self.problem = problem
        super().__init__(self._message())

    def _message(self) -> str:
        where = [self.file]
        location = []
        if self.row is not None:
            location.append(f"row {self.row}")
        if self.field is not None:
            location.append(f"field {self.field!r}")
        if location:
            where.append(", ".join(location))
        return ": ".join([*where, self.problem])

    def __reduce__(self):  # keyword-only construction would otherwise break pickling (Ray workers)
        return (DataError, (self.file, self.row, self.field, self.problem))


def validate_table(
    table: pa.Table,
    schema: pa.Schema,
    file: str | os.PathLike,
    *,
    unique: Iterable[str | tuple[str, ...]] = (),
    non_empty: Iterable[str] = (),
    allowed: Mapping[str, Collection[Any]] | None = None,
    ranges: Mapping[str, tuple[float, float]] | None = None,
    references: Mapping[str, Any] | None = None,
) -> pa.Table:
    """Cast ``table`` to ``schema`` (extra columns dropped) and check it; raise the first problem.

    Missing nullable columns are filled with nulls. ``unique`` entries may be a tuple of fields
    (a composite key). ``ranges`` are inclusive. ``references`` values are the valid values of
    a foreign key (a set, list, numpy or Arrow array); list columns are checked element-wise.
    """
    table = cast_to_schema(table, schema, file)
    for field in schema:
        if not field.nullable:
            _check(table, file, field.name, pc.is_null(table[field.name]), lambda _v: "null value")
            if pa.types.is_list(field.type):
                _check_list_elements(table, file, field.name)
    for field in non_empty:
        column = table[field]
        blank = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(column)), 0)
        _check(table, file, field, blank, lambda _v: "empty string")
    for key in unique:
        _check_unique(table, file, (key,) if isinstance(key, str) else tuple(key))
    for field, (lo, hi) in (ranges or {}).items():
        column = table[field]
        inside = pc.and_(pc.greater_equal(column, lo), pc.less_equal(column, hi))
        if pa.types.is_floating(column.type):
            inside = pc.and_(inside, pc.invert(pc.is_nan(column)))
        _check(table, file, field, pc.invert(inside), lambda v, lo=lo, hi=hi: f"{v!r} outside [{lo}, {hi}]")
    for field, values in (allowed or {}).items():
        permitted = sorted(values)
        bad = pc.invert(pc.is_in(table[field], value_set=_as_array(permitted, table[field].type)))
        _check(table, file, field, bad, lambda v, permitted=permitted: f"{v!r} not one of {permitted}")
    for field, values in (references or {}).items():
        _check_reference(table, file, field, values)
    return table


def cast_to_schema(table: pa.Table, schema: pa.Schema, file: str | os.PathLike) -> pa.Table:
    """Select and cast the schema's columns; a missing required column or a bad cast is a DataError."""
    columns = []
    for field in schema:
        if field.name not in table.column_names:
            if not field.nullable:
                raise DataError(file, None, field.name, "missing required column")
            columns.append(pa.nulls(table.num_rows, field.type))
            continue
        columns.append(_cast_column(table[field.name], field, file))
    return pa.Table.from_arrays(columns, schema=schema)


def _cast_column(column: pa.ChunkedArray, field: pa.Field, file: str | os.PathLike) -> pa.ChunkedArray:
    if column.type == field.type:
        return column
    try:
        return pc.cast(column, field.type, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as err:
        row = _first_uncastable_row(column, field.type)
        detail = f"{column[row].as_py()!r}" if row is not None else str(err).splitlines()[0]
        problem = f"cannot cast {column.type} to {field.type}: {detail}"
        raise DataError(file, row, field.name, problem) from err


def _first_uncastable_row(column: pa.ChunkedArray, target: pa.DataType) -> int | None:
    """Bisect for the first row that fails the cast (log n casts instead of one per row)."""
    # An empty slice that fails means no cast exists between the types: no single row to blame.
    if not _casts(column.slice(0, 0), target) or _casts(column, target):
        return None
    lo, hi = 0, len(column)  # invariant: column[:lo] casts, column[:hi] does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _casts(column.slice(0, mid), target):
            lo = mid
        else:
            hi = mid
    return lo


def _casts(column: pa.ChunkedArray, target: pa.DataType) -> bool:
    try:
        pc.cast(column, target, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return False
    return True


def _first_true(mask: pa.ChunkedArray | pa.Array) -> int | None:
    index = pc.index(pc.fill_null(mask, False), True).as_py()
    return None if index < 0 else index


def _check(table: pa.Table, file, field: str, bad_mask, describe) -> None:
    row = _first_true(bad_mask)
    if row is not None:
        raise DataError(file, row, field, describe(table[field][row].as_py()))


def _check_list_elements(table: pa.Table, file, field: str) -> None:
    column = table[field].combine_chunks()  # parent indices must count from the table's first row
    position = _first_true(pc.is_null(pc.list_flatten(column)))
    if position is not None:
        raise DataError(file, pc.list_parent_indices(column)[position].as_py(), field, "null list element")


def _check_unique(table: pa.Table, file, fields: tuple[str, ...]) -> None:
    if table.num_rows == 0:
        return
    key = np.zeros(table.num_rows, dtype=np.int64)
    valid = np.ones(table.num_rows, dtype=bool)
    for field in fields:
        codes, cardinality = _codes(table[field])
        valid &= codes >= 0
        key = key * (cardinality + 1) + codes  # mixed radix: distinct tuples get distinct keys
    rows = np.flatnonzero(valid)
    _, first, inverse = np.unique(key[rows], return_index=True, return_inverse=True)
    repeated = np.flatnonzero(first[inverse] != np.arange(len(rows)))
    if len(repeated):
        row, earlier = int(rows[repeated[0]]), int(rows[first[inverse[repeated[0]]]])
        value = tuple(table[f][row].as_py() for f in fields)
        shown = value[0] if len(value) == 1 else value
        raise DataError(file, row, "+".join(fields), f"duplicate value {shown!r} (first at row {earlier})")


def _codes(column: pa.ChunkedArray) -> tuple[np.ndarray, int]:
    """Dense integer codes per distinct value (-1 for null) and the number of distinct values."""
    encoded = pc.dictionary_encode(column.combine_chunks())
    codes = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    return codes, len(encoded.dictionary)


def _check_reference(table: pa.Table, file, field: str, values: Any) -> None:
    column = table[field].combine_chunks()
    is_list = pa.types.is_list(column.type) or pa.types.is_large_list(column.type)
    flat = pc.list_flatten(column) if is_list else column
    known = _as_array(values, flat.type)
    bad = pc.and_(pc.invert(pc.is_in(flat, value_set=known)), pc.is_valid(flat))
    position = _first_true(bad)
    if position is None:
        return
    value = flat[position].as_py()
    row = pc.list_parent_indices(column)[position].as_py() if is_list else position
    raise DataError(file, row, field, f"dangling reference {value!r} (not in the referenced table)")


def _as_array(values: Any, type_: pa.DataType) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.Array):
        return values.cast(type_)
    if isinstance(values, np.ndarray):
        return pa.array(values).cast(type_)
    return pa.array(list(values), type=type_)
