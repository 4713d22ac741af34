"""The layout search space of ``onesearch tune`` and how trials are drawn from it (no Ray here).

A trial is one (layout string, keyword enhancement, text encoder). The space is small and discrete,
so instead of letting Tune sample with repeats, every candidate is listed, candidates that scale to
the same layout on this catalogue are merged (``CodebookLayout.scaled_to``: a first level of 4096
on 400 items is the same as one of 32), and ``samples`` distinct ones are drawn, taking first-level
sizes in turn (smallest first) so that few samples still span coarse to fine first levels.
"""

from __future__ import annotations

import itertools
import random
import re
from dataclasses import dataclass, field

from onesearch_ray.khqe.config import DEFAULT_ENCODER, E5_ENCODER
from onesearch_ray.khqe.layout import CodebookLayout


@dataclass
class SearchSpace:
    levels: list[int] = field(default_factory=lambda: [1, 2, 3])  # residual k-means levels
    first_level: list[int] = field(default_factory=lambda: [2**b for b in range(4, 13)])  # 16..4096
    deeper_level: list[int] = field(default_factory=lambda: [256, 1024])  # codes of each later level
    opq: list[str] = field(default_factory=lambda: ["", "opq2x256", "opq4x64"])  # "" = no OPQ
    keywords: list[bool] = field(default_factory=lambda: [True, False])
    encoders: list[str] = field(default_factory=lambda: [DEFAULT_ENCODER, E5_ENCODER])
    # explicit layout strings; when set they replace levels x first_level x deeper_level x opq
    layouts: list[str] = field(default_factory=list)

    def layout_strings(self) -> list[str]:
        if self.layouts:
            return [str(CodebookLayout.parse(text)) for text in self.layouts]
        found = []
        for n_levels, first, deeper, opq in itertools.product(
            self.levels, self.first_level, self.deeper_level, self.opq
        ):
            if n_levels < 1:
                raise ValueError(f"search space: level count {n_levels} must be at least 1")
            text = "-".join(str(k) for k in [first, *[deeper] * (n_levels - 1)])
            found.append(str(CodebookLayout.parse(f"{text}+{opq}" if opq else text)))
        return list(dict.fromkeys(found))


@dataclass(frozen=True)
class Candidate:
    """One trial: the layout as fitted on this catalogue, keywords on/off, the text encoder."""

    layout: str
    keywords: bool
    encoder: str

    @classmethod
    def of(cls, row: dict) -> Candidate:
        """The candidate a results row (or a trial's config) belongs to."""
        return cls(row["layout"], bool(row["keywords"]), row["encoder"])

    @property
    def name(self) -> str:
        """A readable, file-system-safe trial name, unique per candidate."""
        encoder = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.encoder)
        return f"{self.layout}_{'kw' if self.keywords else 'nokw'}_{encoder}"

    def to_dict(self) -> dict:
        return {"layout": self.layout, "keywords": self.keywords, "encoder": self.encoder}

    @property
    def generator_key(self) -> tuple:
        """What the generator trained on this candidate depends on: its residual levels (the codes
        it decodes; OPQ only changes the SID's tail), keywords and encoder."""
        return CodebookLayout.parse(self.layout).rq_levels, self.keywords, self.encoder


def promote(ranked: list[Candidate], n: int) -> list[Candidate]:
    """The first ``n`` of ``ranked`` (best first) that train distinct generators: of layouts that
    differ only in OPQ, the better ranked one stands for all."""
    kept: dict[tuple, Candidate] = {}
    for candidate in ranked:
        kept.setdefault(candidate.generator_key, candidate)
    return list(kept.values())[:n]


def candidates(space: SearchSpace, n_vectors: int, min_points_per_code: int) -> list[Candidate]:
    """Every distinct trial of ``space`` on a catalogue fitted from ``n_vectors`` vectors."""
    layouts = dict.fromkeys(
        str(CodebookLayout.parse(text).scaled_to(n_vectors, min_points_per_code))
        for text in space.layout_strings()
    )
    if not layouts or not space.keywords or not space.encoders:
        raise ValueError("search space: layouts, keywords and encoders each need at least one value")
    return [
        Candidate(layout, keywords, encoder)
        for layout, keywords, encoder in itertools.product(layouts, space.keywords, space.encoders)
    ]


def draw(found: list[Candidate], samples: int, seed: int = 0) -> list[Candidate]:
    """``samples`` distinct candidates (all when ``samples`` is 0 or exceeds them), first-level sizes
    taken in turn from the smallest, a seeded random pick within each size."""
    by_first: dict[int, list[Candidate]] = {}
    for candidate in found:
        first = CodebookLayout.parse(candidate.layout).rq_levels[0]
        by_first.setdefault(first, []).append(candidate)
    rng = random.Random(seed)
    groups = [rng.sample(group, len(group)) for _, group in sorted(by_first.items())]
    interleaved = [c for row in itertools.zip_longest(*groups) for c in row if c is not None]
    return interleaved[:samples] if samples else interleaved
