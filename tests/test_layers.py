"""The layer order of docs/layout.md holds: no module imports one of a layer above its own."""

from __future__ import annotations

import ast
import re
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


def test_no_module_imports_a_layer_above_its_own():
    order = layers()
    assert order["onesearch_ray.generator"] < order["onesearch_ray.serving"]  # the list was read
    upward = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = module_name(path)
            for imported in project_imports(path):
                if layer_of(imported, order) > layer_of(name, order):
                    upward.append(f"{name} (layer {layer_of(name, order)}) imports {imported}")
    assert not upward, "\n".join(upward)


def test_the_library_never_imports_ray_or_the_shells():
    for path in sorted((ROOT / "onesearch_ray").rglob("*.py")):
        bad = {
            name
            for name in imports(path)
            if name.split(".")[0] in ("ray", "pipelines", "serve_apps", "tuning", "demo", "onesearch_cli")
        }
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_the_service_and_the_evaluation_stay_apart():
    """Both use the served generator (``generator.served``); the evaluation is below the service and
    the service never needs the evaluation."""
    for path in sorted((ROOT / "onesearch_ray/serving").rglob("*.py")):
        assert not {n for n in project_imports(path) if n.startswith("onesearch_ray.eval")}, path
