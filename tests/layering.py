"""The layer order of docs/layout.md, read for the tests: each module's layer, the project modules a
file imports, and the calls a running program makes from a lower layer into a higher one."""

from __future__ import annotations

import ast
import re
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("onesearch_ray", "pipelines", "tuning", "serve_apps", "demo", "onesearch_cli")


def layers() -> dict[str, int]:
    """Module prefix -> layer number, from the numbered list under "## Layers" in docs/layout.md."""
    text = (ROOT / "docs/layout.md").read_text().split("## Layers", 1)[1]
    found = {}
    for number, line in re.findall(r"^(\d+)\. (.+)$", text, re.M):
        for name in re.findall(r"`([\w.]+)`", line):
            found[name] = int(number)
    return found


def layer_of(module: str, order: dict[str, int]) -> int:
    """The layer of the longest listed prefix of ``module``."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in order:
            return order[prefix]
    raise AssertionError(f"{module} is in no layer of docs/layout.md")


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports anywhere in it (functions included); ``from package import
    module`` names the module."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            if node.module in PACKAGES:
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def project_imports(path: Path) -> set[str]:
    return {name for name in imports(path) if name.split(".")[0] in PACKAGES and name not in PACKAGES}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@contextmanager
def upward_calls() -> Iterator[Counter]:
    """Count, while the block runs (this thread), every call from a project module into a module of a
    higher layer, keyed ``"caller (layer) -> callee (layer)"``: a program that only goes down the
    layers makes none, whatever helpers it returns from (only a callback or a late binding can)."""
    order, found, layer_of_file = layers(), Counter(), {}

    def layer(filename: str) -> tuple[str, int] | None:
        if filename not in layer_of_file:
            path = Path(filename)
            inside = path.is_relative_to(ROOT) and path.relative_to(ROOT).parts[0] in PACKAGES
            layer_of_file[filename] = (
                (module_name(path), layer_of(module_name(path), order)) if inside else None
            )
        return layer_of_file[filename]

    def profile(frame, event, _arg) -> None:
        if event != "call" or frame.f_back is None:
            return
        callee, caller = layer(frame.f_code.co_filename), layer(frame.f_back.f_code.co_filename)
        if callee and caller and callee[1] > caller[1]:
            found[f"{caller[0]} ({caller[1]}) -> {callee[0]} ({callee[1]})"] += 1

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        yield found
    finally:
        sys.setprofile(previous)
