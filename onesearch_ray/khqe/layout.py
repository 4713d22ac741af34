"""Codebook layouts as data: one string describes a quantizer, like a faiss factory string.

``"4096-1024-512+opq2x256"`` = three residual k-means levels of 4096, 1024 and 512 codes, then OPQ
on the final residual with 2 sub-codebooks of 256 codes each. ``"256-256-256"`` is plain
RQ-Kmeans. Ray Tune sweeps these strings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_LAYOUT = re.compile(r"^(?P<rq>\d+(?:-\d+)*)(?:\+opq(?P<m>\d+)x(?P<k>\d+))?$")
PAPER_LAYOUT = "4096-1024-512+opq2x256"


@dataclass(frozen=True)
class CodebookLayout:
    rq_levels: tuple[int, ...]
    opq_subspaces: int = 0
    opq_codes: int = 0

    @classmethod
    def parse(cls, text: str) -> CodebookLayout:
        match = _LAYOUT.match(text.strip().lower().replace(" ", ""))
        if not match:
            raise ValueError(
                f"codebook layout {text!r}: expected levels like '4096-1024-512' optionally followed by "
                "'+opqMxK' (e.g. '4096-1024-512+opq2x256')"
            )
        levels = tuple(int(k) for k in match["rq"].split("-"))
        subspaces, codes = int(match["m"] or 0), int(match["k"] or 0)
        layout = cls(levels, subspaces, codes)
        layout.validate()
        return layout

    def validate(self) -> None:
        if any(k < 2 for k in self.rq_levels):
            raise ValueError(f"codebook layout {self}: every level needs at least 2 codes")
        if self.opq_subspaces:
            if self.opq_codes not in (2**b for b in range(1, 17)):
                raise ValueError(f"codebook layout {self}: OPQ codes must be a power of two <= 65536")

    @property
    def has_opq(self) -> bool:
        return self.opq_subspaces > 0

    @property
    def level_sizes(self) -> tuple[int, ...]:
        """Codes per SID position: the RQ levels, then one entry per OPQ sub-codebook."""
        return self.rq_levels + (self.opq_codes,) * self.opq_subspaces

    def scaled_to(self, n_vectors: int, min_points_per_code: int = 8) -> CodebookLayout:
        """Shrink levels a small catalogue cannot fill (k-means needs several points per centroid).

        Each level (and the OPQ sub-codebooks) is capped at the largest power of two <=
        n_vectors / min_points_per_code. The shape (level count) never changes.
        """
        cap = max(2, _floor_pow2(n_vectors // max(1, min_points_per_code)))
        levels = tuple(min(k, cap) for k in self.rq_levels)
        codes = min(self.opq_codes, cap) if self.has_opq else 0
        return CodebookLayout(levels, self.opq_subspaces, codes)

    def __str__(self) -> str:
        text = "-".join(str(k) for k in self.rq_levels)
        if self.has_opq:
            text += f"+opq{self.opq_subspaces}x{self.opq_codes}"
        return text


def _floor_pow2(n: int) -> int:
    return 1 << (max(1, n).bit_length() - 1)
