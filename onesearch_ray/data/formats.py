"""A track directory's format and its loader: the parquet formats of ``loaders`` (``homedepot``,
``amazon18``, ``onesearch``) and the KuaiSearch layout of ``kuaisearch``, told apart by their files."""

from __future__ import annotations

import os
from pathlib import Path

from onesearch_ray.data.kuaisearch import load_kuaisearch
from onesearch_ray.data.loaders import (
    FORMAT_FILES,
    MANIFEST,
    Track,
    existing_dir,
    load_amazon18,
    load_homedepot,
    load_onesearch,
)
from onesearch_ray.data.schemas import DataError


def track_format(directory: str | os.PathLike) -> str | None:
    """The format of a track directory; None for anything else (a run, a missing path)."""
    root = Path(directory)
    if (root / MANIFEST).is_file():
        return "onesearch"
    for name, files in FORMAT_FILES.items():
        if all((root / f).is_file() for f in files):
            return name
    return None


def detect_format(directory: str | os.PathLike) -> str:
    """Name the format of a track directory, or raise a DataError listing what was expected."""
    root = existing_dir(directory)
    found_format = track_format(root)
    if found_format:
        return found_format
    expected = "; ".join(f"{name}: {', '.join(files)}" for name, files in FORMAT_FILES.items())
    present = sorted(p.name for p in root.iterdir())
    found = ", ".join(present[:8]) + (f" and {len(present) - 8} more" if len(present) > 8 else "")
    raise DataError(
        root, None, None, f"not a track directory (found: {found or 'nothing'}; expected one of {expected})"
    )


def load_track(directory: str | os.PathLike, format: str | None = None) -> Track:
    """Load and validate a track directory; ``format`` forces homedepot, amazon18, onesearch or
    kuaisearch."""
    root = existing_dir(directory)
    fmt = format or detect_format(root)
    loaders = {
        "homedepot": load_homedepot,
        "amazon18": load_amazon18,
        "onesearch": load_onesearch,
        "kuaisearch": load_kuaisearch,
    }
    if fmt not in loaders:
        raise ValueError(f"unknown track format {fmt!r}; expected one of {sorted(loaders)}")
    return loaders[fmt](root)
