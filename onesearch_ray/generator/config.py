"""The generator stage's configuration, all of it: the model (decoder size, prompt views, how it
searches), SFT, distillation, GRPO, DPO, and the job that runs them (the YAML ``generator:`` section,
parsed by ``onesearch_ray.config.parse_config``, the one parser)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from onesearch_ray.config import parse_config, read_yaml_section, require_non_negative

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
    # repeat terms: each of the last N history items scores itself by one learned weight a position
    # (``LexicalIndex.with_repeat``; 0: off), zero at start. The dense view ranks what was just bought
    # first (Amazon Industrial: ~2 of the untrained top 10), though 2.8% of test targets repeat
    repeat_window: int = 0
    # initial scales of the three scores; the model learns them (kept positive as exp(log))
    dense_scale: float = 20.0
    lexical_scale: float = 1.0
    code_scale: float = 20.0

    def validate(self) -> None:
        self.decoder.validate()
        self.search.validate(self.code_levels)
        views = (self.history, self.copurchase_window, self.repeat_window)
        if self.code_levels < 1 or self.hash_buckets < 1 or min(views) < 0:
            raise ValueError(
                "code_levels and hash_buckets must be >= 1, history, copurchase_window and repeat_window >= 0"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainConfig:
    epochs: float = 8.0
    batch_size: int = 128  # the global batch: each of N Ray Train workers takes batch_size / N
    # Three parameter groups, three learning rates. The term weights and the score scales are few
    # and every search moves them: they learn fast and generalise to unseen queries. The decoder,
    # the prompt projections and the code/item corrections learn slower. Per-item offsets and
    # biases only move for items some training search targets: on a search track they memorise the
    # judged items (Home Depot valid NDCG@10 0.37 -> 0.20 in 4 epochs), so they start frozen there.
    learning_rate: float = 1e-3
    weight_learning_rate: float = 0.02
    item_learning_rate: float = 0.0
    # the repeat weights (``GeneratorConfig.repeat_window``): one a recency position, moved by every
    # search with a history, so they learn fast and cannot memorise an item
    repeat_learning_rate: float = 0.02
    weight_decay: float = 0.05  # on the zero-initialised corrections: the pull toward the start
    code_loss_weight: float = 0.5
    # the item loss's softmax: over the whole catalogue (0), or over the batch's targets, this many
    # hard negatives (under each search's best codes) and this many uniform draws standing for the
    # rest (``train.item_candidates``): a step's cost set by the batch, not the catalogue
    sampled_negatives: int = 0
    evaluate_every: int = 0  # steps between selection scores and checkpoints (0: once per epoch)
    # stop after this many selection scores in a row below the best (0: never). On Home Depot the
    # decoder peaks after 2 epochs and then memorises the 7,089 train queries (valid 0.397 -> 0.340)
    patience: int = 2
    max_minutes: float = 45.0  # the budget on the wall clock; training stops when it is spent
    seed: int = 0

    def validate(self) -> None:
        rates = (
            self.learning_rate,
            self.weight_learning_rate,
            self.item_learning_rate,
            self.repeat_learning_rate,
        )
        if self.sampled_negatives < 0:
            raise ValueError(f"train config: sampled_negatives {self.sampled_negatives} must be >= 0")
        if self.epochs <= 0 or self.batch_size < 1 or min(rates) < 0 or max(rates) == 0:
            raise ValueError(
                f"train config: epochs and batch_size must be positive, some learning rate too: {self}"
            )


@dataclass
class DistillConfig:
    """YAML ``generator.distill``: cascade-distilled pseudo-queries among the training searches."""

    pseudo_queries_per_item: int = 0  # 0: distillation off
    # labelling costs ~10-35 ms a pseudo-query on 2 cores: a cap (a reproducible random subset) keeps a
    # large catalogue's CPU budget; 0: no cap
    max_pseudo_queries: int = 0
    top_k: int = 5  # cascade items per pseudo-query that become targets
    depth: int = 100  # BM25 and dense lists fused (items outside both top-100 cannot reach a top 10)
    batch_size: int = 2048  # pseudo-queries encoded, retrieved and fused per batch
    seed: int = 0

    def __post_init__(self) -> None:
        require_non_negative(
            self,
            ("pseudo_queries_per_item", "max_pseudo_queries", "top_k", "depth"),
            prefix="generator.distill.",
        )
        if self.enabled and (self.top_k < 1 or self.depth < self.top_k or self.batch_size < 1):
            raise ValueError(
                f"generator.distill: need top_k >= 1, depth >= top_k and batch_size >= 1 "
                f"(got top_k={self.top_k}, depth={self.depth}, batch_size={self.batch_size})"
            )

    @property
    def enabled(self) -> bool:
        return self.pseudo_queries_per_item > 0


@dataclass
class GRPOConfig:
    """TPMA-GRPO of ``RUN/generator`` (``onesearch generator --grpo``); the other settings are ``train``'s."""

    group: int = 8  # G rollouts per prompt: the generator's top-G items
    w_item: float = 1.0  # weight of the group-normalised composite item reward
    item_std_floor: float = 1.0  # a group whose rewards differ by noise is not blown up to unit variance
    kl_weight: float = 0.05  # k3 KL guard to the frozen start
    new_user_share: float = 0.5  # share of the prompts also asked as a new user (no history)
    max_prompts: int = 0  # a seeded sample of the train searches (0: all)
    epochs: float = 1.0
    batch_size: int = 16
    learning_rate: float = 1e-4
    weight_learning_rate: float = 1e-3
    seed: int = 0

    def validate(self) -> None:
        if self.group < 2:
            raise ValueError(f"grpo.group {self.group}: group normalisation needs >= 2 rollouts")
        if not 0.0 <= self.new_user_share <= 1.0:
            raise ValueError(f"grpo.new_user_share {self.new_user_share}: expected a share in [0, 1]")
        if min(self.w_item, self.item_std_floor, self.kl_weight, self.max_prompts) < 0:
            raise ValueError(f"grpo: weights and max_prompts must be >= 0: {self}")


@dataclass
class DPOConfig:
    """DPO from the feedback log (``generator.preference``); other optimizer settings are ``train``'s.

    Rates 10-20x below SFT's: on simulated feedback (synthetic, 2,357 impressions) the SFT rates with
    the anchor took valid NDCG@10 0.732 -> 0.704, these 0.732 -> 0.728."""

    beta: float = 0.1
    anchor: float = 1.0  # weight of the winners' negative log-likelihood beside the DPO term
    epochs: float = 2.0
    batch_size: int = 32
    learning_rate: float = 1e-4
    weight_learning_rate: float = 1e-3


@dataclass
class GeneratorJobConfig:
    model: GeneratorConfig = field(default_factory=GeneratorConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # cascade-labelled pseudo-queries (off: 0 per item)
    distill: DistillConfig = field(default_factory=DistillConfig)
    select_queries: int = 400  # the first N valid queries with a relevant item score each checkpoint
    evaluate_k: int = 350
    dpo: DPOConfig = field(default_factory=DPOConfig)  # ``--feedback``: DPO from a feedback log
    grpo: GRPOConfig = field(default_factory=GRPOConfig)  # ``--grpo``: TPMA-GRPO on the logged searches


def load_job_config(path: str | Path | None) -> GeneratorJobConfig:
    """The ``generator:`` section of a YAML config (defaults when absent)."""
    config = parse_config(GeneratorJobConfig, read_yaml_section(path, "generator"), str(path or "defaults"))
    config.model.validate()
    config.train.validate()
    return config
