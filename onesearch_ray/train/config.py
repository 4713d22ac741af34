"""Training configuration: model size, workers, and one SFTConfig per stage (YAML section ``train:``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from onesearch_ray.config import parse_config, read_yaml_section
from onesearch_ray.model import ModelConfig
from onesearch_ray.train.distill import DistillConfig
from onesearch_ray.train.selection import SelectionConfig
from onesearch_ray.train.sft import SFTConfig


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
