"""The generator on a next-item track, one row per behaviour lever, beside the baselines.

Rows (whole catalogue, docs/evaluation.md's next-item metrics), on every test row and on the test
rows of the users outside the tuning half (``generator.examples.tuning_user``: no selection row and
no default choice came from them):

    popularity, cooccurrence, dense history   the baselines, fit on the valid rows
    generator, untrained                       behaviour views and dense history, no co-purchase term
    + co-purchase term                         untrained: the run's co-purchase terms at their start weight
    + trained                                  RUN/generator as ``onesearch generator`` kept it
    TIGER, MiniOneRec (published)              the papers' Industrial figures (all test rows)

    python bench/next_item_levers.py --run runs/amz --data ../shared/data/amazon18_industrial
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from onesearch_ray.data import load_track  # noqa: E402
from onesearch_ray.generator.catalogue import build_generator, load_catalogue  # noqa: E402
from onesearch_ray.generator.evaluate import next_item_split  # noqa: E402
from onesearch_ray.generator.examples import NEXT_ITEM_TRAIN_SPLIT, tuning_user  # noqa: E402
from onesearch_ray.generator.job import MODEL_DIR  # noqa: E402
from onesearch_ray.generator.store import load_generator  # noqa: E402
from onesearch_ray.io import read_json, write_json  # noqa: E402
from onesearch_ray.metrics import next_item_metrics  # noqa: E402
from onesearch_ray.retrieval.baselines import (  # noqa: E402
    CooccurrenceBaseline,
    DenseHistoryBaseline,
    PopularityBaseline,
)
from onesearch_ray.retrieval.tracks import next_item_eval_inputs  # noqa: E402

PUBLISHED = {  # Amazon 2018 Industrial, HR@10 / NDCG@10 (docs/evaluation.md)
    "TIGER (published)": {"HR@10": 0.1321, "NDCG@10": 0.0908},
    "MiniOneRec, 1.5B on GPUs (published)": {"HR@10": 0.1586, "NDCG@10": 0.1167},
}
COLUMNS = ("all", "held-out users")


def baseline_rows(track, catalogue) -> dict[str, dict[str, dict]]:
    train_histories, train_targets, _ = next_item_eval_inputs(track, NEXT_ITEM_TRAIN_SPLIT)
    histories, targets, users = next_item_eval_inputs(track, "test")
    item_ids = track.items["item_id"].to_pylist()
    vectors = {int(i): v for i, v in zip(catalogue.item_ids, catalogue.item_vectors, strict=True)}
    known = [i for i in item_ids if i in vectors]
    systems = {
        "popularity": PopularityBaseline(item_ids, train_histories, train_targets),
        "cooccurrence": CooccurrenceBaseline(item_ids, train_histories, train_targets),
        "dense history": DenseHistoryBaseline(known, catalogue.item_vectors),
    }
    held = [i for i, user in enumerate(users) if not tuning_user(user)]
    rows = {}
    for name, system in systems.items():
        ranked = system.recommend(histories, 10)
        rows[name] = {
            "all": next_item_metrics(ranked, targets, (10,)),
            "held-out users": next_item_metrics([ranked[i] for i in held], [targets[i] for i in held], (10,)),
        }
    return rows


def generator_rows(run: Path, track, catalogue) -> dict[str, dict[str, dict]]:
    trained, _ = load_generator(run / MODEL_DIR)
    models = {
        "generator, untrained": build_generator(catalogue, replace(trained.config, copurchase_window=0)),
        "+ co-purchase term": build_generator(catalogue, trained.config, lexical=trained.lexical),
        "+ trained": trained,
    }
    held = [
        row
        for row, (user, split) in enumerate(
            zip(*(track.sequences[c].to_pylist() for c in ("user_id", "split")), strict=True)
        )
        if split == "test" and not tuning_user(user)
    ]
    return {
        name: {
            "all": next_item_split(model, catalogue, track, "test", 10),
            "held-out users": next_item_split(model, catalogue, track, "test", 10, rows=held),
        }
        for name, model in models.items()
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", type=Path, required=True, help="encoded run with a trained RUN/generator")
    parser.add_argument("--data", type=Path, required=True, help="the next-item track directory")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    track = load_track(args.data)
    catalogue = load_catalogue(args.run, track)
    rows = baseline_rows(track, catalogue) | generator_rows(args.run, track, catalogue)
    rows |= {name: {"all": figures} for name, figures in PUBLISHED.items()}
    minutes = read_json(args.run / MODEL_DIR / "history.json").get("minutes")
    print(f"\n{track.name}: test rows, HR@10 / NDCG@10 (trained in {minutes or 0:.1f} min)")
    print("| system | all: HR@10 | all: NDCG@10 | held-out users: HR@10 | held-out users: NDCG@10 |")
    print("|---|---|---|---|---|")
    for name, columns in rows.items():
        cells = [
            f"{columns[c][m]:.4f}" if c in columns else "" for c in COLUMNS for m in ("HR@10", "NDCG@10")
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")
    n = {c: rows["+ trained"][c]["n_rows"] for c in COLUMNS}
    print(f"\nrows: {n}")
    if args.out:
        write_json(args.out, rows)


if __name__ == "__main__":
    main()
