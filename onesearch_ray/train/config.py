"""Training configuration: model size, workers and one SFTConfig per stage (YAML section ``train:``);
the preference-alignment stages after SFT (section ``align:``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from onesearch_ray.config import parse_config, read_yaml_section, require_non_negative
from onesearch_ray.model import ModelConfig
from onesearch_ray.rewards.model import RewardModelConfig
from onesearch_ray.train.distill import DistillConfig
from onesearch_ray.train.selection import SelectionConfig
from onesearch_ray.train.sft import SFTConfig

# DPO's list sources: the model's own beams re-ranked, the search log, the searches' targets (clicked
# or ordered, bought next, judged relevant) against the beams; the default, the paper's two phases
DPO_PHASES = ("beams", "log", "targets")


def _default_stages() -> dict[str, SFTConfig]:
    return {
        "alignment": SFTConfig(epochs=3.0, learning_rate=2e-3),
        "cooccurrence": SFTConfig(epochs=3.0, learning_rate=1e-3),
        "personalization": SFTConfig(epochs=2.0, learning_rate=5e-4),
    }


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    stages: dict[str, SFTConfig] = field(default_factory=_default_stages)
    tokenizer_vocab_size: int = 8000
    title_spans_per_item: int = 2  # alignment: short title spans -> item SID, as pseudo-queries
    distill: DistillConfig = field(default_factory=DistillConfig)  # cascade-distilled co-occurrence pairs
    select_on_valid: SelectionConfig = field(
        default_factory=SelectionConfig
    )  # early stopping, best checkpoint
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: int = 0  # 0: share the cluster's CPUs evenly among workers


@dataclass
class OptimConfig:
    """What every alignment stage shares: steps, optimiser, checkpoints."""

    max_steps: int = 200
    batch_size: int = 8  # preference lists (DPO) or prompts (GRPO) per worker per step
    learning_rate: float = 1e-4
    warmup_steps: int = 10
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    checkpoint_every: int = 50
    log_every: int = 10
    seed: int = 0
    # the latest train searches, kept out of the stage's data; the model is measured on them before
    # and after the stage (recorded in the manifest)
    heldout_searches: int = 50

    def __post_init__(self) -> None:
        if min(self.max_steps, self.batch_size, self.checkpoint_every, self.log_every) < 1:
            raise ValueError("max_steps, batch_size, checkpoint_every and log_every must be >= 1")
        require_non_negative(
            self, ("learning_rate", "warmup_steps", "weight_decay", "grad_clip", "heldout_searches")
        )


@dataclass
class DPOConfig(OptimConfig):
    beta: float = 0.1
    alpha: float = 1.5  # reward-gap weight exponent
    sft_weight: float = 0.1  # lambda of the SFT anchor -log pi(y+)
    guard_weight: float = 0.0
    negatives: int = 8  # K, per list
    phases: tuple[str, ...] = ("beams", "log")
    beam: int = 16  # phase 1: constrained beams decoded per prompt
    max_prompts: int = 200  # phase 1: prompts decoded (a seeded sample of the train searches; 0: all)

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = set(self.phases) - set(DPO_PHASES)
        if unknown or not self.phases:
            raise ValueError(f"dpo.phases {list(self.phases)}: expected a non-empty subset of {DPO_PHASES}")
        if self.beta <= 0 or self.negatives < 1 or self.beam < 2:
            raise ValueError("dpo: beta must be > 0, negatives >= 1 and beam >= 2")
        require_non_negative(self, ("alpha", "sft_weight", "guard_weight", "max_prompts"), "dpo.")


@dataclass
class GRPOConfig(OptimConfig):
    batch_size: int = 4
    learning_rate: float = 5e-5
    group: int = 8  # G rollouts per prompt: the policy's top-G constrained beams
    w_item: float = 1.0  # weight of the group-normalised composite item reward in the advantage
    # The paper gates the item reward with the prefix gates (True) and normalises by the group's std
    # alone (floor 0); measured on the synthetic world, ungated with a floor of 1 reward unit is
    # better (docs/benchmarks.md, "The reward loop on simulated traffic"; preference.tpma_advantages).
    gate_item_reward: bool = False
    item_std_floor: float = 1.0
    kl_weight: float = 0.05  # k3 KL guard to the frozen starting model
    max_prompts: int = 0  # train searches with a click used as prompts (a seeded sample; 0: all)
    # Share of the prompts also asked as a new user is served (no user id, no history): the log's
    # searches are warm users', and a policy tuned on them alone served new users worse; 0.5 measured
    # +15.5% simulated orders over SFT against +5.5% without (docs/benchmarks.md).
    new_user_share: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.group < 2:
            raise ValueError(f"grpo.group {self.group}: group normalisation needs >= 2 rollouts")
        if not 0.0 <= self.new_user_share <= 1.0:
            raise ValueError(f"grpo.new_user_share {self.new_user_share}: expected a share in [0, 1]")
        require_non_negative(self, ("w_item", "item_std_floor", "kl_weight", "max_prompts"), "grpo.")


@dataclass
class AlignConfig:
    """YAML section ``align:``; workers and GPUs come from ``train:`` (num_workers, use_gpu)."""

    dpo: DPOConfig = field(default_factory=DPOConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    reward_model: RewardModelConfig = field(default_factory=RewardModelConfig)


def load_align_config(path: str | Path | None = None, *, max_steps: int | None = None) -> AlignConfig:
    config = parse_config(AlignConfig, read_yaml_section(path, "align"), str(path or "defaults"))
    if max_steps:
        config.dpo.max_steps = config.grpo.max_steps = max_steps
    return config


def load_train_config(
    path: str | Path | None = None,
    *,
    workers: int | None = None,
    use_gpu: bool | None = None,
    size: str | None = None,
    max_steps: int | None = None,
) -> TrainConfig:
    """The ``train:`` section; stage entries override the default SFTConfig of that stage."""
    section = read_yaml_section(path, "train")
    stage_overrides = section.pop("stages", {}) or {}
    config = parse_config(TrainConfig, section, str(path or "defaults"))
    for stage, overrides in stage_overrides.items():
        if stage not in config.stages:
            raise ValueError(f"{path}: unknown stage '{stage}' (known: {', '.join(config.stages)})")
        merged = {**dataclasses.asdict(config.stages[stage]), **(overrides or {})}
        config.stages[stage] = parse_config(SFTConfig, merged, f"{path}: train.stages.{stage}")
    if workers is not None:
        config.num_workers = workers
    if use_gpu is not None:
        config.use_gpu = use_gpu
    if size:
        config.model.size = size
    if max_steps:
        for stage_config in config.stages.values():
            stage_config.max_steps = max_steps
    return config
