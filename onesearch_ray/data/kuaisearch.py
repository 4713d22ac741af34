"""The KuaiSearch layout (JSON lines, as the KuaiSearch dataset's demo files) as a track.

Files of a track directory, one JSON object per line (``docs/data.md`` shows an example):

- ``items.jsonl``: item_id, item_title, brand_name, seller_name, category_level1_name ..
  category_level3_name (+ optional ``attributes``, an object of attribute type -> value);
- ``users.jsonl``: user_id, gender, age_bucket, location (the profile; + optional
  preferred_categories, preferred_brands, preferred_colours lists);
- ``sessions.jsonl``: one line per (search, shown target item): user_id, session_id, query,
  search_entrance, recently_clicked_item_ids, recently_purchased_item_ids (oldest first),
  target_item_id, is_clicked, is_purchased, time_index (orders the sessions);
- ``impressions.jsonl`` (optional): user_id, session_id, impressed_item_ids (+ optional
  clicked_item_ids, purchased_item_ids);
- ``relevance.jsonl`` (optional): query, item_title, brand, seller_name, attr_value, score (0-3),
  matched to items by title (then brand and seller, where several items share the title).

Sessions become the search log: a SHOWN event per impressed or target item, CLICKED for
``is_clicked``, CLICKED + ORDERED for ``is_purchased``; the items of the recently clicked/purchased
lists that the log does not hold yet become CLICKED/ORDERED events of the user just before the
session (no query), so the behaviour views see them. Distinct queries (sessions and relevance) get
ids by sorted text and a stable split (:func:`query_split`); scores become relevance ``1 + 2 score
/ 3`` (score = the relevance tier). References to unknown users, items or sessions, and relevance
titles no item has, are dropped and counted in ``track.extras["dropped"]`` (a warning per file);
a malformed line is a :class:`DataError` naming ``file:line`` and the field.
"""

from __future__ import annotations

import logging
import zlib
from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from onesearch_ray.data.jsonl import read_jsonl
from onesearch_ray.data.loaders import (
    FORMAT_FILES,
    WORLD_FILE,
    Track,
    read_query_intents,
    validate_tables,
)
from onesearch_ray.data.schemas import (
    INTERACTION_SCHEMA,
    ITEM_SCHEMA,
    JUDGMENT_SCHEMA,
    QUERY_SCHEMA,
    USER_SCHEMA,
    DataError,
    Event,
)

log = logging.getLogger(__name__)

FILES = {
    "items": "items.jsonl",
    "users": "users.jsonl",
    "sessions": "sessions.jsonl",
    "impressions": "impressions.jsonl",
    "relevance": "relevance.jsonl",
}
REQUIRED_FILES = FORMAT_FILES["kuaisearch"]
CATEGORY_FIELDS = ("category_level1_name", "category_level2_name", "category_level3_name")
CATEGORY_SEP = " > "  # the item's category: its levels joined, top first
PROFILE_FIELDS = ("gender", "age_bucket", "location")  # joined into the user's segment
PREFERENCE_FIELDS = ("preferred_categories", "preferred_brands", "preferred_colours")
IMPRESSION_LISTS = ("impressed_item_ids", "clicked_item_ids", "purchased_item_ids")
NO_BRAND = frozenset({"无品牌"})  # KuaiSearch's "no brand": a null brand, not a brand named so
# What a load drops, per kind (the keys of track.extras["dropped"]).
DROP_KINDS = (
    "session_lines_unknown_user",
    "target_unknown_item",
    "history_unknown_item",
    "impressions_unknown_session",
    "impressed_unknown_item",
    "relevance_unknown_title",
)
START_TIME = 1_700_000_000
# Event spacing within a session, as the synthetic log's: click j at +20 (j + 1) s, its order 10 s later.
CLICK_GAP, ORDER_GAP, SESSION_GAP = 20, 10, 60


def query_split(query: str) -> str:
    """train / valid / test (80/10/10) by a stable hash of the query text: a query keeps its split
    whichever files or lines it comes from."""
    bucket = zlib.crc32(query.encode("utf-8")) % 10
    return "test" if bucket == 9 else "valid" if bucket == 8 else "train"


def queries_table(texts: Iterable[str]) -> pa.Table:
    """The queries table of distinct ``texts``: ids 1.. in sorted text order, :func:`query_split`."""
    ordered = sorted(set(texts))
    return pa.Table.from_pydict(
        {
            "query_id": list(range(1, len(ordered) + 1)),
            "query": ordered,
            "split": [query_split(q) for q in ordered],
        },
        schema=QUERY_SCHEMA,
    )


def load_kuaisearch(root: Path) -> Track:
    """Load a KuaiSearch-layout directory as a validated track (format "kuaisearch")."""
    missing = [f for f in REQUIRED_FILES if not (root / f).is_file()]
    if missing:
        raise DataError(root, None, None, f"missing {', '.join(missing)}")
    path = {name: root / file for name, file in FILES.items()}
    items = _read_items(path["items"])
    users = _read_users(path["users"])
    dropped: Counter[str] = Counter(dict.fromkeys(DROP_KINDS, 0))
    sessions = _read_sessions(path["sessions"], set(users["user_id"].to_pylist()), items.row, dropped)
    if path["impressions"].is_file():
        _read_impressions(path["impressions"], sessions, items.row, dropped)
    pairs = _read_relevance(path["relevance"], items, dropped) if path["relevance"].is_file() else None
    queries = queries_table([s.query for s in sessions.values()] + [q for q, _, _ in pairs or ()])
    query_id = dict(zip(queries["query"].to_pylist(), queries["query_id"].to_pylist(), strict=True))
    interactions = _interactions(list(sessions.values()), query_id)
    raw = {
        "items": items.table(interactions),
        "queries": queries,
        "users": users,
        "interactions": interactions,
    }
    if pairs is not None:
        raw["judgments"] = _judgments(pairs, query_id)
    # Errors in a derived table name the file it came from.
    names = {"items": FILES["items"], "users": FILES["users"], "judgments": FILES["relevance"]}
    names |= {"queries": FILES["sessions"], "interactions": FILES["sessions"]}
    tables = validate_tables(raw, root, file_names=names)
    extras: dict[str, Any] = {"dropped": dict(dropped)}
    if (root / WORLD_FILE).is_file():
        extras["query_intent"] = read_query_intents(root)
    return Track(name=root.name, root=root, format="kuaisearch", extras=extras, **tables)


# --- reading lines ------------------------------------------------------------------------------


def _known(ids: list[int], known: Collection[int], dropped: Counter[str], kind: str) -> list[int]:
    """The ids in ``known``; the others are counted under ``kind``."""
    kept = [i for i in ids if i in known]
    dropped[kind] += len(ids) - len(kept)
    return kept


def _warn_dropped(path: Path, dropped: Counter[str], before: Counter[str]) -> None:
    counts = {kind: dropped[kind] - before[kind] for kind in DROP_KINDS if dropped[kind] > before[kind]}
    if counts:
        log.warning("%s: dropped references to unknown users, items, searches or titles: %s", path, counts)


# --- items and users ----------------------------------------------------------------------------


@dataclass
class _Items:
    ids: list[int] = field(default_factory=list)
    titles: list[str] = field(default_factory=list)
    brands: list[str | None] = field(default_factory=list)
    sellers: list[str | None] = field(default_factory=list)
    categories: list[str | None] = field(default_factory=list)
    attributes: list[list[tuple[str, str]]] = field(default_factory=list)
    row: dict[int, int] = field(default_factory=dict)  # item id -> row
    lines: list[int] = field(default_factory=list)

    def rows_by_title(self, titles: Collection[str]) -> dict[str, list[int]]:
        """Rows of each title in ``titles`` (only those, so a huge catalogue costs no title index)."""
        out: dict[str, list[int]] = {}
        for row, title in enumerate(self.titles):
            if title in titles:
                out.setdefault(title, []).append(row)
        return out

    def table(self, interactions: pa.Table) -> pa.Table:
        """ITEM_SCHEMA rows; popularity = the item's clicks + orders in the loaded log."""
        counts = Counter(
            item
            for item, event in zip(
                interactions["item_id"].to_pylist(), interactions["event"].to_pylist(), strict=True
            )
            if event != Event.SHOWN
        )
        return pa.Table.from_pydict(
            {
                "item_id": self.ids,
                "title": self.titles,
                "brand": self.brands,
                "category": self.categories,
                "description": [None] * len(self.ids),
                "attributes": self.attributes,
                "popularity": [float(counts[i]) for i in self.ids],
            },
            schema=ITEM_SCHEMA,
        )


def _read_items(path: Path) -> _Items:
    items = _Items()
    for line in read_jsonl(path):
        item_id = line.integer("item_id")
        if item_id in items.row:
            first = items.lines[items.row[item_id]]
            raise line.error("item_id", f"duplicate item id {item_id} (first at line {first})")
        title = line.text("item_title")
        brand, seller = _brand(line.text("brand_name", False)), line.text("seller_name", False)
        levels = [line.text(name, False) for name in CATEGORY_FIELDS]
        # Brand, seller and category levels join the attributes: KHQE's keyword lexicon reads them.
        named = [("brand", brand), ("seller", seller)]
        named += [
            (name.removesuffix("_name"), level) for name, level in zip(CATEGORY_FIELDS, levels, strict=True)
        ]
        attributes = dict((k, v) for k, v in named if v)
        for kind, value in line.mapping("attributes").items():
            attributes.setdefault(kind, value)
        items.row[item_id] = len(items.ids)
        items.ids.append(item_id)
        items.titles.append(title)
        items.brands.append(brand)
        items.sellers.append(seller)
        items.categories.append(CATEGORY_SEP.join(level for level in levels if level) or None)
        items.attributes.append(list(attributes.items()))
        items.lines.append(line.line_no)
    return items


def _brand(value: str | None) -> str | None:
    return None if value is None or value in NO_BRAND else value


def _read_users(path: Path) -> pa.Table:
    rows: dict[str, dict[str, Any]] = {}
    for line in read_jsonl(path):
        user = line.key("user_id")
        if user in rows:
            raise line.error("user_id", f"duplicate user id {user!r}")
        profile = [value for name in PROFILE_FIELDS if (value := line.scalar(name)) is not None]
        rows[user] = {"user_id": user, "segment": ", ".join(profile) or None}
        rows[user] |= {name: line.strings(name) for name in PREFERENCE_FIELDS}
    return pa.Table.from_pylist(list(rows.values()), schema=USER_SCHEMA)


# --- sessions -----------------------------------------------------------------------------------


@dataclass
class _Session:
    """One search (a user's session_id): its query, the user's recent items, what it showed."""

    user: str
    query: str
    order: tuple[float, int]  # (time_index, first line): the log's time order
    recent_clicks: list[int]
    recent_orders: list[int]
    impressed: list[int] = field(default_factory=list)
    targets: list[int] = field(default_factory=list)
    clicked: list[int] = field(default_factory=list)
    ordered: list[int] = field(default_factory=list)


def _read_sessions(
    path: Path, users: Collection[str], items: Collection[int], dropped: Counter[str]
) -> dict[tuple[str, str], _Session]:
    before = Counter(dropped)
    sessions: dict[tuple[str, str], _Session] = {}
    for line in read_jsonl(path):
        # Every field is checked before any reference is: a malformed line fails even when dropped.
        user = line.key("user_id")
        key = (user, line.key("session_id"))
        query, time_index = line.text("query"), line.number("time_index", False)
        recent = line.item_ids("recently_clicked_item_ids"), line.item_ids("recently_purchased_item_ids")
        target = line.integer("target_item_id", False)
        clicked, purchased = line.flag("is_clicked"), line.flag("is_purchased")
        line.text("search_entrance", False)  # checked; the track has no column for it
        if user not in users:
            dropped["session_lines_unknown_user"] += 1
            continue
        session = sessions.get(key)
        if session is None:
            clicks, orders = (_known(ids, items, dropped, "history_unknown_item") for ids in recent)
            session = sessions[key] = _Session(user, query, (time_index or 0.0, line.line_no), clicks, orders)
        elif session.query != query:
            first = session.order[1]
            raise line.error(
                "query", f"session {key[1]!r} of user {user!r} has query {session.query!r} (line {first})"
            )
        if target is None:
            continue
        if target not in items:
            dropped["target_unknown_item"] += 1
            continue
        session.targets.append(target)
        if clicked or purchased:  # an order goes through a click, as in the synthetic log
            session.clicked.append(target)
        if purchased:
            session.ordered.append(target)
    _warn_dropped(path, dropped, before)
    return sessions


def _read_impressions(
    path: Path, sessions: dict[tuple[str, str], _Session], items: Collection[int], dropped: Counter[str]
) -> None:
    before = Counter(dropped)
    for line in read_jsonl(path):
        key = (line.key("user_id"), line.key("session_id"))
        shown, clicked, ordered = (
            line.item_ids(name, name == IMPRESSION_LISTS[0]) for name in IMPRESSION_LISTS
        )
        session = sessions.get(key)
        if session is None:
            dropped["impressions_unknown_session"] += 1
            continue
        shown, clicked, ordered = (
            _known(ids, items, dropped, "impressed_unknown_item") for ids in (shown, clicked, ordered)
        )
        session.impressed.extend(shown)
        session.clicked.extend(clicked + ordered)
        session.ordered.extend(ordered)
    _warn_dropped(path, dropped, before)


def _interactions(sessions: list[_Session], query_id: dict[str, int]) -> pa.Table:
    """The search log: sessions in time order, each after its user's new history events."""
    rows: dict[str, list[Any]] = {name: [] for name in INTERACTION_SCHEMA.names}
    known: dict[str, Counter[tuple[int, int]]] = {}  # user -> (item, event) -> events so far
    clock, session_id = START_TIME, 0
    for session in sorted(sessions, key=lambda s: s.order):
        seen = known.setdefault(session.user, Counter())
        for events, qid in (
            (_new_history(session, seen), None),
            (_search_events(session), query_id[session.query]),
        ):
            if not events:
                continue
            for item, event, offset in events:
                _append(rows, session.user, qid, item, event, clock + offset, session_id)
                seen[(item, event)] += 1
            clock += max(offset for _, _, offset in events) + SESSION_GAP
            session_id += 1
    return pa.Table.from_pydict(rows, schema=INTERACTION_SCHEMA)


def _new_history(session: _Session, seen: Counter[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """(item, event, offset) of the recent items the log does not hold yet for the user: an item
    listed n times is new for the occurrences beyond the user's n earlier events of its kind."""
    events = []
    for items, event in ((session.recent_clicks, Event.CLICKED), (session.recent_orders, Event.ORDERED)):
        listed: Counter[int] = Counter()
        for item in items:
            listed[item] += 1
            if listed[item] > seen[(item, int(event))]:
                events.append((item, int(event), len(events)))
    return events


def _search_events(session: _Session) -> list[tuple[int, int, int]]:
    """(item, event, offset): every shown item at 0, then the clicks and their orders."""
    clicked = list(dict.fromkeys(session.clicked))
    shown = list(dict.fromkeys(session.impressed + session.targets + clicked))
    ordered = set(session.ordered)
    events = [(item, int(Event.SHOWN), 0) for item in shown]
    for j, item in enumerate(clicked):
        events.append((item, int(Event.CLICKED), CLICK_GAP * (j + 1)))
        if item in ordered:
            events.append((item, int(Event.ORDERED), CLICK_GAP * (j + 1) + ORDER_GAP))
    return events


def _append(
    rows: dict[str, list[Any]], user: str, qid: int | None, item: int, event: int, when: int, sid: int
) -> None:
    for name, value in zip(INTERACTION_SCHEMA.names, (user, qid, item, event, when, sid), strict=True):
        rows[name].append(value)


# --- relevance ----------------------------------------------------------------------------------


def _read_relevance(path: Path, items: _Items, dropped: Counter[str]) -> list[tuple[str, int, float]]:
    """(query, item id, relevance 1..3) of the pairs whose title an item has."""
    before = Counter(dropped)
    parsed = []
    for line in read_jsonl(path):
        score = line.number("score")
        if not 0.0 <= score <= 3.0:
            raise line.error("score", f"{score!r} outside [0, 3]")
        title, brand, seller = (
            line.text("item_title"),
            _brand(line.text("brand", False)),
            line.text("seller_name", False),
        )
        line.text("attr_value", False)  # checked; the item's own attributes are the catalogue's
        parsed.append((line.text("query"), title, brand, seller, 1.0 + 2.0 * score / 3.0))
    rows_of = items.rows_by_title({p[1] for p in parsed})
    pairs = []
    for query, title, brand, seller, relevance in parsed:
        rows = rows_of.get(title)
        if rows is None:
            dropped["relevance_unknown_title"] += 1
            continue
        pairs += [(query, items.ids[row], relevance) for row in _narrow(rows, items, brand, seller)]
    _warn_dropped(path, dropped, before)
    return pairs


def _narrow(rows: list[int], items: _Items, brand: str | None, seller: str | None) -> list[int]:
    """Of the items sharing a title, those whose brand and seller match the pair's (all if none does)."""
    if len(rows) == 1:
        return rows
    matching = [
        r
        for r in rows
        if (brand is None or items.brands[r] == brand) and (seller is None or items.sellers[r] == seller)
    ]
    return matching or rows


def _judgments(pairs: list[tuple[str, int, float]], query_id: dict[str, int]) -> pa.Table:
    """One judgment per (query, item); a pair judged twice keeps its highest relevance."""
    best: dict[tuple[int, int], float] = {}
    for query, item, relevance in pairs:
        key = (query_id[query], item)
        best[key] = max(relevance, best.get(key, relevance))
    keys = sorted(best)
    return pa.Table.from_pydict(
        {
            "query_id": [q for q, _ in keys],
            "item_id": [i for _, i in keys],
            "relevance": [best[k] for k in keys],
        },
        schema=JUDGMENT_SCHEMA,
    )
