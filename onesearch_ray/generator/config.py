"""The generator's configuration: the decoder's size, its prompt views, and how it searches."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

# Head sizes vLLM's CPU attention supports (the decoder is a Qwen3 configuration vLLM can serve).
VLLM_HEAD_DIMS = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256)


@dataclass
class DecoderConfig:
    """A small Qwen3 causal decoder over the prompt embeddings and the code tokens."""

    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 32
    intermediate_size: int = 256

    def validate(self) -> None:
        if min(asdict(self).values()) <= 0:
            raise ValueError(f"decoder dimensions must be positive: {asdict(self)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}"
            )
        if self.head_dim not in VLLM_HEAD_DIMS:
            raise ValueError(f"head_dim {self.head_dim}: vLLM needs one of {VLLM_HEAD_DIMS}")


@dataclass
class SearchConfig:
    """How the trained generator searches: code beams planned by lexical evidence, then the item step.

    ``beams[l]`` prefixes are kept at code level ``l``. A prefix's planning score is its code
    log-probability plus ``plan_weight`` times the best lexical score of an item under it (PAG's
    planning: a prefix holding a strong lexical match is not pruned). The final score of an item is
    its item-step logit plus ``code_weight`` times its prefix's code log-probability (BeamFusion).

    The item step reads at most ``max_items`` items: when the kept prefixes hold more (a catalogue
    that grew), the search goes ``refine_levels`` SID levels deeper than the decoder, planned by the
    untrained geometry (``<q, residual centroid>``) and the lexical bound, and keeps the best deeper
    prefixes that fit. Below ``max_items`` nothing changes, so the cost per search is bounded by
    this number, not by the catalogue's size. ``vector_dtype`` stores the item step's dense rows:
    float16 halves their memory at some CPU cost here (docs/benchmarks.md, "Catalogues of millions").
    Catalogue segments of at least ``first_pass_rows`` items (0: none) also hold their rows projected
    on 96 principal directions: the dense term of a search's kept items is first approximated from
    those, and only a shortlist is rescored with the full rows (``catalogue.segment.FirstPass``).
    """

    beams: tuple[int, ...] = (32,)
    plan_weight: float = 1.0
    code_weight: float = 0.0  # measured on Home Depot valid: 1.0 cost 0.026 NDCG@10 untrained
    max_items: int = 40_000
    refine_levels: int = 1
    vector_dtype: str = "float32"
    first_pass_rows: int = 100_000

    def validate(self, levels: int) -> None:
        if len(self.beams) != levels or min(self.beams) <= 0:
            raise ValueError(f"search beams {self.beams}: one positive width per code level ({levels})")
        if self.max_items < 1 or self.refine_levels < 0 or self.first_pass_rows < 0:
            raise ValueError(
                f"search max_items {self.max_items} must be >= 1, refine_levels and first_pass_rows >= 0"
            )
        if self.vector_dtype not in ("float16", "float32"):
            raise ValueError(f"search vector_dtype {self.vector_dtype!r}: float16 or float32")


@dataclass
class GeneratorConfig:
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    code_levels: int = 1  # the KHQE levels the decoder emits before the item step
    hash_buckets: int = 1 << 15  # the prompt's lexical view: hashed query words
    history: int = 0  # recent items as prompt views (0: no behaviour views, e.g. Home Depot)
    # the co-purchase term: the last N history items as lexical terms whose postings are the items
    # that followed them in training (``behavior.copurchase``; 0: off), each at this initial weight
    copurchase_window: int = 0
    copurchase_weight: float = 1.0
    # initial scales of the three scores; the model learns them (kept positive as exp(log))
    dense_scale: float = 20.0
    lexical_scale: float = 1.0
    code_scale: float = 20.0

    def validate(self) -> None:
        self.decoder.validate()
        self.search.validate(self.code_levels)
        if self.code_levels < 1 or self.hash_buckets < 1 or min(self.history, self.copurchase_window) < 0:
            raise ValueError("code_levels and hash_buckets must be >= 1, history and copurchase_window >= 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> GeneratorConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(
                f"unknown generator config keys {sorted(unknown)}; expected some of {sorted(known)}"
            )
        values = dict(raw)
        values["decoder"] = DecoderConfig(**values.get("decoder", {}))
        search = dict(values.get("search", {}))
        if "beams" in search:
            search["beams"] = tuple(int(b) for b in search["beams"])
        values["search"] = SearchConfig(**search)
        config = cls(**values)
        config.validate()
        return config
