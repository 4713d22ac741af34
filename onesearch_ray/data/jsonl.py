"""JSON-lines files: one object a line, read with typed field access whose errors name the file,
the line (1-based, as an editor shows it) and the field (the KuaiSearch layout, new-query files)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onesearch_ray.data.schemas import DataError


@dataclass(frozen=True)
class JsonLine:
    """One JSON object of a file, with typed field access; errors name ``file:line`` and the field."""

    file: Path
    line_no: int
    record: dict[str, Any]

    def error(self, name: str | None, problem: str) -> DataError:
        return DataError(f"{self.file}:{self.line_no}", None, name, problem)

    def _get(self, name: str, required: bool) -> Any:
        value = self.record.get(name)
        if value is None and required:
            raise self.error(name, "missing required field")
        return value

    def integer(self, name: str, required: bool = True) -> int | None:
        value = self._get(name, required)
        if value is not None and not is_int(value):
            raise self.error(name, f"expected an integer, got {value!r}")
        return value

    def number(self, name: str, required: bool = True) -> float | None:
        value = self._get(name, required)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(name, f"expected a number, got {value!r}")
        return float(value)

    def text(self, name: str, required: bool = True) -> str | None:
        """A string, stripped; None for a missing optional one or a blank one."""
        value = self._get(name, required)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.error(name, f"expected a string, got {value!r}")
        if required and not value.strip():
            raise self.error(name, "empty string")
        return value.strip() or None

    def key(self, name: str) -> str:
        """A required id given as an integer or a string (ids are strings in the track)."""
        value = self._get(name, True)
        if is_int(value) or (isinstance(value, str) and value.strip()):
            return str(value).strip()
        raise self.error(name, f"expected an integer or a non-empty string id, got {value!r}")

    def item_ids(self, name: str, required: bool = False) -> list[int]:
        value = self._get(name, required)
        if value is None:
            return []
        if not isinstance(value, list) or not all(is_int(v) for v in value):
            raise self.error(name, f"expected a list of integer item ids, got {value!r}")
        return value

    def flag(self, name: str) -> bool:
        value = self._get(name, False)
        if value is None:
            return False
        if value not in (0, 1) or not (isinstance(value, bool) or is_int(value)):
            raise self.error(name, f"expected 0 or 1, got {value!r}")
        return bool(value)

    def strings(self, name: str) -> list[str]:
        value = self._get(name, False)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(name, f"expected a list of strings, got {value!r}")
        return value

    def mapping(self, name: str) -> dict[str, str]:
        value = self._get(name, False)
        if value is None:
            return {}
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise self.error(name, f"expected an object of strings, got {value!r}")
        return value

    def scalar(self, name: str) -> str | None:
        """An optional string or number, as text (profile fields)."""
        value = self._get(name, False)
        if value is not None and (isinstance(value, bool) or not isinstance(value, str | int | float)):
            raise self.error(name, f"expected a string or a number, got {value!r}")
        return None if value is None or not str(value).strip() else str(value).strip()


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_jsonl(path: Path) -> Iterator[JsonLine]:
    """The JSON objects of a JSON-lines file (blank lines skipped)."""
    try:
        with path.open(encoding="utf-8") as lines:
            for number, text in enumerate(lines, start=1):
                if text.strip():
                    yield JsonLine(path, number, _parse(path, number, text))
    except UnicodeDecodeError as err:
        raise DataError(path, None, None, f"not UTF-8 text ({err.reason})") from err


def _parse(path: Path, number: int, text: str) -> dict[str, Any]:
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{number}", None, None, f"not valid JSON ({err.msg})") from err
    if not isinstance(record, dict):
        raise DataError(
            f"{path}:{number}", None, None, f"expected a JSON object, got {type(record).__name__}"
        )
    return record
