"""The KHQE stage's configuration, all of it: the text encoder, the keyphrase lexicon, the quantizer
layout, and how they combine (the YAML ``khqe:`` section, parsed by
``onesearch_ray.config.parse_config``, the one parser)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from onesearch_ray.config import parse_config, read_yaml_section
from onesearch_ray.io import read_json
from onesearch_ray.khqe.layout import CodebookLayout

DEFAULT_ENCODER = "minilm"
E5_ENCODER = "e5"


@dataclass
class EncoderConfig:
    model: str = DEFAULT_ENCODER
    batch_size: int = 64
    max_seq_length: int = 64
    device: str = "cpu"


@dataclass
class LexiconConfig:
    max_ngram: int = 3
    min_query_count: int = 3
    max_phrases: int = 20000
    min_phrase_chars: int = 3


@dataclass
class QuantizerConfig:
    layout: str = "4096-1024-512+opq2x256"
    balanced_last_level: bool = True
    kmeans_niter: int = 20
    balanced_niter: int = 10
    opq_niter: int = 25
    seed: int = 0
    min_points_per_code: int = 8
    # SemanticIdTokenizer moves colliding items to the nearest free tail among this many
    # candidates per tail position (0 = keep raw nearest codes, items may share SIDs).
    collision_candidates: int = 16


@dataclass
class KHQEConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    lexicon: LexiconConfig = field(default_factory=LexiconConfig)
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    keyword_enhancement: bool = True
    keyword_text_weight: float = 0.5

    def to_dict(self) -> dict:
        return asdict(self)


def load_khqe_config(
    path: str | Path | None = None, layout: str | None = None, keyword_enhancement: bool | None = None
) -> KHQEConfig:
    config = parse_config(KHQEConfig, read_yaml_section(path, "khqe"), str(path or "defaults"))
    if layout:
        config.quantizer.layout = layout
    if keyword_enhancement is not None:
        config.keyword_enhancement = keyword_enhancement
    CodebookLayout.parse(config.quantizer.layout)  # fail early on a bad layout string
    return config


def run_khqe_config(run: str | Path) -> KHQEConfig:
    """The KHQE config recorded with the run's SID tokenizer (defaults for runs that predate it)."""
    path = Path(run) / "sid_tokenizer/sid_tokenizer.json"
    recorded = read_json(path).get("metadata", {}).get("khqe") if path.exists() else None
    return parse_config(KHQEConfig, recorded, str(path))
