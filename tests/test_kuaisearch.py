"""The KuaiSearch layout: loader on hand-made files, malformed lines, the Chinese synthetic round trip."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import pyarrow.compute as pc
import pytest

from onesearch_cli.main import main
from onesearch_ray.behavior import BehaviorIndex
from onesearch_ray.data import (
    DataError,
    Event,
    KuaiSearchSynthConfig,
    detect_format,
    load_track,
    validate_tables,
    write_kuaisearch_synthetic,
)
from onesearch_ray.data.kuaisearch import query_split


def _write(root: Path, name: str, records: list) -> None:
    lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in records]
    (root / name).write_text("\n".join(lines) + "\n", encoding="utf-8")


def _item(item_id: int, title: str, brand: str, seller: str, leaf: str) -> dict:
    return {
        "item_id": item_id,
        "item_title": title,
        "brand_name": brand,
        "seller_name": seller,
        "category_level1_name": "数码",
        "category_level2_name": "影音",
        "category_level3_name": leaf,
    }


def _session(user, session, query, target, clicked=0, purchased=0, **extra) -> dict:
    line = {"user_id": user, "session_id": session, "query": query, "search_entrance": "search_entrance_mall"}
    return line | {"target_item_id": target, "is_clicked": clicked, "is_purchased": purchased} | extra


@pytest.fixture
def handmade(tmp_path: Path) -> Path:
    """Two users, five items (4 and 5 share a title), and one dangling reference of each kind."""
    _write(
        tmp_path,
        "items.jsonl",
        [
            _item(1, "声悦蓝牙耳机黑色K100", "声悦", "声悦官方旗舰店", "耳机"),
            _item(2, "律动降噪耳机白色K200", "律动", "律动专卖店", "耳机"),
            _item(3, "飞步男款跑步鞋黑色42码", "无品牌", "小美百货店", "运动鞋"),
            _item(4, "简约手机壳", "百物", "百物一店", "手机壳"),
            _item(5, "简约手机壳", "百物", "百物二店", "手机壳"),
        ],
    )
    _write(
        tmp_path,
        "users.jsonl",
        [
            {"user_id": 1, "gender": "女", "age_bucket": "25-34"},
            {"user_id": "u2", "gender": "男", "age_bucket": "18-24", "location": "成都"},
        ],
    )
    history = {"recently_clicked_item_ids": [2, 99], "recently_purchased_item_ids": [3]}  # 99: unknown
    _write(
        tmp_path,
        "sessions.jsonl",
        [
            _session(1, 10, "蓝牙耳机", 1, clicked=1, purchased=1, time_index=5, **history),
            _session(1, 10, "蓝牙耳机", 2, time_index=5, **history),
            _session(1, 10, "蓝牙耳机", 77, clicked=1, time_index=5, **history),  # unknown target
            _session(999, 11, "耳机", 1, clicked=1, time_index=6),  # unknown user
            _session("u2", 1, "黑色跑步鞋", 3, clicked=1, time_index=1),
            # Its history repeats what the log already holds: no new events.
            _session(1, 12, "耳机", 2, clicked=1, time_index=9, recently_clicked_item_ids=[2, 1]),
        ],
    )
    _write(
        tmp_path,
        "impressions.jsonl",
        [
            {"user_id": 1, "session_id": 10, "impressed_item_ids": [2, 1, 55]},  # 55: unknown
            {"user_id": 7, "session_id": 3, "impressed_item_ids": [1]},  # no such session
        ],
    )
    _write(
        tmp_path,
        "relevance.jsonl",
        [
            {"query": "蓝牙耳机", "item_title": "声悦蓝牙耳机黑色K100", "brand": "声悦", "score": 3},
            {"query": "蓝牙耳机", "item_title": "不存在的商品", "score": 1},  # no item has it
            {"query": "黑色跑步鞋", "item_title": "飞步男款跑步鞋黑色42码", "score": 0},
            {"query": "手机壳", "item_title": "简约手机壳", "seller_name": "百物二店", "score": 2},
        ],
    )
    return tmp_path


def test_loader_maps_fields_and_drops_dangling_references(handmade: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="onesearch_ray.data.kuaisearch"):
        track = load_track(handmade)
    assert detect_format(handmade) == "kuaisearch" and track.format == "kuaisearch"
    assert track.extras["dropped"] == {
        "session_lines_unknown_user": 1,
        "target_unknown_item": 1,
        "history_unknown_item": 1,
        "impressions_unknown_session": 1,
        "impressed_unknown_item": 1,
        "relevance_unknown_title": 1,
    }
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert all(f in warned for f in ("sessions.jsonl", "impressions.jsonl", "relevance.jsonl"))

    items = {row["item_id"]: row for row in track.items.to_pylist()}
    assert items[1]["title"] == "声悦蓝牙耳机黑色K100" and items[1]["category"] == "数码 > 影音 > 耳机"
    assert items[3]["brand"] is None  # 无品牌: no brand
    assert dict(items[1]["attributes"]) == {
        "brand": "声悦",
        "seller": "声悦官方旗舰店",
        "category_level1": "数码",
        "category_level2": "影音",
        "category_level3": "耳机",
    }
    users = {row["user_id"]: row for row in track.users.to_pylist()}
    assert users["1"]["segment"] == "女, 25-34" and users["u2"]["segment"] == "男, 18-24, 成都"

    queries = track.queries.to_pylist()
    assert [q["query"] for q in queries] == sorted(["蓝牙耳机", "黑色跑步鞋", "耳机", "手机壳"])
    assert all(q["split"] == query_split(q["query"]) for q in queries)
    qid = {q["query"]: q["query_id"] for q in queries}
    judged = {(r["query_id"], r["item_id"]): r["relevance"] for r in track.judgments.to_pylist()}
    assert judged == {
        (qid["蓝牙耳机"], 1): 3.0,
        (qid["黑色跑步鞋"], 3): 1.0,
        (qid["手机壳"], 5): pytest.approx(7 / 3),
    }

    log = track.interactions.to_pylist()
    assert [e["user_id"] for e in log][:2] == ["u2", "u2"]  # time_index 1 comes first
    ears = [(e["query_id"], e["item_id"], e["event"]) for e in log if e["user_id"] == "1"]
    no_query = [(i, ev) for q, i, ev in ears if q is None]
    assert no_query == [(2, Event.CLICKED), (3, Event.ORDERED)]  # the recent lists, before the search
    first = [(i, ev) for q, i, ev in ears if q == qid["蓝牙耳机"]]
    assert first == [(2, Event.SHOWN), (1, Event.SHOWN), (1, Event.CLICKED), (1, Event.ORDERED)]
    times = [e["timestamp"] for e in log if e["user_id"] == "1"]
    assert times == sorted(times)
    # The behaviour views see the recent items as the user's history.
    second = min(e["timestamp"] for e in log if e["query_id"] == qid["耳机"])
    assert BehaviorIndex.from_track(track).context_for("1", before_timestamp=second).short_items == [2, 1]


@pytest.mark.parametrize(
    ("file", "line", "field", "match"),
    [
        ("items.jsonl", '{"item_id": 6, "item_title": ', None, "not valid JSON"),
        ("items.jsonl", {"item_id": "6", "item_title": "耳机"}, "item_id", "expected an integer"),
        ("items.jsonl", {"item_id": 1, "item_title": "重复"}, "item_id", "duplicate item id 1"),
        ("sessions.jsonl", _session(1, 13, "耳机", "abc"), "target_item_id", "expected an integer"),
        ("sessions.jsonl", _session(1, 13, "耳机", 1, clicked=2), "is_clicked", "expected 0 or 1"),
        ("sessions.jsonl", _session(1, 10, "别的查询", 1), "query", "has query '蓝牙耳机'"),
        ("relevance.jsonl", {"query": "耳机", "item_title": "x", "score": 5}, "score", "outside"),
        ("users.jsonl", {"user_id": [1]}, "user_id", "expected an integer or a non-empty string"),
    ],
)
def test_malformed_line_names_file_line_and_field(handmade: Path, file, line, field, match) -> None:
    path = handmade / file
    n_lines = len(path.read_text(encoding="utf-8").splitlines())
    with path.open("a", encoding="utf-8") as out:
        out.write((line if isinstance(line, str) else json.dumps(line, ensure_ascii=False)) + "\n")
    with pytest.raises(DataError, match=match) as info:
        load_track(handmade)
    assert info.value.file == f"{path}:{n_lines + 1}" and info.value.field == field


def test_missing_required_file_is_not_detected(handmade: Path) -> None:
    (handmade / "users.jsonl").unlink()
    with pytest.raises(DataError, match="users.jsonl"):
        detect_format(handmade)
    with pytest.raises(DataError, match="missing users.jsonl"):
        load_track(handmade, format="kuaisearch")


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


SMALL = KuaiSearchSynthConfig(seed=3, n_items=300, n_users=40, n_queries=60, n_sessions=300)


def test_synthetic_chinese_round_trip(tmp_path: Path) -> None:
    root = write_kuaisearch_synthetic(tmp_path / "zh", SMALL)
    files = {
        name: _lines(root / f"{name}.jsonl")
        for name in ("items", "users", "sessions", "impressions", "relevance")
    }
    assert detect_format(root) == "kuaisearch"
    track = load_track(root)
    validate_tables(track.tables(), root)
    assert set(track.extras["dropped"].values()) == {0}

    assert track.items.num_rows == len(files["items"]) == SMALL.n_items
    assert track.users.num_rows == len(files["users"]) == SMALL.n_users
    titles = track.items["title"].to_pylist()
    assert titles == [r["item_title"] for r in files["items"]]  # Chinese text survives as written
    assert all(" " not in t and any("\u4e00" <= ch <= "\u9fff" for ch in t) for t in titles)
    assert track.judgments.num_rows == len(files["relevance"])  # titles are distinct: one item each
    texts = {r["query"] for r in files["relevance"]} | {r["query"] for r in files["sessions"]}
    assert track.queries.num_rows == len(texts) == SMALL.n_queries

    log = track.interactions
    searched = log.filter(pc.is_valid(log["query_id"]))
    events = Counter(searched["event"].to_pylist())
    assert events[Event.SHOWN] == sum(len(r["impressed_item_ids"]) for r in files["impressions"])
    assert events[Event.CLICKED] == sum(r["is_clicked"] for r in files["sessions"])
    assert events[Event.ORDERED] == sum(r["is_purchased"] for r in files["sessions"])
    assert len(set(searched["session_id"].to_pylist())) == len(files["impressions"])
    # The users' clicks and orders before the log arrive once, through their first session's lists.
    first = {}
    for r in files["sessions"]:
        first.setdefault(r["user_id"], r)
    before = sum(
        len(r["recently_clicked_item_ids"]) + len(r["recently_purchased_item_ids"]) for r in first.values()
    )
    assert log.num_rows - searched.num_rows == before > 0

    # Known ground truth: an intent per query; valid/test queries never in the log.
    assert sorted(track.extras["query_intent"]) == track.queries["query_id"].to_pylist()
    held_out = set(
        track.queries.filter(pc.not_equal(track.queries["split"], "train"))["query_id"].to_pylist()
    )
    assert held_out and not held_out & set(searched["query_id"].to_pylist())
    # Seeded: the same config writes the same files.
    again = write_kuaisearch_synthetic(tmp_path / "again", SMALL)
    assert all((root / f).read_bytes() == (again / f).read_bytes() for f in ("items.jsonl", "sessions.jsonl"))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--lang", "zh"], "--lang zh needs --format kuaisearch"),
        (["--format", "kuaisearch", "--lang", "en"], "Chinese track"),
    ],
)
def test_synth_cli_rejects_a_language_the_format_lacks(tmp_path: Path, capsys, argv, message) -> None:
    assert main(["synth", "--out", str(tmp_path / "out"), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
