"""Seeded synthetic track: catalogue, users, queries, judgments, a search log and sequences.

Everything derives from known attributes, so the ground truth is exact:

- an item has a category, an entity noun ("cordless drill"), a brand and a colour, and maybe a
  material, style, audience and size; its title, description and ``attributes`` map are built from
  them (word order varies, so titles are not a template a model can read attributes off trivially);
- a query has an *intent*: a category, and usually an entity and 0-2 attribute constraints
  (``track.extras["query_intent"]``); relevance is 3 when an item satisfies the whole intent, 2 when
  it is in the query's category only, 1 otherwise;
- users prefer 1-3 categories, some brands and colours; in the log a user issues train queries
  (mostly in preferred categories) or browses, sees ``impressions_per_session`` items, clicks with a
  probability from relevance x position x preference match, and orders some clicked items.

Valid/test queries never appear in the log, so a model trained on the log is scored on unseen
queries, as on Home Depot. Each stage has its own random stream: changing ``n_sessions`` does not
change the catalogue. Default config: well under a second; 1M items (``n_sessions=0``): seconds.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from onesearch_ray.config import require_non_negative
from onesearch_ray.data.loaders import WORLD_FILE, Track, query_intents, write_track
from onesearch_ray.data.schemas import (
    INTERACTION_SCHEMA,
    ITEM_SCHEMA,
    JUDGMENT_SCHEMA,
    QUERY_SCHEMA,
    SEQUENCE_SCHEMA,
    USER_SCHEMA,
    Event,
)
from onesearch_ray.io import read_json, write_json


class _Category(NamedTuple):
    name: str
    entities: tuple[str, ...]
    brands: tuple[str, ...]
    materials: tuple[str, ...]
    sizes: tuple[str, ...]
    audiences: tuple[str, ...] = ()


# Fictional brands; a few (SHARED_BRANDS) sell in every category, as real retail brands do.
CATEGORIES: tuple[_Category, ...] = (
    _Category(
        "power tools",
        ("cordless drill", "impact driver", "circular saw", "jigsaw", "angle grinder"),
        ("Voltmaster", "Ironclad", "Torqx", "Sparkline"),
        ("steel", "aluminium", "composite"),
        ("12V", "18V", "20V", "40V"),
    ),
    _Category(
        "lighting",
        ("lamp", "pendant light", "sconce", "floor lamp", "string lights"),
        ("Lumina", "Brightway", "Glowhaus", "Lumenco"),
        ("brass", "glass", "metal", "rattan", "ceramic"),
        ("12 inch", "18 inch", "24 inch"),
    ),
    _Category(
        "furniture",
        ("sofa", "armchair", "coffee table", "bookshelf", "ottoman"),
        ("Oakridge", "Sofana", "Nordhem", "Loftwood"),
        ("oak", "walnut", "velvet", "leather", "linen"),
        ("small", "medium", "large", "extra large"),
    ),
    _Category(
        "kitchen appliances",
        ("kettle", "toaster", "blender", "coffee maker", "air fryer"),
        ("Kettlix", "Brewmaster", "Chefline", "Zestro"),
        ("stainless steel", "glass", "plastic", "ceramic"),
        ("1 L", "1.5 L", "1.7 L", "2 L"),
    ),
    _Category(
        "footwear",
        ("sneaker", "boot", "sandal", "loafer", "slipper"),
        ("Stridex", "Trailfox", "Solemate", "Pacer"),
        ("leather", "suede", "canvas", "mesh"),
        ("size 6", "size 7", "size 8", "size 9", "size 10", "size 11"),
        ("men", "women", "kids"),
    ),
    _Category(
        "cookware",
        ("frying pan", "saucepan", "dutch oven", "wok", "baking sheet"),
        ("Panora", "Ironpan", "Culina", "Sautelle"),
        ("cast iron", "stainless steel", "aluminium", "copper"),
        ("8 inch", "10 inch", "12 inch", "5 qt"),
    ),
    _Category(
        "outerwear",
        ("jacket", "raincoat", "parka", "vest", "fleece"),
        ("Northpeak", "Rainshield", "Alpina", "Driftwood"),
        ("nylon", "wool", "cotton", "polyester", "down"),
        ("small", "medium", "large", "xl"),
        ("men", "women", "kids", "unisex"),
    ),
    _Category(
        "bedding",
        ("duvet cover", "pillow", "sheet set", "blanket", "mattress topper"),
        ("Dreamwell", "Slumbra", "Cozynest", "Linenly"),
        ("cotton", "linen", "flannel", "microfiber", "silk"),
        ("twin", "full", "queen", "king"),
    ),
    _Category(
        "garden",
        ("garden hose", "pruner", "planter", "lawn mower", "rake"),
        ("Greenthumb", "Yardpro", "Bloomfield", "Verdant"),
        ("rubber", "steel", "plastic", "wood"),
        ("25 ft", "50 ft", "75 ft", "100 ft"),
    ),
    _Category(
        "bathroom",
        ("bath towel", "shower head", "bath mat", "toilet brush", "vanity mirror"),
        ("Aquaria", "Splashline", "Tidewell", "Rinso"),
        ("cotton", "bamboo", "chrome", "ceramic"),
        ("small", "medium", "large"),
    ),
    _Category(
        "storage",
        ("storage bin", "shelf unit", "drawer organizer", "laundry basket", "shoe rack"),
        ("Stackit", "Tidybox", "Binwise", "Shelfmate"),
        ("plastic", "wicker", "fabric", "metal", "wood"),
        ("10 L", "20 L", "40 L", "60 L"),
    ),
    _Category(
        "hand tools",
        ("hammer", "screwdriver set", "wrench", "pliers", "tape measure"),
        ("Gripwell", "Forgeline", "Trutool", "Steelhand"),
        ("steel", "chrome vanadium", "fiberglass", "wood"),
        ("6 inch", "8 inch", "10 inch", "12 inch"),
    ),
    _Category(
        "paint",
        ("interior paint", "spray paint", "paint roller", "primer", "wood stain"),
        ("Colorcraft", "Brushwell", "Tintly", "Coatmaster"),
        ("latex", "acrylic", "oil-based", "water-based"),
        ("1 qt", "1 gal", "5 gal"),
    ),
    _Category(
        "toys",
        ("building blocks", "jigsaw puzzle", "plush toy", "toy car", "board game"),
        ("Tinytown", "Funfort", "Blockly", "Wonderkin"),
        ("wood", "plastic", "plush", "cardboard"),
        ("ages 3+", "ages 6+", "ages 8+"),
        ("kids", "toddler", "teen"),
    ),
    _Category(
        "bags",
        ("backpack", "tote bag", "duffel bag", "messenger bag", "wallet"),
        ("Carryall", "Packwell", "Roamer", "Satchely"),
        ("canvas", "leather", "nylon", "polyester"),
        ("20 L", "30 L", "40 L"),
        ("men", "women", "unisex"),
    ),
    _Category(
        "phone accessories",
        ("phone case", "charger", "usb cable", "headphones", "power bank"),
        ("Chargely", "Voltix", "Cablecraft", "Soundwave"),
        ("silicone", "plastic", "braided nylon", "aluminium"),
        ("1 m", "2 m", "3 m"),
    ),
)
SHARED_BRANDS = ("Acme", "HomeCraft", "Everyday", "Northwind")
COLOURS = (
    "black",
    "white",
    "grey",
    "red",
    "blue",
    "green",
    "navy",
    "beige",
    "brown",
    "silver",
    "pink",
    "yellow",
)
STYLES = ("modern", "classic", "rustic", "industrial", "minimalist", "vintage", "scandinavian")
LINES = ("Pro", "Max", "Plus", "Lite", "Elite", "2.0", "XL", "Compact")
SEGMENTS = ("bargain", "premium", "diy", "family", "student")
AUDIENCE_TITLE = {
    "men": "Men's",
    "women": "Women's",
    "kids": "Kids'",
    "unisex": "Unisex",
    "toddler": "Toddler",
    "teen": "Teen",
}
AUDIENCE_QUERY = {
    "men": "mens",
    "women": "womens",
    "kids": "kids",
    "unisex": "unisex",
    "toddler": "toddler",
    "teen": "teen",
}
# Attribute types in the order they are stored in the items' ``attributes`` map.
ATTRIBUTE_TYPES = ("brand", "entity", "colour", "material", "style", "audience", "size")
# Constraint types a query may add to its entity; placed before the entity in the query text,
# except size which follows it ("cordless drill 20v").
_PRE_ENTITY = ("brand", "audience", "style", "colour", "material")


@dataclass(frozen=True)
class SyntheticConfig:
    """Sizes and behaviour model of the synthetic track."""

    seed: int = 0
    n_items: int = 3000
    n_users: int = 400
    n_queries: int = 600
    n_sessions: int = 6000
    n_categories: int = 12
    impressions_per_session: int = 10
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    # Click model: P(click) = click_by_relevance[rel - 1] * (position + 1) ** -position_bias
    #   * (1 + brand_boost if preferred brand) * (1 + colour_boost if preferred colour)
    #   * (1 + category_boost if preferred category), capped at 0.95.
    click_by_relevance: tuple[float, float, float] = (0.02, 0.12, 0.40)
    position_bias: float = 0.5
    brand_boost: float = 1.0
    colour_boost: float = 0.5
    category_boost: float = 0.3
    # P(order | click) = order_rate * (1 + brand_boost if preferred brand), x0.3 unless relevance 3.
    order_rate: float = 0.2
    browse_fraction: float = 0.1  # sessions without a query (query_id null)
    preferred_query_fraction: float = 0.75  # search sessions whose query is in a preferred category
    relevant_impression_fraction: float = 0.6  # impressions drawn from the query's category
    max_judged_relevant: int = 30  # judged 3.0 + 2.0 items per query
    judged_irrelevant: int = 5  # judged 1.0 items per query
    typo_rate: float = 0.08
    case_rate: float = 0.1
    history_length: int = 10
    min_user_clicks: int = 3  # users with fewer clicks get no sequence rows
    start_time: int = 1_700_000_000

    def __post_init__(self) -> None:
        if not 1 <= self.n_categories <= len(CATEGORIES):
            raise ValueError(f"n_categories must be in [1, {len(CATEGORIES)}], got {self.n_categories}")
        require_non_negative(
            self,
            (
                "n_items",
                "n_users",
                "n_queries",
                "n_sessions",
                "max_judged_relevant",
                "judged_irrelevant",
                "history_length",
            ),
        )
        if self.impressions_per_session < 1 or self.min_user_clicks < 2:
            raise ValueError("impressions_per_session must be >= 1 and min_user_clicks >= 2")
        if self.valid_fraction < 0 or self.test_fraction < 0 or self.valid_fraction + self.test_fraction > 1:
            raise ValueError("valid_fraction and test_fraction must be >= 0 and sum to at most 1")


def generate_synthetic(config: SyntheticConfig | None = None) -> Track:
    """Build the synthetic track (name "synthetic", root "."), deterministic given ``config.seed``."""
    config = config or SyntheticConfig()
    rng_items, rng_users, rng_queries, rng_log = (
        np.random.default_rng(s) for s in np.random.SeedSequence(config.seed).spawn(4)
    )
    vocab = _Vocab(CATEGORIES[: config.n_categories])
    catalogue = _generate_items(config, vocab, rng_items)
    users = _generate_users(config, vocab, catalogue, rng_users)
    queries, intents = _generate_queries(config, vocab, catalogue, rng_queries)
    judgments = _generate_judgments(config, catalogue, intents, rng_queries)
    interactions = _simulate_log(config, catalogue, users, queries, intents, rng_log)
    return Track(
        name="synthetic",
        root=Path("."),
        items=catalogue.table,
        queries=queries,
        judgments=judgments,
        interactions=interactions,
        users=users.table,
        sequences=_sequences(config, interactions),
        format="onesearch",
        extras={
            "query_intent": {
                qid: vocab.describe(intent)
                for qid, intent in zip(queries["query_id"].to_pylist(), intents, strict=True)
            }
        },
    )


def write_synthetic(directory: str | os.PathLike, config: SyntheticConfig | None = None) -> Path:
    """Generate the synthetic track and write it (onesearch format) to ``directory``, with
    :data:`WORLD_FILE`: the config and the query intents, which the track's tables do not hold."""
    config = config or SyntheticConfig()
    track = generate_synthetic(config)
    root = write_track(track, directory)
    intents = track.extras["query_intent"]
    write_json(
        root / WORLD_FILE, {"config": asdict(config), "query_intent": [[q, intents[q]] for q in intents]}
    )
    return root


def read_world(directory: str | os.PathLike) -> tuple[SyntheticConfig, dict[int, dict[str, str]]]:
    """The generating config and the query intents (by query id) of a track ``write_synthetic`` wrote."""
    path = Path(directory) / WORLD_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: not a synthetic track, or written before {WORLD_FILE} existed "
            "(write it again with `onesearch synth`)"
        )
    payload = read_json(path)
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in payload["config"].items()}
    return SyntheticConfig(**fields), query_intents(payload, path)


def click_model(
    config: SyntheticConfig,
    relevance: np.ndarray,
    likes_brand: np.ndarray,
    likes_colour: np.ndarray,
    likes_category: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The log's user behaviour for one list of shown items, best position first: (P(click),
    P(order | click)) per item, from relevance (1..3) x position x the user's preference matches."""
    relevance = np.asarray(relevance, dtype=np.int64)
    position = (np.arange(len(relevance)) + 1.0) ** -config.position_bias
    p_click = (
        np.asarray(config.click_by_relevance)[relevance - 1]
        * position
        * (1 + config.brand_boost * likes_brand)
        * (1 + config.colour_boost * likes_colour)
        * (1 + config.category_boost * likes_category)
    )
    p_order = config.order_rate * (1 + config.brand_boost * likes_brand) * np.where(relevance == 3, 1.0, 0.3)
    return np.minimum(p_click, 0.95), np.minimum(p_order, 0.95)


# --- vocabulary ---------------------------------------------------------------------------------


class _Vocab:
    """Global value lists per attribute type, and per-category option matrices of indices into them."""

    def __init__(
        self,
        categories: tuple[_Category, ...],
        colours: tuple[str, ...] = COLOURS,
        styles: tuple[str, ...] = STYLES,
        shared_brands: tuple[str, ...] = SHARED_BRANDS,
    ) -> None:
        self.categories = categories
        self.category_names = [c.name for c in categories]
        self.shared_brand_names = shared_brands
        own_brands = [b for c in categories for b in c.brands]
        self.values: dict[str, list[str]] = {
            "brand": _unique([*own_brands, *shared_brands]),
            "entity": _unique([e for c in categories for e in c.entities]),
            "colour": list(colours),
            "material": _unique([m for c in categories for m in c.materials]),
            "style": list(styles),
            "audience": _unique([a for c in categories for a in c.audiences]),
            "size": _unique([s for c in categories for s in c.sizes]),
        }
        self.index = {kind: {v: i for i, v in enumerate(vals)} for kind, vals in self.values.items()}
        self.options = {
            kind: self._matrix([getattr(c, attr) for c in categories], kind)
            for kind, attr in (
                ("entity", "entities"),
                ("brand", "brands"),
                ("material", "materials"),
                ("size", "sizes"),
                ("audience", "audiences"),
            )
        }
        self.shared_brands = np.array([self.index["brand"][b] for b in shared_brands])

    def _matrix(self, per_category: list[tuple[str, ...]], kind: str) -> tuple[np.ndarray, np.ndarray]:
        width = max(1, *(len(v) for v in per_category))
        matrix = np.full((len(per_category), width), -1, dtype=np.int64)
        for row, values in enumerate(per_category):
            matrix[row, : len(values)] = [self.index[kind][v] for v in values]
        return matrix, np.array([len(v) for v in per_category])

    def pick(self, kind: str, category: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Option ``floor(u * count)`` of each row's category; -1 where the category has none."""
        matrix, counts = self.options[kind]
        n = counts[category]
        choice = matrix[category, np.minimum((u * n).astype(np.int64), np.maximum(n - 1, 0))]
        return np.where(n > 0, choice, -1)

    def describe(self, intent: dict[str, int]) -> dict[str, str]:
        """An intent with names instead of indices."""
        return {
            kind: (self.category_names[v] if kind == "category" else self.values[kind][v])
            for kind, v in intent.items()
        }


def _unique(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _display(value: str) -> str:
    """Title case for titles, leaving tokens with digits ("20V", "1.7 L") alone."""
    return " ".join(w if any(ch.isdigit() for ch in w) else w[:1].upper() + w[1:] for w in value.split())


# --- items --------------------------------------------------------------------------------------


@dataclass
class _Catalogue:
    table: pa.Table
    codes: dict[str, np.ndarray]  # attribute kind (and "category") -> value index per item, -1 = none
    popularity: np.ndarray
    by_category: list[np.ndarray]  # item row indices per category

    def relevance(self, intent: dict[str, int], rows: np.ndarray) -> np.ndarray:
        """Ground-truth relevance (1, 2, 3) of items ``rows`` for a query intent."""
        in_category = self.codes["category"][rows] == intent["category"]
        full = in_category.copy()
        for kind, value in intent.items():
            if kind != "category":
                full &= self.codes[kind][rows] == value
        return np.where(full, 3, np.where(in_category, 2, 1)).astype(np.int64)


def item_codes(vocab: _Vocab, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Category and attribute value indices (-1: none) of ``n`` items, per kind (``ATTRIBUTE_TYPES``)."""
    n_cat, n_shared = len(vocab.categories), len(vocab.shared_brands)
    # Uneven category sizes, as in a real catalogue.
    share = rng.gamma(2.0, size=n_cat)
    category = rng.choice(n_cat, size=n, p=share / share.sum())
    u = rng.random((8, n))
    own_brand = vocab.pick("brand", category, u[0] ** 1.5)  # skewed: the first brand sells most
    shared = vocab.shared_brands[(u[1] * n_shared).astype(np.int64) % n_shared]
    return {
        "category": category,
        "brand": np.where(u[2] < 0.8, own_brand, shared),
        "entity": vocab.pick("entity", category, u[3]),
        "colour": rng.integers(0, len(vocab.values["colour"]), size=n),
        "material": np.where(u[4] < 0.85, vocab.pick("material", category, u[5]), -1),
        "style": np.where(u[6] < 0.5, rng.integers(0, len(vocab.values["style"]), size=n), -1),
        "audience": np.where(u[7] < 0.8, vocab.pick("audience", category, rng.random(n)), -1),
        "size": np.where(rng.random(n) < 0.7, vocab.pick("size", category, rng.random(n)), -1),
    }


def _generate_items(config: SyntheticConfig, vocab: _Vocab, rng: np.random.Generator) -> _Catalogue:
    n, n_cat = config.n_items, len(vocab.categories)
    codes = item_codes(vocab, n, rng)
    category = codes["category"]
    line = np.where(rng.random(n) < 0.3, rng.integers(0, len(LINES), size=n), -1)
    model = np.where(rng.random(n) < 0.15, rng.integers(0, 26 * 26 * 900, size=n), -1)
    popularity = zipf_popularity(n, rng)
    display = {
        kind: _take([_display(v) for v in vocab.values[kind]], codes[kind]) for kind in ATTRIBUTE_TYPES
    }
    display["audience"] = _take([AUDIENCE_TITLE[a] for a in vocab.values["audience"]], codes["audience"])
    display["size"] = _take([v[:1].upper() + v[1:] for v in vocab.values["size"]], codes["size"])
    display["line"] = _join(_take(list(LINES), line), _model_numbers(model))
    lower = {kind: _take(vocab.values[kind], codes[kind]) for kind in ATTRIBUTE_TYPES if kind != "brand"}
    lower["brand"] = display["brand"]
    table = pa.Table.from_arrays(
        [
            pa.array(np.arange(1, n + 1, dtype=np.int64)),
            _titles(display, rng.integers(0, 4, size=n)),
            display["brand"],
            _take(vocab.category_names, category),
            _descriptions(display, lower, rng.random(n) < 0.8),
            _attribute_map(lower, codes),
            pa.array(popularity),
        ],
        schema=ITEM_SCHEMA,
    )
    by_category = [np.flatnonzero(category == c) for c in range(n_cat)]
    return _Catalogue(table, codes, popularity, by_category)


def zipf_popularity(n: int, rng: np.random.Generator) -> np.ndarray:
    """Zipf-like popularity over a random ranking of ``n`` items."""
    return 1.0 / (rng.permutation(n) + 1.0) ** 0.8


def _model_numbers(model: np.ndarray) -> pa.Array:
    """Model numbers like "KX-412" (null where model < 0): they make most titles distinct, as in retail."""
    letters = "ABCDEFGHJKLMNPRSTVWXZ"
    present = np.flatnonzero(model >= 0)
    codes = model[present]
    names = [
        f"{letters[a % 21]}{letters[(a // 21) % 21]}-{100 + c % 900}"
        for a, c in zip((codes // 900).tolist(), codes.tolist(), strict=True)
    ]
    out = np.full(len(model), None, dtype=object)
    out[present] = names
    return pa.array(out, pa.string())


def _take(values: list[str], codes: np.ndarray) -> pa.Array:
    """String array of ``values[codes]`` with nulls where codes < 0."""
    indices = pa.array(np.maximum(codes, 0), mask=codes < 0)
    return pa.array(values or [""], type=pa.string()).take(indices)


def _join(*parts: Any, sep: str = " ") -> pa.Array:
    """Join the non-null parts per row; null where all parts are null.

    Built from emit_null joins plus coalesce because ``null_handling="skip"`` drops all-null rows
    (pyarrow 26 returns a shorter array).
    """
    n = next(len(p) for p in parts if isinstance(p, pa.Array))
    joined = pa.nulls(n, pa.string())
    for part in parts:
        both = pc.binary_join_element_wise(joined, part, sep, null_handling="emit_null")
        joined = pc.coalesce(both, joined, part)
    return joined


def _wrap(*parts: Any) -> pa.Array:
    """Concatenate parts, null if any is null (e.g. "(" material ")")."""
    return pc.binary_join_element_wise(*parts, "", null_handling="emit_null")


def _titles(d: dict[str, pa.Array], template: np.ndarray) -> pa.Array:
    """Four word orders, chosen per item, so titles are not one fixed template."""
    variants = (
        # Acme Women's Modern Cordless Drill Pro 20V Black Steel
        lambda d: _join(
            d["brand"],
            d["audience"],
            d["style"],
            d["entity"],
            d["line"],
            d["size"],
            d["colour"],
            d["material"],
        ),
        # Acme Black Steel Cordless Drill Pro - 20V
        lambda d: _join(
            _join(d["brand"], d["style"], d["colour"], d["material"], d["audience"], d["entity"], d["line"]),
            d["size"],
            sep=" - ",
        ),
        # Modern Black Women's Cordless Drill Pro by Acme (Steel), 20V
        lambda d: _join(
            _join(
                d["style"],
                d["colour"],
                d["audience"],
                d["entity"],
                d["line"],
                _wrap("by ", d["brand"]),
                _wrap("(", d["material"], ")"),
            ),
            d["size"],
            sep=", ",
        ),
        # Acme Pro Cordless Drill in Black, Steel 20V, Modern
        lambda d: _join(
            _join(d["brand"], d["line"], d["audience"], d["entity"], _wrap("in ", d["colour"])),
            _join(d["material"], d["size"]),
            d["style"],
            sep=", ",
        ),
    )
    # Build each variant only for its own rows, then put the rows back in item order.
    rows = [np.flatnonzero(template == t) for t in range(len(variants))]
    parts = [
        build({k: v.take(pa.array(r)) for k, v in d.items()}) for build, r in zip(variants, rows, strict=True)
    ]
    inverse = np.empty(len(template), dtype=np.int64)
    inverse[np.concatenate(rows)] = np.arange(len(template))
    return pa.concat_arrays(parts).take(pa.array(inverse))


def _descriptions(d: dict[str, pa.Array], lower: dict[str, pa.Array], keep: np.ndarray) -> pa.Array:
    sentence = _join(
        "This",
        lower["style"],
        lower["material"],
        lower["entity"],
        "from",
        d["brand"],
        "comes in",
        _wrap(lower["colour"], "."),
    )
    audience = _wrap("Made for ", lower["audience"], ".")
    size = _wrap("Size: ", pc.replace_substring_regex(lower["size"], "^size ", ""), ".")
    text = _join(sentence, audience, size)
    return pc.if_else(pa.array(keep), text, pa.scalar(None, pa.string()))


def _attribute_map(lower: dict[str, pa.Array], codes: dict[str, np.ndarray]) -> pa.Array:
    """map<string,string> built from offsets, without a Python dict per item."""
    present = np.stack([codes[kind] >= 0 for kind in ATTRIBUTE_TYPES], axis=1)  # (n, types)
    offsets = np.concatenate([[0], np.cumsum(present.sum(axis=1))]).astype(np.int32)
    type_index = np.broadcast_to(np.arange(len(ATTRIBUTE_TYPES)), present.shape)[present]
    row_index = np.broadcast_to(np.arange(len(present))[:, None], present.shape)[present]
    keys = pa.array(list(ATTRIBUTE_TYPES), pa.string()).take(pa.array(type_index))
    # Row-major order over (item, type): gather each value from its type's column.
    stacked = pa.concat_arrays([lower[kind] for kind in ATTRIBUTE_TYPES])
    values = stacked.take(pa.array(type_index * len(present) + row_index))
    return pa.MapArray.from_arrays(pa.array(offsets), keys, values)


# --- users --------------------------------------------------------------------------------------


@dataclass
class _Users:
    table: pa.Table
    category: np.ndarray  # (users, categories) bool
    brand: np.ndarray  # (users, brands) bool
    colour: np.ndarray  # (users, colours) bool
    preferred: list[np.ndarray]  # preferred category indices per user


def _generate_users(
    config: SyntheticConfig, vocab: _Vocab, catalogue: _Catalogue, rng: np.random.Generator
) -> _Users:
    n_cat, n_brand = len(vocab.categories), len(vocab.values["brand"])
    share = np.array([len(rows) for rows in catalogue.by_category], dtype=float) + 1.0
    category = np.zeros((config.n_users, n_cat), bool)
    brand = np.zeros((config.n_users, n_brand), bool)
    colours_all = vocab.values["colour"]
    colour = np.zeros((config.n_users, len(colours_all)), bool)
    preferred, rows = [], []
    width = len(str(max(config.n_users - 1, 0)))
    for user in range(config.n_users):
        n_preferred = min(n_cat, int(rng.integers(1, 4)))
        cats = rng.choice(n_cat, size=n_preferred, replace=False, p=share / share.sum())
        own = [b for c in cats for b in vocab.categories[c].brands]
        candidates = _unique(own + list(vocab.shared_brand_names))
        brands = rng.choice(candidates, size=int(rng.integers(1, 3)), replace=False)
        colours = rng.choice(len(colours_all), size=int(rng.integers(1, 3)), replace=False)
        category[user, cats] = True
        brand[user, [vocab.index["brand"][b] for b in brands]] = True
        colour[user, colours] = True
        preferred.append(np.sort(cats))
        rows.append(
            {
                "user_id": f"u{user:0{width}d}",
                "segment": SEGMENTS[int(rng.integers(len(SEGMENTS)))],
                "preferred_categories": [vocab.category_names[c] for c in cats],
                "preferred_brands": [str(b) for b in brands],
                "preferred_colours": [colours_all[c] for c in colours],
            }
        )
    table = pa.Table.from_pylist(rows, schema=USER_SCHEMA) if rows else USER_SCHEMA.empty_table()
    return _Users(table, category, brand, colour, preferred)


# --- queries and judgments ----------------------------------------------------------------------


def _generate_queries(
    config: SyntheticConfig, vocab: _Vocab, catalogue: _Catalogue, rng: np.random.Generator
) -> tuple[pa.Table, list[dict[str, int]]]:
    """Queries sampled from popular items' attributes, so every query has at least one exact match."""
    texts, intents = sample_queries(
        config, catalogue, rng, lambda intent: _vary(_query_text(vocab, intent, rng), config, rng)
    )
    n = len(texts)
    split = np.full(n, "train", dtype=object)
    order = rng.permutation(n)
    n_test, n_valid = round(n * config.test_fraction), round(n * config.valid_fraction)
    split[order[:n_test]] = "test"
    split[order[n_test : n_test + n_valid]] = "valid"
    table = pa.Table.from_arrays(
        [
            pa.array(np.arange(1, n + 1, dtype=np.int64)),
            pa.array(texts, pa.string()),
            pa.array(split.tolist(), pa.string()),
        ],
        schema=QUERY_SCHEMA,
    )
    return table, intents


def sample_queries(
    config: SyntheticConfig,
    catalogue: _Catalogue,
    rng: np.random.Generator,
    text_of: Callable[[dict[str, int]], str],
) -> tuple[list[str], list[dict[str, int]]]:
    """Up to ``config.n_queries`` distinct (case-insensitive) query texts and their intents, each
    intent drawn from a popular item's attributes and written by ``text_of``."""
    texts: list[str] = []
    intents: list[dict[str, int]] = []
    seen: set[str] = set()
    n_items = config.n_items
    if n_items and config.n_queries:
        weights = catalogue.popularity**0.5  # flatter than sales: the long tail gets queries too
        attempts = 0
        while len(texts) < config.n_queries and attempts < 50 * config.n_queries:
            batch = rng.choice(n_items, size=config.n_queries, p=weights / weights.sum())
            for row in batch:
                attempts += 1
                intent = _intent_from_item(catalogue.codes, int(row), rng)
                text = text_of(intent)
                if text.lower() not in seen:
                    seen.add(text.lower())
                    texts.append(text)
                    intents.append(intent)
                if len(texts) == config.n_queries:
                    break
    return texts, intents


def _intent_from_item(codes: dict[str, np.ndarray], row: int, rng: np.random.Generator) -> dict[str, int]:
    intent = {"category": int(codes["category"][row])}
    kind = rng.random()
    if kind < 0.08:
        return intent  # a category query ("lighting")
    intent["entity"] = int(codes["entity"][row])
    available = [k for k in ATTRIBUTE_TYPES if k != "entity" and codes[k][row] >= 0]
    n_constraints = 0 if kind < 0.35 else 1 if kind < 0.8 else 2
    for k in rng.permutation(available)[:n_constraints]:
        intent[str(k)] = int(codes[str(k)][row])
    return intent


def _query_text(vocab: _Vocab, intent: dict[str, int], rng: np.random.Generator) -> str:
    if "entity" not in intent:
        return vocab.category_names[intent["category"]]

    def word(kind: str) -> str:
        value = vocab.values[kind][intent[kind]]
        return AUDIENCE_QUERY[value] if kind == "audience" else value.lower()

    before = [word(k) for k in _PRE_ENTITY if k in intent]
    if len(before) > 1 and rng.random() < 0.3:
        before = [before[i] for i in rng.permutation(len(before))]
    after = [word("size")] if "size" in intent else []
    if "colour" in intent and rng.random() < 0.15:  # "cordless drill in black"
        before.remove(word("colour"))
        after.append(f"in {word('colour')}")
    return " ".join([*before, vocab.values["entity"][intent["entity"]], *after])


def _vary(text: str, config: SyntheticConfig, rng: np.random.Generator) -> str:
    """Typos and capitalisation, as in real query logs."""
    if rng.random() < config.typo_rate:
        words = text.split()
        long_words = [i for i, w in enumerate(words) if len(w) >= 4 and w.isalpha()]
        if long_words:
            i = long_words[int(rng.integers(len(long_words)))]
            words[i] = _typo(words[i], rng)
            text = " ".join(words)
    if rng.random() < config.case_rate:
        text = text.title() if rng.random() < 0.7 else text.upper()
    return text


def _typo(word: str, rng: np.random.Generator) -> str:
    i = int(rng.integers(1, len(word) - 1))  # keep the first letter, as most real typos do
    op = int(rng.integers(3))
    if op == 0:
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]  # swap neighbours
    if op == 1:
        return word[:i] + word[i + 1 :]  # drop a letter
    return word[:i] + word[i] + word[i:]  # double a letter


def _generate_judgments(
    config: SyntheticConfig, catalogue: _Catalogue, intents: list[dict[str, int]], rng: np.random.Generator
) -> pa.Table:
    """Per query: exact matches first, then category matches, up to the cap; plus a few irrelevant items."""
    query_ids, item_rows, relevance = [], [], []
    n_items = config.n_items
    for qid, intent in enumerate(intents, start=1):
        pool = catalogue.by_category[intent["category"]]
        rel = catalogue.relevance(intent, pool)
        full, partial = pool[rel == 3], pool[rel == 2]
        full = _sample(full, config.max_judged_relevant, rng)
        partial = _sample(partial, config.max_judged_relevant - len(full), rng)
        other = rng.integers(0, n_items, size=4 * config.judged_irrelevant)
        other = _unique_order(other[catalogue.codes["category"][other] != intent["category"]])
        other = other[: config.judged_irrelevant]
        rows = np.concatenate([full, partial, other])
        order = np.argsort(rows, kind="stable")
        query_ids.append(np.full(len(rows), qid, dtype=np.int64))
        item_rows.append(rows[order])
        relevance.append(np.repeat([3.0, 2.0, 1.0], [len(full), len(partial), len(other)])[order])
    if not query_ids:
        return JUDGMENT_SCHEMA.empty_table()
    return pa.Table.from_arrays(
        [
            pa.array(np.concatenate(query_ids)),
            pa.array(np.concatenate(item_rows).astype(np.int64) + 1),
            pa.array(np.concatenate(relevance)),
        ],
        schema=JUDGMENT_SCHEMA,
    )


def _sample(rows: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    if len(rows) <= k:
        return rows
    return rng.choice(rows, size=max(k, 0), replace=False)


def _unique_order(values: np.ndarray) -> np.ndarray:
    """Distinct values in first-seen order."""
    _, first = np.unique(values, return_index=True)
    return values[np.sort(first)]


# --- search log ---------------------------------------------------------------------------------


class _LogState:
    """Per-session sampling helpers with caches per query and category (the loop stays cheap)."""

    def __init__(
        self,
        config: SyntheticConfig,
        catalogue: _Catalogue,
        users: _Users,
        queries: pa.Table,
        intents: list[dict[str, int]],
        rng: np.random.Generator,
    ) -> None:
        self.config, self.catalogue, self.users = config, catalogue, users
        self.intents, self.rng = intents, rng
        self.popular_cdf = np.cumsum(catalogue.popularity) / catalogue.popularity.sum()
        train = np.flatnonzero(np.array(queries["split"].to_pylist(), dtype=object) == "train")
        # Head queries recur: Zipf weights over a random ranking of the train queries.
        self.train = train
        self.train_weight = 1.0 / (rng.permutation(len(train)) + 1.0) ** 0.8
        self.train_category = np.array([intents[q]["category"] for q in train], dtype=np.int64)
        self._pools: dict[tuple[str, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def choose_query(self, user: int) -> int:
        in_preferred = self.users.category[user, self.train_category]
        weights = self.train_weight
        if in_preferred.any() and self.rng.random() < self.config.preferred_query_fraction:
            weights = weights * in_preferred
        return int(self.train[self.rng.choice(len(self.train), p=weights / weights.sum())])

    def pool(self, key: tuple[str, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(item rows, relevance, sampling probabilities) for a query or a browsed category."""
        if key not in self._pools:
            kind, value = key
            if kind == "query":
                intent = self.intents[value]
                rows = self.catalogue.by_category[intent["category"]]
                rel = self.catalogue.relevance(intent, rows)
            else:
                rows = self.catalogue.by_category[value]
                rel = np.full(len(rows), 2, dtype=np.int64)
            weight = np.where(rel == 3, 4.0, 1.0) * self.catalogue.popularity[rows] ** 0.5
            self._pools[key] = (rows, rel, weight / weight.sum())
        return self._pools[key]

    def impressions(self, key: tuple[str, int]) -> np.ndarray:
        """Shown item rows: some from the pool (the "ranker" found them), the rest popular items."""
        rows, _, prob = self.pool(key)
        k = self.config.impressions_per_session
        n_pool = min(len(rows), int(self.rng.binomial(k, self.config.relevant_impression_fraction)))
        shown = rows[self.rng.choice(len(rows), size=n_pool, replace=False, p=prob)] if n_pool else rows[:0]
        for _ in range(5):  # popular fill-ins; a few rounds suffice unless the catalogue is tiny
            need = min(k, self.config.n_items) - len(shown)
            if need <= 0:
                break
            drawn = np.searchsorted(self.popular_cdf, self.rng.random(2 * need), side="right")
            drawn = _unique_order(np.minimum(drawn, self.config.n_items - 1))
            shown = np.concatenate([shown, drawn[~np.isin(drawn, shown)][:need]])
        return shown


def _simulate_log(
    config: SyntheticConfig,
    catalogue: _Catalogue,
    users: _Users,
    queries: pa.Table,
    intents: list[dict[str, int]],
    rng: np.random.Generator,
) -> pa.Table:
    if not (config.n_sessions and config.n_users and config.n_items):
        return INTERACTION_SCHEMA.empty_table()
    state = _LogState(config, catalogue, users, queries, intents, rng)
    activity = 1.0 / (rng.permutation(config.n_users) + 1.0) ** 0.7  # a few heavy users, a long tail
    session_users = rng.choice(config.n_users, size=config.n_sessions, p=activity / activity.sum())
    k = config.impressions_per_session
    # Each session fits in its slot: impressions at the start, click j at +20(j+1), its order 10 s later.
    slot = 20 * k + 60
    columns: dict[str, list[np.ndarray]] = {
        "user": [],
        "query": [],
        "item": [],
        "event": [],
        "time": [],
        "session": [],
    }
    for session, user in enumerate(session_users):
        browse = len(state.train) == 0 or rng.random() < config.browse_fraction
        query = -1 if browse else state.choose_query(int(user))
        key = ("category", int(rng.choice(users.preferred[user]))) if browse else ("query", query)
        events = _session_events(config, catalogue, users, state, int(user), key)
        start = config.start_time + session * slot + int(rng.integers(0, 30))
        rows, kinds, offsets = events
        n = len(rows)
        columns["user"].append(np.full(n, user))
        columns["query"].append(np.full(n, query))
        columns["item"].append(rows)
        columns["event"].append(kinds)
        columns["time"].append(start + offsets)
        columns["session"].append(np.full(n, session))
    flat = {name: np.concatenate(parts) for name, parts in columns.items()}
    user_ids = users.table["user_id"].take(pa.array(flat["user"]))
    query_ids = pa.array(flat["query"] + 1, mask=flat["query"] < 0).cast(pa.int64())
    return pa.Table.from_arrays(
        [
            user_ids,
            query_ids,
            pa.array(flat["item"].astype(np.int64) + 1),
            pa.array(flat["event"].astype(np.int8)),
            pa.array(flat["time"].astype(np.int64)),
            pa.array(flat["session"].astype(np.int64)),
        ],
        schema=INTERACTION_SCHEMA,
    )


def _session_events(
    config: SyntheticConfig,
    catalogue: _Catalogue,
    users: _Users,
    state: _LogState,
    user: int,
    key: tuple[str, int],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(item rows, event kinds, time offsets) of one session, in time order."""
    rng = state.rng
    shown = state.impressions(key)
    if key[0] == "query":
        rel = catalogue.relevance(state.intents[key[1]], shown)
    else:
        rel = np.where(catalogue.codes["category"][shown] == key[1], 2, 1)
    # The "ranker" puts relevant items higher, noisily: position bias then matters for clicks.
    shown_order = np.argsort(-(rel + rng.normal(0.0, 1.0, len(shown))), kind="stable")
    shown, rel = shown[shown_order], rel[shown_order]
    likes_brand = users.brand[user, catalogue.codes["brand"][shown]]
    likes_colour = users.colour[user, catalogue.codes["colour"][shown]]
    likes_category = users.category[user, catalogue.codes["category"][shown]]
    p_click, p_order = click_model(config, rel, likes_brand, likes_colour, likes_category)
    click = rng.random(len(shown)) < p_click
    clicked = shown[click]
    ordered = rng.random(len(clicked)) < p_order[click]
    rows, kinds, offsets = [shown], [np.full(len(shown), Event.SHOWN)], [np.zeros(len(shown), np.int64)]
    for j, (item, order) in enumerate(zip(clicked, ordered, strict=True)):
        rows.append(np.array([item, item] if order else [item]))
        kinds.append(np.array([Event.CLICKED, Event.ORDERED][: 1 + int(order)]))
        offsets.append(np.array([20 * (j + 1), 20 * (j + 1) + 10][: 1 + int(order)]))
    return np.concatenate(rows), np.concatenate(kinds).astype(np.int8), np.concatenate(offsets)


# --- sequences ----------------------------------------------------------------------------------


def _sequences(config: SyntheticConfig, interactions: pa.Table) -> pa.Table:
    """Next-click rows per user: history = up to ``history_length`` previous clicks, oldest first."""
    clicks = interactions.filter(pc.equal(interactions["event"], int(Event.CLICKED)))
    users_col = clicks["user_id"].to_pylist()
    items = clicks["item_id"].to_numpy()
    by_user: dict[str, list[int]] = {}
    for user, item in zip(users_col, items.tolist(), strict=True):  # interactions are in time order
        by_user.setdefault(user, []).append(item)
    rows: dict[str, list] = {"user_id": [], "history_item_ids": [], "item_id": [], "split": []}
    for user in sorted(by_user):
        history = by_user[user]
        if len(history) < config.min_user_clicks:
            continue
        for i in range(1, len(history)):
            rows["user_id"].append(user)
            rows["history_item_ids"].append(history[max(0, i - config.history_length) : i])
            rows["item_id"].append(history[i])
            rows["split"].append("test" if i == len(history) - 1 else "valid")
    return pa.Table.from_pydict(rows, schema=SEQUENCE_SCHEMA)
