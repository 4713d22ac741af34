"""KHQE preparation job (Ray Data): catalogue + queries -> embeddings -> semantic IDs.

Reads any track directory (Home Depot, Amazon 2018 or the synthetic format), embeds item texts,
queries and keyphrases with encoder actors (``map_batches`` over an actor pool), fuses keywords,
fits RQ-Kmeans + OPQ codebooks and writes, into the run directory:

    sid_tokenizer/        the fitted SemanticIdTokenizer (versioned, no pickle)
    lexicon.json          the keyphrase lexicon
    embeddings/*.npy      raw embeddings (cached: a rerun with the same texts skips encoding)
    items.parquet         item_id, title, sid, codes
    queries.parquet       query_id, query, split, sid, codes (when the track has queries)
    codes_report.json     CUR, ICR, items per SID, timings
    manifest.json         config, versions, input hashes
    holdout.json          with ``--holdout-cold``: the held-out items (docs/evaluation.md, cold start),
                          embedded but left out of fitting and of the SID table, so no stage trains
                          on them; ``bench/cold_start.py`` adds them live later

Resources: ``--actors`` encoder actors with ``--threads`` CPUs each (default: one actor using every
CPU of a local cluster). Run it either way:

    python -m pipelines.prepare --data DIR --out RUN
    ray job submit --working-dir . -- python -m pipelines.prepare --data DIR --out RUN
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray

from onesearch_ray.data import load_track, track_format
from onesearch_ray.io import write_json, write_parquet
from onesearch_ray.khqe import (
    EncodedTexts,
    EncoderConfig,
    KeyphraseLexicon,
    KHQEConfig,
    SemanticIdTokenizer,
    build_semantic_ids,
    catalogue_texts,
    enhance,
)
from onesearch_ray.khqe.cache import load_embeddings, store_embeddings
from onesearch_ray.khqe.config import load_khqe_config
from onesearch_ray.khqe.encoder import TextKind, make_encoder
from onesearch_ray.runs import (
    HOLDOUT_COLD,
    HOLDOUT_FILE,
    RunDir,
    cold_holdout_mask,
    texts_digest,
    write_holdout,
)
from pipelines.common import init_ray

log = logging.getLogger("onesearch.prepare")


class EmbedActor:
    """One text encoder per actor; Ray Data streams batches of ``text`` through it."""

    def __init__(self, encoder_config: EncoderConfig, threads: int, kind: TextKind) -> None:
        import torch

        torch.set_num_threads(threads)
        self.encoder, self.kind = make_encoder(encoder_config), kind

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = [str(t) for t in batch["text"]]
        return {"row": batch["row"], "vector": self.encoder.encode(texts, self.kind)}


def embed_with_ray(
    texts: list[str], encoder: EncoderConfig, actors: int, threads: int, kind: TextKind
) -> np.ndarray:
    """Embed ``texts`` (queries or item passages, see ``TextKind``) on an actor pool; rows come back
    in input order."""
    if not texts:
        return np.zeros((0, 0), dtype=np.float32)
    # several blocks so actors stream and share the work (slices, not a repartition: an all-to-all
    # step would hold CPUs the actor pool is waiting for on a small cluster)
    table = pa.table({"row": np.arange(len(texts)), "text": texts})
    block = max(256, -(-len(texts) // max(2 * actors, -(-len(texts) // 2048))))
    dataset = ray.data.from_arrow([table.slice(start, block) for start in range(0, len(texts), block)])
    embedded = dataset.map_batches(
        EmbedActor,
        fn_constructor_kwargs={"encoder_config": encoder, "threads": threads, "kind": kind},
        batch_size=encoder.batch_size * 4,
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=threads,
        batch_format="numpy",
    )
    rows, vectors = [], []
    for batch in embedded.iter_batches(batch_format="numpy", batch_size=None):
        rows.append(batch["row"])
        vectors.append(batch["vector"])
    order = np.argsort(np.concatenate(rows))
    return np.ascontiguousarray(np.concatenate(vectors)[order], dtype=np.float32)


def cached_embeddings(
    run: RunDir,
    name: str,
    texts: list[str],
    encoder: EncoderConfig,
    actors: int,
    threads: int,
    kind: TextKind,
) -> np.ndarray:
    """Embeddings for ``texts``, reusing ``embeddings/<name>.npy`` when texts and encoder are unchanged
    (each name always holds one kind of text)."""
    cached = load_embeddings(run.path, name, texts, encoder)
    if cached is not None:
        log.info("embeddings/%s: cached (%d texts)", name, len(texts))
        return cached
    started = time.perf_counter()
    vectors = embed_with_ray(texts, encoder, actors, threads, kind)
    log.info("embeddings/%s: %d texts in %.1fs", name, len(texts), time.perf_counter() - started)
    store_embeddings(run.path, name, texts, encoder, vectors)
    return vectors


def prepare(
    data_dir: str | Path,
    out_dir: str | Path,
    config: KHQEConfig,
    actors: int = 1,
    threads: int = 0,
    holdout: str | None = None,
) -> dict:
    """Run KHQE on a track directory; returns the codes report (also written to codes_report.json).

    ``holdout="cold"`` leaves evaluation.md's cold-start items out of the lexicon, the fitting and
    the SID table (they are still embedded: the cache covers the whole catalogue for the baselines).
    """
    if holdout not in (None, HOLDOUT_COLD):
        raise ValueError(f"holdout {holdout!r}: the only hold-out is {HOLDOUT_COLD!r}")
    if track_format(out_dir):  # the run's items.parquet and queries.parquet would replace the track's
        raise ValueError(f"--out {out_dir} is a track directory: write the run to a directory of its own")
    started = time.perf_counter()
    run = RunDir(out_dir)
    track = load_track(data_dir)
    # size actors by what is free now, so an actor never waits for CPUs held elsewhere
    threads = threads or max(1, int(ray.available_resources().get("CPU", 1)) // max(1, actors))
    all_items = track.items
    held_out = (
        cold_holdout_mask(all_items.column("item_id").to_pylist())
        if holdout
        else np.zeros(all_items.num_rows, bool)
    )
    items = all_items.filter(pa.array(~held_out))
    item_texts = catalogue_texts(items)
    queries = track.queries
    query_texts = queries.column("query").to_pylist() if queries is not None else []
    train_mask = (
        np.array(queries.column("split").to_pylist()) == "train" if queries is not None else np.zeros(0, bool)
    )
    train_query_texts = [q for q, keep in zip(query_texts, train_mask, strict=True) if keep]
    attributes = items.column("attributes").to_pylist() if "attributes" in items.column_names else []
    lexicon = KeyphraseLexicon.build(train_query_texts, [dict(a or []) for a in attributes], config.lexicon)
    write_json(run / "lexicon.json", lexicon.to_json())

    encode = config.encoder
    all_vectors = cached_embeddings(
        run, "items", catalogue_texts(all_items), encode, actors, threads, "passage"
    )
    item_vectors = all_vectors[~held_out]
    query_vectors = cached_embeddings(run, "queries", query_texts, encode, actors, threads, "query")
    # keyphrases are query n-grams and attribute values: short, query-like texts
    phrase_vectors = cached_embeddings(run, "phrases", lexicon.vocabulary(), encode, actors, threads, "query")
    embed_seconds = time.perf_counter() - started

    train_queries = (
        EncodedTexts(train_query_texts, query_vectors[train_mask]) if len(train_query_texts) else None
    )
    tokenizer, report = build_semantic_ids(
        items.column("item_id").to_numpy(),
        EncodedTexts(item_texts, item_vectors),
        train_queries,
        lexicon,
        phrase_vectors,
        config,
    )
    tokenizer.save(run / "sid_tokenizer")
    _write_item_sids(run, tokenizer, items)
    if queries is not None:
        fused, _ = enhance(
            EncodedTexts(query_texts, query_vectors),
            lexicon if config.keyword_enhancement else None,
            phrase_vectors,
            config.keyword_text_weight,
        )
        write_query_sids(run, tokenizer, queries, tokenizer.encode(fused))
    report.update(
        {
            "track": track.name,
            "data": str(Path(data_dir).resolve()),
            "embed_seconds": embed_seconds,
            "total_seconds": time.perf_counter() - started,
            "n_queries": len(query_texts),
            "n_held_out": int(held_out.sum()),
        }
    )
    outputs = {"sid_tokenizer": "sid_tokenizer", "codes_report": "codes_report.json", "icr": report["icr"]}
    if holdout:
        write_holdout(run.path, all_items.column("item_id").filter(pa.array(held_out)).to_pylist())
        outputs["holdout"] = HOLDOUT_FILE
    else:  # a rerun without hold-out must not leave an earlier run's list behind
        (run / HOLDOUT_FILE).unlink(missing_ok=True)
    write_json(run / "codes_report.json", report)
    run.record_stage(
        "encode",
        config=config.to_dict(),
        inputs={
            "data": str(Path(data_dir).resolve()),
            "items_digest": texts_digest(item_texts),
            "holdout": holdout,
        },
        outputs=outputs,
    )
    return report


def _write_item_sids(run: RunDir, tokenizer: SemanticIdTokenizer, items: pa.Table) -> None:
    codes = tokenizer.item_codes(items.column("item_id").to_pylist())
    write_parquet(
        run / "items.parquet",
        pa.table(
            {
                "item_id": items.column("item_id"),
                "title": items.column("title"),
                "sid": [tokenizer.sid_string(c) for c in codes],
                "codes": pa.array(codes.tolist(), pa.list_(pa.int32())),
            }
        ),
    )


def write_query_sids(
    run: RunDir, tokenizer: SemanticIdTokenizer, queries: pa.Table, codes: np.ndarray
) -> None:
    write_parquet(
        run / "queries.parquet",
        pa.table(
            {
                "query_id": queries.column("query_id"),
                "query": queries.column("query"),
                "split": queries.column("split"),
                "sid": [tokenizer.sid_string(c) for c in codes],
                "codes": pa.array(codes.tolist(), pa.list_(pa.int32())),
            }
        ),
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipelines.prepare", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", required=True, help="track directory (homedepot, amazon18 or synthetic format)"
    )
    parser.add_argument("--out", required=True, help="run directory to write")
    parser.add_argument("--config", help="YAML file with a `khqe:` section (see configs/)")
    parser.add_argument(
        "--layout", help="codebook layout, overrides the config (e.g. 4096-1024-512+opq2x256)"
    )
    parser.add_argument("--no-keywords", action="store_true", help="disable keyword enhancement")
    parser.add_argument("--actors", type=int, default=1, help="encoder actors")
    parser.add_argument(
        "--holdout-cold",
        action="store_true",
        help="leave evaluation.md's cold-start items (5%%) out of fitting and training (holdout.json)",
    )
    parser.add_argument("--threads", type=int, default=0, help="CPUs per encoder actor (0: all / actors)")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or a local cluster)")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config = load_khqe_config(args.config, layout=args.layout, keyword_enhancement=not args.no_keywords)
    init_ray(args.address)
    holdout = HOLDOUT_COLD if args.holdout_cold else None
    report = prepare(args.data, args.out, config, actors=args.actors, threads=args.threads, holdout=holdout)
    print(format_report(report))
    return report


def format_report(report: dict) -> str:
    lines = [
        f"track {report['track']}: {report['n_items']} items -> {report['n_sids']} SIDs, "
        f"layout {report['layout']}",
        f"  ICR {report['icr']:.4f} (raw nearest codes {report['icr_raw']:.4f})"
        f"   items/SID mean {report['items_per_sid']['mean']:.3f} "
        f"max {report['items_per_sid']['max']}",
        "  CUR " + "  ".join(f"{k} {v:.3g}" for k, v in report["cur"].items()),
        f"  keyword enhancement {report['keyword_enhancement']} (lexicon {report['lexicon_size']} phrases, "
        f"{report['items_with_keyphrase']:.1%} of items matched)",
        f"  embed {report['embed_seconds']:.1f}s  fit {report['fit_seconds']:.1f}s  "
        f"total {report['total_seconds']:.1f}s",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
