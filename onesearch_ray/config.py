"""Configs are dataclasses validated by pydantic and loaded from YAML; unknown keys are errors.

A config file has one section per stage (``khqe:``, ``generator:``, ``rewards:``, ``tune:``); see
``configs/default.yaml``. Each stage's config module has its own ``load_*_config`` built on these two
helpers. An unknown section is an error too (a ``train:`` section of the retired text-token model
would otherwise be ignored in silence).
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, TypeVar

import pydantic
import yaml

T = TypeVar("T")
SECTIONS = ("khqe", "generator", "rewards", "tune")


def parse_config(cls: type[T], payload: dict[str, Any] | None, source: str = "config") -> T:
    """Validate ``payload`` into dataclass ``cls``; errors name the offending key and the source."""
    _reject_unknown_keys(cls, payload or {}, source, prefix="")
    adapter = pydantic.TypeAdapter(cls)
    try:
        return adapter.validate_python(payload or {})
    except pydantic.ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors())
        raise ValueError(f"{source}: invalid {cls.__name__}: {problems}") from None


def _reject_unknown_keys(cls: type, payload: dict[str, Any], source: str, prefix: str) -> None:
    """pydantic ignores unknown keys of stdlib dataclasses; a typo must not pass silently."""
    if not dataclasses.is_dataclass(cls) or not isinstance(payload, dict):
        return
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key, value in payload.items():
        if key not in fields:
            raise ValueError(f"{source}: unknown key '{prefix}{key}' (known: {', '.join(sorted(fields))})")
        _reject_unknown_keys(hints[key], value, source, prefix=f"{prefix}{key}.")


def require_non_negative(config: Any, names: typing.Iterable[str], prefix: str = "") -> None:
    """Raise ValueError naming the first field of ``names`` on ``config`` that is negative."""
    for name in names:
        value = getattr(config, name)
        if value < 0:
            raise ValueError(f"{prefix}{name} must be >= 0, got {value}")


def read_yaml_section(path: str | Path | None, section: str) -> dict[str, Any]:
    if path is None:
        return {}
    path = Path(path)
    try:
        payload = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise FileNotFoundError(f"config file {path} does not exist") from None
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(payload, dict) or not isinstance(payload.get(section, {}), dict):
        raise ValueError(f"{path}: expected a mapping with a '{section}:' section")
    unknown = sorted(set(payload) - set(SECTIONS))
    if unknown:
        raise ValueError(f"{path}: unknown section(s) {unknown} (known: {', '.join(SECTIONS)})")
    return payload.get(section, {})
