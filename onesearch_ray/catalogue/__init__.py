"""The live catalogue: items grouped by code prefix in segments, read one snapshot at a time.

- ``segment``: an immutable block of items sorted by prefix key (dense rows, lexical postings,
  per-group block-max bounds); what the item step reads.
- ``live``: ``LiveCatalogue`` (adds, merges, snapshots) and ``Snapshot`` (what one search reads).
- ``log``: ``AddLog``, the write-ahead file of acknowledged adds in the run.
- ``lexical``: BM25's term statistics and tokens (``LexicalIndex``), shared by the generator.
"""

from onesearch_ray.catalogue.live import LiveCatalogue, NewItems, Snapshot
from onesearch_ray.catalogue.log import AddLog
from onesearch_ray.catalogue.segment import Segment, build_segment, merge_segments

__all__ = ["AddLog", "LiveCatalogue", "NewItems", "Segment", "Snapshot", "build_segment", "merge_segments"]
