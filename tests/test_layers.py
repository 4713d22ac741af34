"""The layer order of docs/layout.md holds: no module imports one of a layer above its own."""

from __future__ import annotations

from tests.layering import (
    PACKAGES,
    ROOT,
    imports,
    layer_of,
    layers,
    module_name,
    project_imports,
    upward_calls,
)


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


def test_a_call_into_a_higher_layer_is_counted():
    """The tracer the evaluation's test runs under sees a callback: the tokenizer (layer 1) calling a
    data function (layer 2) handed to it."""
    from onesearch_ray.data.kuaisearch import query_split
    from onesearch_ray.text import tokenize

    with upward_calls() as upward:
        tokenize(["plain words"])
        assert not upward
        tokenize(["中文"], segment=query_split)
    assert list(upward) == ["onesearch_ray.text (1) -> onesearch_ray.data.kuaisearch (2)"]
