"""The A/B report on disk: ``simulation.json``, ``simulation.md`` (tables) and ``simulation.png``."""

from __future__ import annotations

from pathlib import Path

from onesearch_ray.io import atomic_path, write_json
from onesearch_ray.sim.metrics import METRICS

LABELS = {
    "orders_per_1k": "orders / 1k searches",
    "buyers_per_1k": "buyers / 1k searches",
    "ctr": "CTR",
    "cvr": "CVR",
    "mean_relevance": "mean relevance shown",
    "expected_orders_per_1k": "expected orders / 1k",
}
_DIGITS = {
    "orders_per_1k": 1,
    "buyers_per_1k": 1,
    "ctr": 4,
    "cvr": 3,
    "mean_relevance": 3,
    "expected_orders_per_1k": 1,
}


def _interval(entry: dict, digits: int) -> str:
    if entry["value"] is None:
        return "n/a"
    value = f"{entry['value']:.{digits}f}"
    return (
        value if entry["low"] is None else f"{value} [{entry['low']:.{digits}f}, {entry['high']:.{digits}f}]"
    )


def _difference(entry: dict | None, digits: int) -> str:
    """Relative difference in % with its interval; the absolute one where the control is 0."""
    if not entry or entry["diff"] is None:
        return "n/a"
    if entry["rel_pct"] is not None and entry["rel_low"] is not None:
        return f"{entry['rel_pct']:+.1f}% [{entry['rel_low']:+.1f}, {entry['rel_high']:+.1f}]"
    if entry["low"] is None:
        return f"{entry['diff']:+.{digits}f}"
    return f"{entry['diff']:+.{digits}f} [{entry['low']:+.{digits}f}, {entry['high']:+.{digits}f}] (abs.)"


def to_markdown(report: dict) -> str:
    config, world, control = report["config"], report["world"], report["control"]
    confidence = round(100 * config["confidence"])
    lines = [
        "## Simulated A/B test",
        "",
        f"World: {world['track']} ({world['n_items']} items, {world['n_cold_items']} cold; "
        f"{world['n_users']} users, {world['n_cold_users']} served as new; {world['n_queries']} queries). "
        f"{world['n_searches']} searches, seed {config['seed']}, page of {config['page_size']}; "
        f"{confidence}% intervals: percentile bootstrap over users ({config['bootstrap']} resamples); "
        f"differences are relative to the control, **{control}**, on the same searches.",
        "",
        "| system | what | CPU ms / query | wall ms / query | set-up s |",
        "|---|---|---|---|---|",
    ]
    for name, info in report["systems"].items():
        lines.append(
            f"| {name} | {info['description']} | {info['cpu_ms_per_query']:.1f} | "
            f"{info['wall_ms_per_query']:.1f} | {info['setup_seconds']:.1f} |"
        )
    lines += ["", report["cpu_note"]]
    for piece, result in report["slices"].items():
        lines += ["", f"### {piece}: {result['n_searches']} searches, {result['n_users']} users", ""]
        lines += ["| system | " + " | ".join(LABELS[m] for m in METRICS) + " |"]
        lines += ["|---" * (len(METRICS) + 1) + "|"]
        for name, entry in result["systems"].items():
            cells = [_interval(entry["metrics"][m], _DIGITS[m]) for m in METRICS]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        others = [n for n in result["systems"] if n != control]
        if others:
            lines += ["", "| vs " + control + " | " + " | ".join(LABELS[m] for m in METRICS) + " |"]
            lines += ["|---" * (len(METRICS) + 1) + "|"]
            for name in others:
                diffs = result["systems"][name]["vs_control"]
                lines.append(
                    f"| {name} | " + " | ".join(_difference(diffs.get(m), _DIGITS[m]) for m in METRICS) + " |"
                )
    return "\n".join(lines) + "\n"


def _whiskers(entries: list[dict]) -> tuple[list[float], list[list[float]]]:
    """Bar heights (0 where undefined) and (below, above) whisker lengths (0 where no interval)."""
    values = [e["value"] if e["value"] is not None else 0.0 for e in entries]
    below = [v - e["low"] if e["low"] is not None else 0.0 for v, e in zip(values, entries, strict=True)]
    above = [e["high"] - v if e["high"] is not None else 0.0 for v, e in zip(values, entries, strict=True)]
    return values, [[max(0.0, x) for x in below], [max(0.0, x) for x in above]]


def plot_report(
    report: dict,
    path: Path,
    metrics: tuple[str, ...] = ("orders_per_1k", "expected_orders_per_1k", "ctr", "mean_relevance"),
) -> Path:
    """Bars with interval whiskers: one row per metric, one column per slice, a bar per system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pieces = list(report["slices"])
    fig, axes = plt.subplots(
        len(metrics), len(pieces), figsize=(3.2 * len(pieces), 2.6 * len(metrics)), squeeze=False
    )
    for col, piece in enumerate(pieces):
        systems = report["slices"][piece]["systems"]
        for row, metric in enumerate(metrics):
            ax = axes[row][col]
            values, errors = _whiskers([systems[name]["metrics"][metric] for name in systems])
            ax.bar(
                range(len(values)),
                values,
                yerr=errors,
                capsize=3,
                color=[f"C{i}" for i in range(len(values))],
            )
            ax.set_xticks(range(len(values)), list(systems), rotation=30, ha="right", fontsize=8)
            ax.grid(axis="y", alpha=0.3)
            if row == 0:
                ax.set_title(piece, fontsize=10)
            if col == 0:
                ax.set_ylabel(LABELS[metric], fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(report: dict, out: str | Path) -> dict[str, Path]:
    """Write the JSON, markdown and plot into directory ``out``; their paths."""
    out = Path(out)
    paths = {
        "json": out / "simulation.json",
        "markdown": out / "simulation.md",
        "plot": out / "simulation.png",
    }
    write_json(paths["json"], report)
    with atomic_path(paths["markdown"]) as tmp:
        tmp.write_text(to_markdown(report))
    plot_report(report, paths["plot"])
    return paths
