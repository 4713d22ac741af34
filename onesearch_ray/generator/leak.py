"""The no-leak rule of evaluation.md: no text of a ``valid`` or ``test`` query enters training.

Query texts are compared by :func:`query_key` (lower-case word tokens); ``generator.examples``
checks every training search against :func:`held_out_query_keys` and raises :class:`LeakError`.
"""

from __future__ import annotations

from onesearch_ray.data import Track
from onesearch_ray.text import normalize_text


class LeakError(ValueError):
    """A valid or test query's text reached a training search."""


def query_key(text: str | None) -> str:
    """The form query texts are compared in for the no-leak rule: lower-case word tokens."""
    return normalize_text(text or "")


def held_out_query_keys(track: Track, train_split: str = "train") -> set[str]:
    """Keys of the queries training must never see (valid and test). A text that is also a train
    query's is training data by the split itself, so it is not held out."""
    if track.queries is None:
        return set()
    texts, splits = track.queries.column("query").to_pylist(), track.queries.column("split").to_pylist()
    train = {query_key(t) for t, s in zip(texts, splits, strict=True) if s == train_split}
    return {k for t, s in zip(texts, splits, strict=True) if s != train_split and (k := query_key(t))} - train
