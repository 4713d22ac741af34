"""The live catalogue's write-ahead file: every acknowledged add, in the run, replayed at start.

``AddLog.append`` writes one record and fsyncs it before it returns, so an add is answered only once
it is on disk; ``AddLog.read`` returns every complete record. A record is framed as
``length (u64) | crc32 (u32) | payload`` (the payload an ``.npz`` of ids, titles, raw vectors and
SIDs), so a write cut off by a crash shows as a short or mismatching tail: that record was never
acknowledged, and ``read`` drops it (and cuts it off the file, so later appends follow whole
records). A damaged record with whole records after it is corruption and raises, naming the offset.

The header records the SID tokenizer's codebooks digest: codes written under other codebooks (the run
was re-encoded since) are refused with a clear error instead of being served on the wrong prefixes.
"""

from __future__ import annotations

import io
import logging
import os
import struct
import threading
import zlib
from pathlib import Path

import numpy as np

from onesearch_ray.catalogue.live import NewItems

log = logging.getLogger(__name__)
MAGIC = b"onesearch-add-log 1\n"
_FRAME = struct.Struct("<QI")


class AddLog:
    def __init__(self, path: str | Path, codebooks_digest: str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        header = MAGIC + codebooks_digest.encode() + b"\n"
        if not self.path.exists() or self.path.stat().st_size == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "wb") as handle:
                handle.write(header)
                _sync(handle)
            _sync_directory(self.path.parent)
        with open(self.path, "rb") as handle:
            magic, digest = handle.readline(), handle.readline().strip().decode(errors="replace")
        if magic != MAGIC:
            raise ValueError(f"{self.path}: not an add log (header {magic[:40]!r})")
        if digest != codebooks_digest:
            raise ValueError(
                f"{self.path}: its items were coded with other SID codebooks ({digest[:12]}...; the run "
                f"now has {codebooks_digest[:12]}...): the run was re-encoded. Move the file away and "
                "add those items again"
            )
        self._body_start = len(header)

    def append(self, items: NewItems) -> None:
        """Write one add durably (returns once it is on disk)."""
        buffer = io.BytesIO()
        np.savez(
            buffer,
            item_ids=np.asarray(items.item_ids, np.int64),
            titles=np.asarray(items.titles, dtype=np.str_),
            vectors=np.asarray(items.vectors, np.float32),
            codes=np.asarray(items.codes, np.int32),
        )
        payload = buffer.getvalue()
        with self._lock, open(self.path, "ab") as handle:
            handle.write(_FRAME.pack(len(payload), zlib.crc32(payload)) + payload)
            _sync(handle)

    def read(self, repair: bool = True) -> list[NewItems]:
        """Every complete add, oldest first. A torn last record is dropped and, with ``repair`` (the
        writer, at start), cut off the file; a reader beside a live writer passes ``repair=False``."""
        data = self.path.read_bytes()
        offset, out = self._body_start, []
        while offset < len(data):
            end = offset + _FRAME.size
            if end > len(data):
                break
            length, checksum = _FRAME.unpack_from(data, offset)
            payload = data[end : end + length]
            if len(payload) < length or zlib.crc32(payload) != checksum:
                if end + length < len(data):
                    raise ValueError(f"{self.path}: damaged record at byte {offset} with records after it")
                break
            with np.load(io.BytesIO(payload), allow_pickle=False) as arrays:
                out.append(
                    NewItems(
                        arrays["item_ids"], arrays["titles"].tolist(), arrays["vectors"], arrays["codes"]
                    )
                )
            offset = end + length
        if offset < len(data) and repair:
            log.warning(
                "%s: dropping a torn last record (%d bytes, never acknowledged)",
                self.path,
                len(data) - offset,
            )
            with open(self.path, "r+b") as handle:
                handle.truncate(offset)
                _sync(handle)
        return out


def _sync(handle) -> None:
    handle.flush()
    os.fsync(handle.fileno())


def _sync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
