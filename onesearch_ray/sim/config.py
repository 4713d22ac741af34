"""The simulation stage's configuration, all of it: the simulated traffic and the cascade's re-ranker."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SimulationConfig:
    searches: int = 2000
    seed: int = 0
    page_size: int = 10  # items shown per search (the log showed 10)
    cold_user_fraction: float = 0.2
    long_tail_share: float = 0.3
    long_tail_max_count: int = 2
    preferred_query_fraction: float = 0.75
    batch_size: int = 16  # searches sent to a system at once
    bootstrap: int = 1000  # resamples of the users for the confidence intervals
    confidence: float = 0.95

    def __post_init__(self) -> None:
        for name in ("searches", "page_size", "batch_size", "bootstrap"):
            if getattr(self, name) < 1:
                raise ValueError(f"simulation: {name} must be >= 1, got {getattr(self, name)}")
        if self.long_tail_max_count < 0:
            raise ValueError(f"simulation: long_tail_max_count must be >= 0, got {self.long_tail_max_count}")
        for name in ("cold_user_fraction", "long_tail_share", "preferred_query_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"simulation: {name} must lie in [0, 1], got {getattr(self, name)}")
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"simulation: confidence must lie in (0, 1), got {self.confidence}")


@dataclass(frozen=True)
class RerankConfig:
    """Score of a candidate at RRF rank r (1-based): (RRF_K + 1) / (RRF_K + r) plus, per facet, its
    weight times the share of the user's history items with the candidate's value of that facet."""

    depth: int = 50  # RRF candidates re-ranked
    category: float = 0.1
    brand: float = 0.3
    colour: float = 0.15
    history: int = 100  # the user's most recent clicked and ordered items

    def __post_init__(self) -> None:
        if self.depth < 1 or self.history < 1:
            raise ValueError(f"rerank: depth and history must be >= 1, got {self.depth}, {self.history}")
        if min(self.category, self.brand, self.colour) < 0:
            raise ValueError("rerank: facet weights must be >= 0")


DEFAULT_RERANK = RerankConfig()
