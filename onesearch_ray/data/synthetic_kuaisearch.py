"""Seeded synthetic track in the KuaiSearch layout, in Chinese, with known ground truth.

The world is the synthetic track's (:mod:`onesearch_ray.data.synthetic`), drawn by the same code: item
attributes, users' preferences, query intents, graded relevance, and the search log's click and
order model (``click_model``). Only the vocabulary (a small hand-written Chinese one), the text
(titles and queries written without spaces, as Chinese ones are) and the files differ: this module
writes the JSON lines :mod:`onesearch_ray.data.kuaisearch` reads, plus :data:`WORLD_FILE` with the
query intents (by the ids the loader gives) and the behaviour config, so the loaded track knows the
relevance of every item and ``onesearch simulate`` can replay the click model.

Query ids and splits are the loader's (sorted text, :func:`~onesearch_ray.data.kuaisearch.query_split`);
as in the synthetic track, valid/test queries never appear in the sessions, only in the relevance
pairs. Each user has a few clicks and orders before the log, which reach the track only through the
sessions' ``recently_clicked_item_ids`` / ``recently_purchased_item_ids`` lists.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from itertools import groupby
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from onesearch_ray.config import require_non_negative
from onesearch_ray.data.kuaisearch import CATEGORY_FIELDS, CATEGORY_SEP, FILES, queries_table
from onesearch_ray.data.loaders import WORLD_FILE
from onesearch_ray.data.schemas import Event
from onesearch_ray.data.synthetic import (
    _PRE_ENTITY,
    SyntheticConfig,
    _Catalogue,
    _Category,
    _generate_judgments,
    _generate_users,
    _simulate_log,
    _Users,
    _Vocab,
    item_codes,
    sample_queries,
    zipf_popularity,
)
from onesearch_ray.io import atomic_path, write_json


def _category(
    path: str, entities: str, brands: str, materials: str, sizes: str, audiences: str = ""
) -> _Category:
    """A leaf category from space-separated value lists (``path``: its levels, top first)."""
    return _Category(
        CATEGORY_SEP.join(path.split()),
        *(tuple(values.split()) for values in (entities, brands, materials, sizes, audiences)),
    )


# Fictional brands; the shared ones sell in every category.
ZH_CATEGORIES: tuple[_Category, ...] = (
    _category(
        "数码 手机通讯 手机",
        "智能手机 5G手机 游戏手机 老人机",
        "华星 米格 青橙 极光",
        "",
        "128GB 256GB 512GB",
    ),
    _category("数码 影音娱乐 耳机", "蓝牙耳机 降噪耳机 头戴式耳机 运动耳机", "声悦 律动 音朗 极光", "", ""),
    _category(
        "数码 电脑办公 笔记本电脑",
        "轻薄本 游戏本 商务本 二合一笔记本",
        "联翔 华星 锐科 青橙",
        "",
        "13.3英寸 14英寸 15.6英寸 16英寸",
    ),
    _category(
        "运动户外 运动鞋包 运动鞋",
        "跑步鞋 篮球鞋 板鞋 训练鞋",
        "飞步 迅跑 踏云 锐动",
        "网面 皮面 飞织",
        "38码 39码 40码 41码 42码 43码",
        "男款 女款 儿童",
    ),
    _category(
        "服饰 女装 连衣裙",
        "碎花连衣裙 针织连衣裙 吊带连衣裙 衬衫裙",
        "衣香 素锦 栀语 木棉",
        "雪纺 棉麻 真丝 针织",
        "S码 M码 L码 XL码",
    ),
    _category(
        "服饰 外套 羽绒服",
        "短款羽绒服 长款羽绒服 轻薄羽绒服 连帽羽绒服",
        "雪域 冰峰 暖阳 北岭",
        "白鸭绒 白鹅绒 灰鸭绒",
        "M码 L码 XL码 XXL码",
        "男款 女款 儿童",
    ),
    _category(
        "服饰 男装 T恤",
        "短袖T恤 长袖T恤 POLO衫 印花T恤",
        "型男 简行 潮动 木棉",
        "纯棉 冰丝 莫代尔",
        "M码 L码 XL码 XXL码",
        "男款 女款 情侣款",
    ),
    _category(
        "家电 厨房电器 电饭煲",
        "智能电饭煲 迷你电饭煲 球釜电饭煲 压力电饭煲",
        "美厨 九味 苏厨 福家",
        "不锈钢内胆 陶瓷内胆 铁釜内胆",
        "2L 3L 4L 5L",
    ),
    _category(
        "家电 个护电器 吹风机",
        "负离子吹风机 高速吹风机 折叠吹风机 静音吹风机",
        "风语 飞羽 速干 美厨",
        "",
        "1200W 1600W 2000W",
    ),
    _category(
        "美妆 护肤 面霜",
        "保湿面霜 美白面霜 抗皱面霜 修护面霜",
        "雪肌 花漾 颜悦 水韵",
        "",
        "30g 50g 100g",
        "男士 女士",
    ),
    _category(
        "运动户外 户外装备 帐篷",
        "露营帐篷 速开帐篷 天幕帐篷 儿童帐篷",
        "野行 山径 探峰 营地",
        "牛津布 涤纶 硅胶涂层",
        "2人 3-4人 5-8人",
    ),
    _category(
        "母婴 玩具 积木",
        "拼装积木 磁力积木 大颗粒积木 木质积木",
        "童趣 乐拼 积木星 智趣",
        "ABS塑料 榉木",
        "100块 300块 500块 1000块",
        "3-6岁 6-12岁",
    ),
)
ZH_SHARED_BRANDS = ("优品生活", "百物", "家简")
ZH_COLOURS = ("黑色", "白色", "灰色", "红色", "蓝色", "绿色", "粉色", "紫色", "金色", "银色")
ZH_STYLES = ("新款", "简约", "百搭", "潮流", "复古", "轻奢", "韩版")
TAGS = ("【官方正品】", "【新品上市】", "【包邮】", "【限时特惠】")
STORES = ("好物精选店", "星辰优选", "暖暖生活馆", "乐享工厂店", "小美百货店", "阿强数码")
ENTRANCES = ("search_entrance_homepage", "search_entrance_mall", "search_entrance_detail")
GENDERS = ("女", "男")
AGE_BUCKETS = ("18-24", "25-34", "35-44", "45-54", "55+")
CITIES = ("北京", "上海", "广州", "深圳", "成都", "杭州", "武汉", "西安")
# Title word orders, chosen per item (the same attributes, not one template a model reads off).
TITLE_ORDERS = (
    ("tag", "brand", "style", "audience", "entity", "material", "colour", "size", "code"),
    ("brand", "code", "colour", "style", "entity", "audience", "size", "material"),
    ("tag", "style", "colour", "audience", "entity", "brand", "size", "material", "code"),
)
CODE_LETTERS = "ABCDEFGHJKLMNPRSTVWXZ"
# Relevance 3 / 2 / 1 (whole intent / category only / other) as KuaiSearch scores 0-3.
SCORE_OF_RELEVANCE = {3.0: 3, 2.0: 2, 1.0: 0}
JUDGMENT_COLUMNS = ("query_id", "item_id", "relevance")


@dataclass(frozen=True)
class KuaiSearchSynthConfig:
    """Sizes of the Chinese KuaiSearch-layout track; the click model is :class:`SyntheticConfig`'s."""

    seed: int = 0
    n_items: int = 3000
    n_users: int = 400
    n_queries: int = 600
    n_sessions: int = 5000
    impressions_per_session: int = 10
    negatives_per_session: int = 3  # shown, unclicked items written as target lines (ranking negatives)
    history_length: int = 10  # longest recently clicked / purchased list
    prehistory: int = 3  # at most this many clicks per user before the log

    def __post_init__(self) -> None:
        require_non_negative(self, ("negatives_per_session", "history_length", "prehistory"))
        self.behaviour()  # its checks: sizes, impressions_per_session

    def behaviour(self) -> SyntheticConfig:
        """The synthetic track's config with these sizes: what draws the world and the log."""
        return SyntheticConfig(
            seed=self.seed,
            n_items=self.n_items,
            n_users=self.n_users,
            n_queries=self.n_queries,
            n_sessions=self.n_sessions,
            n_categories=len(ZH_CATEGORIES),
            impressions_per_session=self.impressions_per_session,
            browse_fraction=0.0,  # a KuaiSearch session is a search: it has a query
            history_length=self.history_length,
        )


def write_kuaisearch_synthetic(
    directory: str | os.PathLike, config: KuaiSearchSynthConfig | None = None
) -> Path:
    """Generate the Chinese track and write its KuaiSearch-layout files and :data:`WORLD_FILE`."""
    config = config or KuaiSearchSynthConfig()
    files, world = generate_kuaisearch_files(config)
    root = Path(directory)
    # sessions.jsonl last: a directory is detected as kuaisearch only once it is complete.
    for name in ("items", "users", "impressions", "relevance"):
        _write_jsonl(root / FILES[name], files[name])
    write_json(root / WORLD_FILE, world)
    _write_jsonl(root / FILES["sessions"], files["sessions"])
    return root


def generate_kuaisearch_files(config: KuaiSearchSynthConfig) -> tuple[dict[str, list[dict]], dict[str, Any]]:
    """The records of each file (by :data:`FILES` name) and the world file's payload."""
    behaviour = config.behaviour()
    rng_items, rng_users, rng_queries, rng_log, rng_text = (
        np.random.default_rng(s) for s in np.random.SeedSequence(config.seed).spawn(5)
    )
    vocab = _Vocab(ZH_CATEGORIES, ZH_COLOURS, ZH_STYLES, ZH_SHARED_BRANDS)
    codes = item_codes(vocab, config.n_items, rng_items)
    popularity = zipf_popularity(config.n_items, rng_items)
    by_category = [np.flatnonzero(codes["category"] == c) for c in range(len(ZH_CATEGORIES))]
    ids = pa.table({"item_id": np.arange(1, config.n_items + 1)})
    catalogue = _Catalogue(ids, codes, popularity, by_category)
    users = _generate_users(behaviour, vocab, catalogue, rng_users)
    texts, intents = sample_queries(
        behaviour, catalogue, rng_queries, lambda i: _query_text(vocab, i, rng_queries)
    )
    # The loader numbers queries by sorted text: put them in that order, so ids agree.
    order = sorted(range(len(texts)), key=texts.__getitem__)
    texts, intents = [texts[i] for i in order], [intents[i] for i in order]
    queries = queries_table(texts)
    judgments = _generate_judgments(behaviour, catalogue, intents, rng_queries)
    log = _simulate_log(behaviour, catalogue, users, queries, intents, rng_log)
    items = _item_records(vocab, codes, rng_text)
    sessions, impressions = _session_records(
        config, log, texts, _prehistory(config, catalogue, users, rng_text), rng_text
    )
    files = {
        "items": items,
        "users": _user_records(users.table, rng_text),
        "sessions": sessions,
        "impressions": impressions,
        "relevance": _relevance_records(judgments, texts, items),
    }
    world = {
        "config": asdict(behaviour),
        "kuaisearch": asdict(config),
        "query_intent": [[qid, vocab.describe(intent)] for qid, intent in enumerate(intents, start=1)],
    }
    return files, world


def _write_jsonl(path: Path, records: Iterable[dict]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")


# --- text ---------------------------------------------------------------------------------------


def _query_text(vocab: _Vocab, intent: dict[str, int], rng: np.random.Generator) -> str:
    """Constraints before the entity (brand first unless shuffled), size after; no spaces."""
    if "entity" not in intent:
        return vocab.category_names[intent["category"]].split(CATEGORY_SEP)[-1]  # the leaf: "耳机"
    before = [vocab.values[kind][intent[kind]] for kind in _PRE_ENTITY if kind in intent]
    if len(before) > 1 and rng.random() < 0.3:
        before = [before[i] for i in rng.permutation(len(before))]
    after = [vocab.values["size"][intent["size"]]] if "size" in intent else []
    return "".join([*before, vocab.values["entity"][intent["entity"]], *after])


def _item_records(vocab: _Vocab, codes: dict[str, np.ndarray], rng: np.random.Generator) -> list[dict]:
    """items.jsonl: titles in one of :data:`TITLE_ORDERS`, each with a distinct model code (titles
    are then distinct, so relevance pairs match one item); the ground truth in ``attributes``."""
    n = len(codes["category"])
    model = rng.permutation(max(10 * n, 1000))[:n]
    orders = rng.integers(0, len(TITLE_ORDERS), n)
    tags = rng.integers(-3 * len(TAGS), len(TAGS), n)  # a quarter of the titles carry a tag (>= 0)
    seller_kind, store = rng.random(n), rng.integers(0, len(STORES), n)
    records = []
    for row in range(n):
        parts = {k: vocab.values[k][codes[k][row]] for k in vocab.values if codes[k][row] >= 0}
        brand = parts.pop("brand")
        levels = vocab.category_names[codes["category"][row]].split(CATEGORY_SEP)
        words = parts | {
            "brand": brand,
            "tag": TAGS[tags[row]] if tags[row] >= 0 else "",
            "code": f"{CODE_LETTERS[model[row] % 21]}{model[row] // 21}",
        }
        records.append(
            {
                "item_id": row + 1,
                "item_title": "".join(words.get(k, "") for k in TITLE_ORDERS[orders[row]]),
                "brand_name": brand,
                "seller_name": _seller(brand, seller_kind[row], STORES[store[row]]),
                **dict(zip(CATEGORY_FIELDS, levels, strict=True)),
                "attributes": parts,
            }
        )
    return records


def _seller(brand: str, u: float, store: str) -> str:
    return f"{brand}官方旗舰店" if u < 0.5 else f"{brand}专卖店" if u < 0.7 else store


def _user_records(users: pa.Table, rng: np.random.Generator) -> list[dict]:
    """users.jsonl: a profile (gender, age bucket, city) and the known preferences."""
    records = []
    for user in users.to_pylist():
        profile = {
            "gender": GENDERS[rng.integers(len(GENDERS))],
            "age_bucket": AGE_BUCKETS[rng.integers(len(AGE_BUCKETS))],
            "location": CITIES[rng.integers(len(CITIES))],
        }
        preferences = {k: user[k] for k in ("preferred_categories", "preferred_brands", "preferred_colours")}
        records.append({"user_id": user["user_id"], **profile, **preferences})
    return records


def _relevance_records(judgments: pa.Table, texts: list[str], items: list[dict]) -> list[dict]:
    """relevance.jsonl: each judgment as a (query, item text, score) pair."""
    records = []
    for qid, item_id, relevance in zip(*(judgments[c].to_pylist() for c in JUDGMENT_COLUMNS), strict=True):
        item = items[item_id - 1]
        records.append(
            {
                "query": texts[qid - 1],
                "item_title": item["item_title"],
                "brand": item["brand_name"],
                "seller_name": item["seller_name"],
                "attr_value": ",".join(item["attributes"].values()),
                "score": SCORE_OF_RELEVANCE[relevance],
            }
        )
    return records


# --- sessions -----------------------------------------------------------------------------------


def _prehistory(
    config: KuaiSearchSynthConfig, catalogue: _Catalogue, users: _Users, rng: np.random.Generator
) -> dict[str, tuple[list[int], list[int]]]:
    """Per user, clicked and ordered item ids before the log: items of preferred categories."""
    out = {}
    for row, user in enumerate(users.table["user_id"].to_pylist()):
        pools = [catalogue.by_category[c] for c in users.preferred[row] if len(catalogue.by_category[c])]
        n = int(rng.integers(0, config.prehistory + 1)) if pools else 0
        clicks = []
        for _ in range(n):
            pool = pools[int(rng.integers(len(pools)))]
            clicks.append(int(pool[int(rng.integers(len(pool)))]) + 1)  # item id = row + 1
        out[user] = (clicks, [item for item in clicks if rng.random() < 0.3])
    return out


def _session_records(
    config: KuaiSearchSynthConfig,
    log: pa.Table,
    texts: list[str],
    prehistory: dict[str, tuple[list[int], list[int]]],
    rng: np.random.Generator,
) -> tuple[list[dict], list[dict]]:
    """sessions.jsonl (a line per clicked item and per negative) and impressions.jsonl from the log."""
    columns = [log[c].to_pylist() for c in ("user_id", "query_id", "item_id", "event", "session_id")]
    rows = list(zip(*columns, strict=True))
    sessions, impressions = [], []
    history = {user: (list(clicks), list(orders)) for user, (clicks, orders) in prehistory.items()}
    h = config.history_length
    for session, group in groupby(rows, key=lambda r: r[4]):  # the log is written session by session
        group = list(group)
        user, qid = group[0][0], group[0][1]
        shown = [item for _, _, item, event, _ in group if event == Event.SHOWN]
        clicked = [item for _, _, item, event, _ in group if event == Event.CLICKED]
        ordered = {item for _, _, item, event, _ in group if event == Event.ORDERED}
        clicks, orders = history.setdefault(user, ([], []))
        line = {
            "user_id": user,
            "session_id": session + 1,
            "time_index": session + 1,
            "search_entrance": ENTRANCES[rng.integers(len(ENTRANCES))],
            "query": texts[qid - 1],
            "recently_clicked_item_ids": clicks[-h:] if h else [],
            "recently_purchased_item_ids": orders[-h:] if h else [],
        }
        negatives = [item for item in shown if item not in clicked][: config.negatives_per_session]
        for item in shown:
            if item in clicked or item in negatives:
                flags = {"is_clicked": int(item in clicked), "is_purchased": int(item in ordered)}
                sessions.append(line | {"target_item_id": item} | flags)
        impressions.append({"user_id": user, "session_id": session + 1, "impressed_item_ids": shown})
        clicks.extend(clicked)
        orders.extend(item for item in clicked if item in ordered)
    return sessions, impressions
