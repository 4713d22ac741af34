"""Schema validation errors name file, row and field; loaders read the three track formats."""

from __future__ import annotations

import pickle
from pathlib import Path

import pyarrow as pa
import pytest

from onesearch_ray.data import (
    ITEM_SCHEMA,
    JUDGMENT_SCHEMA,
    QUERY_SCHEMA,
    SEQUENCE_SCHEMA,
    SPLITS,
    DataError,
    Track,
    detect_format,
    load_track,
    validate_table,
    write_track,
)
from onesearch_ray.io import write_parquet

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FILE = "x/products.parquet"


def _raises(table: pa.Table, schema: pa.Schema, **checks) -> DataError:
    with pytest.raises(DataError) as info:
        validate_table(table, schema, FILE, **checks)
    return info.value


# --- DataError and validate_table ---------------------------------------------------------------


def test_data_error_message_and_attributes():
    err = DataError(file="x/products.parquet", row=17, field="title", problem="empty string")
    assert str(err) == "x/products.parquet: row 17, field 'title': empty string"
    assert (err.file, err.row, err.field, err.problem) == ("x/products.parquet", 17, "title", "empty string")
    assert isinstance(err, ValueError)
    assert str(DataError("x/a.parquet", None, "title", "missing required column")) == (
        "x/a.parquet: field 'title': missing required column"
    )
    copy = pickle.loads(pickle.dumps(err))  # Ray ships exceptions between processes
    assert (copy.file, copy.row, copy.field, copy.problem) == (err.file, err.row, err.field, err.problem)


def test_missing_required_column_names_field_not_row():
    err = _raises(pa.table({"item_id": [1, 2]}), ITEM_SCHEMA)
    assert (err.file, err.row, err.field) == (FILE, None, "title")
    assert "missing" in err.problem


def test_missing_optional_columns_are_filled_and_extras_dropped():
    raw = pa.table({"title": ["a", "b"], "item_id": [1, 2], "junk": [0, 0]})
    table = validate_table(raw, ITEM_SCHEMA, FILE)
    assert table.schema.equals(ITEM_SCHEMA)
    assert table["brand"].null_count == 2 and table["item_id"].to_pylist() == [1, 2]


@pytest.mark.parametrize("values, bad_row", [(["1", "2", "x", "y"], 2), ([1.0, 2.5, 3.0], 1)])
def test_wrong_type_names_first_bad_row(values, bad_row):
    err = _raises(pa.table({"item_id": values, "title": ["t"] * len(values)}), ITEM_SCHEMA)
    assert (err.row, err.field) == (bad_row, "item_id")
    assert "cannot cast" in err.problem


def test_uncastable_type_without_a_row():
    err = _raises(pa.table({"item_id": [1], "title": ["t"], "attributes": [[1, 2]]}), ITEM_SCHEMA)
    assert (err.row, err.field) == (None, "attributes")


def test_null_in_required_field():
    err = _raises(pa.table({"item_id": [1, 2, 3], "title": ["a", None, "c"]}), ITEM_SCHEMA)
    assert (err.row, err.field, err.problem) == (1, "title", "null value")


def test_empty_string():
    err = _raises(pa.table({"item_id": [1, 2], "title": ["a", "  "]}), ITEM_SCHEMA, non_empty=("title",))
    assert (err.row, err.field, err.problem) == (1, "title", "empty string")


def test_duplicate_id_names_repeat_and_first_row():
    table = pa.table({"item_id": [5, 6, 7, 6], "title": list("abcd")})
    err = _raises(table, ITEM_SCHEMA, unique=("item_id",))
    assert (err.row, err.field) == (3, "item_id")
    assert "duplicate value 6" in err.problem and "row 1" in err.problem


def test_duplicate_composite_key():
    table = pa.table({"query_id": [1, 1, 2, 1], "item_id": [10, 11, 10, 11], "relevance": [3.0] * 4})
    err = _raises(table, JUDGMENT_SCHEMA, unique=(("query_id", "item_id"),))
    assert (err.row, err.field) == (3, "query_id+item_id")


def test_row_index_counts_across_chunks():
    first = pa.table({"item_id": [1, 2], "title": ["a", "b"]})
    second = pa.table({"item_id": [3, 1], "title": ["c", "d"]})
    err = _raises(pa.concat_tables([first, second]), ITEM_SCHEMA, unique=("item_id",))
    assert err.row == 3


@pytest.mark.parametrize("relevance, bad_row", [([1.0, 3.5, 0.0], 1), ([2.0, float("nan")], 1), ([0.5], 0)])
def test_out_of_range_relevance(relevance, bad_row):
    n = len(relevance)
    table = pa.table({"query_id": [1] * n, "item_id": list(range(n)), "relevance": relevance})
    err = _raises(table, JUDGMENT_SCHEMA, ranges={"relevance": (1.0, 3.0)})
    assert (err.row, err.field) == (bad_row, "relevance")


def test_unknown_split():
    table = pa.table({"query_id": [1, 2, 3], "query": ["a", "b", "c"], "split": ["train", "test", "dev"]})
    err = _raises(table, QUERY_SCHEMA, allowed={"split": SPLITS})
    assert (err.row, err.field) == (2, "split")
    assert "'dev'" in err.problem


def test_dangling_reference_scalar_and_list_columns():
    judgments = pa.table({"query_id": [1, 2, 3], "item_id": [10, 11, 99], "relevance": [3.0, 2.0, 1.0]})
    err = _raises(judgments, JUDGMENT_SCHEMA, references={"item_id": {10, 11, 12}})
    assert (err.row, err.field) == (2, "item_id") and "99" in err.problem
    sequences = pa.table(
        {
            "user_id": ["a", "b", "c"],
            "history_item_ids": [[10], [11, 10], [12, 77]],
            "item_id": [10, 11, 12],
            "split": ["valid"] * 3,
        }
    )
    err = _raises(sequences, SEQUENCE_SCHEMA, references={"history_item_ids": pa.array([10, 11, 12])})
    assert (err.row, err.field) == (2, "history_item_ids") and "77" in err.problem


def test_null_list_element():
    sequences = pa.table(
        {
            "user_id": ["a", "b"],
            "history_item_ids": [[10], [11, None]],
            "item_id": [10, 11],
            "split": ["valid"] * 2,
        }
    )
    err = _raises(sequences, SEQUENCE_SCHEMA)
    assert (err.row, err.field) == (1, "history_item_ids")


# --- loaders ------------------------------------------------------------------------------------


def _homedepot(root: Path, item_ids=(1, 2, 3)) -> Path:
    write_parquet(
        root / "products.parquet",
        pa.table(
            {
                "item_id": [1, 2, 3],
                "title": ["drill", "lamp", "sofa"],
                "extra": ["x", "y", "z"],
            }
        ),
    )
    write_parquet(
        root / "queries.parquet",
        pa.table({"query": ["cordless drill", "table lamp"], "query_id": [7, 8], "split": ["train", "test"]}),
    )
    write_parquet(
        root / "judgments.parquet",
        pa.table({"query_id": [7, 7, 8], "item_id": list(item_ids), "relevance": [3.0, 1.0, 2.33]}),
    )
    return root


def _amazon18(root: Path) -> Path:
    write_parquet(
        root / "items.parquet",
        pa.table(
            {
                "item_id": [0, 1, 2],
                "title": ["relay kit", "staples", "glue"],
                "brand": ["Supco", "", "Gorilla"],
                "description": ["d0", "d1", ""],
                "reference_sid": ["<a_1><b_2><c_3>", "<a_1><b_2><c_4>", "<a_5><b_6><c_7>"],
            }
        ),
    )
    write_parquet(
        root / "sequences.parquet",
        pa.table(
            {
                "user_id": ["A1", "A1", "A2"],
                "history_item_ids": [[0], [0, 1], [2]],
                "item_id": [1, 2, 0],
                "split": ["valid", "test", "test"],
            }
        ),
    )
    return root


def test_load_homedepot_format(tmp_path):
    track = load_track(_homedepot(tmp_path))
    assert (track.format, track.name, track.root) == ("homedepot", tmp_path.name, tmp_path)
    assert track.items.schema.equals(ITEM_SCHEMA)
    assert track.items["title"].to_pylist() == ["drill", "lamp", "sofa"]
    assert track.items["brand"].null_count == 3
    assert track.judgments.num_rows == 3 and track.interactions is None and track.sequences is None
    assert track.split_queries("test")["query"].to_pylist() == ["table lamp"]
    assert track.split_queries("valid").num_rows == 0


def test_load_amazon18_format(tmp_path):
    track = load_track(_amazon18(tmp_path))
    assert track.format == "amazon18" and track.queries is None
    assert track.items["brand"].to_pylist() == ["Supco", None, "Gorilla"]  # "" means unknown
    assert track.items["description"].to_pylist()[2] is None
    assert track.extras["reference_sid"][1] == "<a_1><b_2><c_4>"
    assert track.sequences["history_item_ids"].to_pylist() == [[0], [0, 1], [2]]
    assert "reference_sid" not in track.items.column_names


def test_unrecognised_directory_lists_expected_files(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError) as info:
        detect_format(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message and "products.parquet" in message and "sequences.parquet" in message
    assert "found: notes.txt;" in message
    for i in range(30):  # a crowded directory (a home or /tmp given by mistake) is named briefly
        (tmp_path / f"file{i:02d}").write_text("")
    with pytest.raises(DataError, match="found: file00, .*, file07 and 23 more;"):
        detect_format(tmp_path)


def test_missing_directory_and_plain_file(tmp_path):
    with pytest.raises(DataError, match="no such directory"):
        load_track(tmp_path / "nope")
    (tmp_path / "file.parquet").write_text("x")
    with pytest.raises(DataError, match="not a directory"):
        load_track(tmp_path / "file.parquet")


def test_forced_format_names_missing_files(tmp_path):
    with pytest.raises(DataError, match="items.parquet"):
        load_track(_homedepot(tmp_path), format="amazon18")
    with pytest.raises(ValueError, match="unknown track format"):
        load_track(tmp_path, format="csv")


@pytest.mark.parametrize("content", [b"this is not parquet", None])
def test_unreadable_parquet_names_file(tmp_path, content):
    _homedepot(tmp_path)
    path = tmp_path / "queries.parquet"
    data = content if content is not None else path.read_bytes()[: path.stat().st_size // 2]  # truncated
    path.write_bytes(data)
    with pytest.raises(DataError) as info:
        load_track(tmp_path)
    assert info.value.file == str(path) and info.value.row is None


def test_dangling_judgment_names_judgments_file_and_row(tmp_path):
    _homedepot(tmp_path, item_ids=(1, 2, 42))
    with pytest.raises(DataError) as info:
        load_track(tmp_path)
    err = info.value
    assert (Path(err.file).name, err.row, err.field) == ("judgments.parquet", 2, "item_id")


def test_bad_item_row_is_reported_under_products_name(tmp_path):
    _homedepot(tmp_path)
    write_parquet(tmp_path / "products.parquet", pa.table({"item_id": [1, 2, 3, 2], "title": list("abcd")}))
    with pytest.raises(DataError) as info:
        load_track(tmp_path)
    err = info.value
    assert (Path(err.file).name, err.row, err.field) == ("products.parquet", 3, "item_id")


def test_write_track_round_trip_keeps_absent_tables_absent(tmp_path):
    source = load_track(_homedepot(tmp_path / "hd"))
    out = write_track(source, tmp_path / "out")
    loaded = load_track(out)
    assert (loaded.format, loaded.name) == ("onesearch", source.name)
    assert loaded.interactions is None and loaded.users is None
    for name, table in source.tables().items():
        assert loaded.tables()[name].equals(table), name


def test_write_track_validates_first(tmp_path):
    items = pa.table({"item_id": [1, 1], "title": ["a", "b"]})
    with pytest.raises(DataError, match="duplicate"):
        write_track(Track(name="bad", root=tmp_path, items=items), tmp_path / "out")
    assert not (tmp_path / "out" / "track.json").exists()


@pytest.mark.parametrize(
    "name, n_items, extra_rows",
    [
        ("homedepot", 54_667, {"queries": 9_413, "judgments": 59_145}),
        ("amazon18_industrial", 3_686, {"sequences": 9_065}),
    ],
)
def test_real_tracks(name, n_items, extra_rows):
    directory = REAL_DATA / name
    if not directory.is_dir():
        pytest.skip(f"{directory} not present")
    track = load_track(directory)
    assert track.items.num_rows == n_items
    assert {k: track.tables()[k].num_rows for k in extra_rows} == extra_rows


def test_a_query_file_names_its_problems_and_drops_unknown_items(tmp_path):
    from onesearch_ray.data.query_file import read_query_file

    path = tmp_path / "q.jsonl"
    path.write_text(
        '{"query": "red drill", "item_id": 1, "relevance": 2.0}\n'
        '{"query": "red drill", "item_id": 2}\n'
        '{"query": "oak sofa", "item_id": 99}\n'
        '{"query_id": 7, "query": "lamp", "item_id": 3}\n'
    )
    queries, judgments = read_query_file(path, "test", {1, 2, 3})
    assert queries.to_pydict() == {
        "query_id": [0, 2, 7],
        "query": ["red drill", "oak sofa", "lamp"],
        "split": ["test"] * 3,
    }
    assert judgments.to_pydict() == {
        "query_id": [0, 0, 7],
        "item_id": [1, 2, 3],
        "relevance": [2.0, 3.0, 3.0],
    }
    path.write_text('{"query": "lamp", "item_id": "three"}\n')
    with pytest.raises(DataError, match=r"q\.jsonl:1: field 'item_id': expected an integer"):
        read_query_file(path, "test", {3})
    path.write_text("not json\n")
    with pytest.raises(DataError, match=r"q\.jsonl:1: not valid JSON"):
        read_query_file(path, "test", {3})
