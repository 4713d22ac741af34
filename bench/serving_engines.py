"""Serving throughput of trie-constrained SID beam search: our vLLM engine vs transformers.

Rows, on the same model, prompts and trie:

* ``vllm``: ``onesearch_ray.decoding.vllm_engine.VLLMEngine`` (in-process vLLM, the beam search
  runs inside vLLM's batch: one request per beam, new requests only where beams fork, exact
  full-vocab scores); ``vllm-compiled``: the same with torch.compile (``--engine vllm-compiled``);
* ``hf_generate``: the usual baseline, transformers ``model.generate(num_beams=B,
  num_return_sequences=B, prefix_allowed_tokens_fn=...)`` over the same trie (``length_penalty=0``, so
  its sequence score is the same sum of log-probabilities);
* ``transformers``: our reference ``TransformersEngine`` (one prompt prefill, KV-cache reorder).

For each beam width: queries/s and per-query p50/p99 latency (queries go in chunks of
``--batch-size`` per ``search()`` call, ``--baseline-batch-size`` for ``hf_generate``, whose padded
batches are slower than one query at a time; a query's latency is its chunk's), and the top-K
agreement of every row with the ``transformers`` row (always run: it is the reference) and with
``hf_generate``: exact same SID list (order included), mean top-K set overlap, max score gap,
invalid SIDs. Prints a markdown table, writes JSON. Every engine pads prompts as the model was
trained (``prompt_block`` in its config: left-padded to a multiple of 32 tokens, vLLM's CPU KV block,
for models built by this project).

Expected time on an idle 2-core box with the defaults (20 prompts, beams 10 50 350, demo model
already built): ~3 minutes, two thirds of it ``hf_generate`` at beam 350 (~3 s a query); building
the demo model the first time adds ~45 s.

Model: ``--run RUN`` (a trained run: its sid_tokenizer, latest model and first test queries' search
prompts), ``--model-dir DIR`` with ``--run`` to pick another model, or by default a demo model built
(once, cached under ``--demo-dir``) from random item vectors and trained for ``--demo-steps`` SFT
steps so that its distribution is not flat.

    python bench/serving_engines.py                                   # full: beams 10 50 350
    python bench/serving_engines.py --batch-size 10 --baseline-batch-size 1 --prompts 40  # throughput
    python bench/serving_engines.py --beams 10 --prompts 5            # quick check
    python bench/serving_engines.py --run runs/hd --prompts 50
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _threads_arg(argv: list[str]) -> str:
    for i, arg in enumerate(argv):
        if arg.startswith("--threads="):
            return arg.split("=", 1)[1]
        if arg == "--threads" and i + 1 < len(argv):
            return argv[i + 1]
    return "1"


if __name__ == "__main__":  # threads are fixed before torch loads, the same for every engine
    os.environ.setdefault("OMP_NUM_THREADS", _threads_arg(sys.argv))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from onesearch_ray.decoding.beam import SidHit, TransformersEngine  # noqa: E402
from onesearch_ray.decoding.trie import SidTrie  # noqa: E402
from onesearch_ray.khqe import QuantizerConfig, SemanticIdTokenizer  # noqa: E402
from onesearch_ray.model import ModelConfig, build_model, load_model, save_model  # noqa: E402
from onesearch_ray.prompts import (  # noqa: E402
    PromptBuilder,
    SidVocabulary,
    encode_prompts,
    prompt_block,
    train_text_tokenizer,
)
from onesearch_ray.serving.engines import ENGINES, make_engine  # noqa: E402

ROWS = ["hf_generate", *ENGINES]  # the baseline and every serving engine

WORDS = (
    "red blue black white oak steel brass led cordless drill saw hammer lamp table chair paint "
    "pipe valve hose tile door lock faucet sink fan light bulb wire cable outlet switch panel"
).split()


@dataclass
class Setup:
    model_dir: Path
    sids: SemanticIdTokenizer
    prompts: list[str]


# ---- the model under test ------------------------------------------------------------------
def build_demo(directory: Path, *, size: str, n_items: int, layout: str, steps: int, seed: int = 0) -> Setup:
    """A model trained for ``steps`` SFT steps on search and title prompts of random items (cached)."""
    from onesearch_ray.behavior.views import UserContext
    from onesearch_ray.train.sft import SFTConfig, tokenize_pairs, train

    prompts_file = directory / "prompts.json"
    if prompts_file.exists():
        return Setup(directory / "model", SemanticIdTokenizer.load(directory / "sid_tokenizer"),
                     json.loads(prompts_file.read_text()))  # fmt: skip
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n_items, 32)).astype(np.float32)
    sids = SemanticIdTokenizer.fit(np.arange(n_items), vectors, config=QuantizerConfig(layout=layout))
    titles = [" ".join(rng.choice(WORDS, 4)) for _ in range(n_items)]
    tokenizer = train_text_tokenizer(titles, sids, vocab_size=1000)
    builder, codes = PromptBuilder(sids), sids.item_codes(list(range(n_items)))

    def search_prompt(item: int) -> str:
        history = rng.integers(0, n_items, size=int(rng.integers(0, 8))).tolist()
        query = " ".join(titles[item].split()[: int(rng.integers(1, 4))])
        return builder.search_prompt(query, codes[item], UserContext.from_history("u", history))

    pairs = [(search_prompt(i), builder.target(codes[i])) for i in range(n_items)]
    pairs += [(builder.title_to_sid_prompt(titles[i]), builder.target(codes[i])) for i in range(n_items)]
    model = build_model(ModelConfig(size=size, seed=seed), tokenizer)
    config = SFTConfig(max_steps=steps, batch_size=16, warmup_steps=5, learning_rate=3e-3, log_every=10)
    examples = tokenize_pairs(tokenizer, pairs, 256, prompt_block(model.config))
    metrics = train(model, examples, config, pad_id=tokenizer.pad_token_id)
    print(f"demo model: {size}, {n_items} items, layout {layout}, {steps} steps, loss {metrics['loss']:.2f}")
    vocabulary = SidVocabulary.from_tokenizers(tokenizer, sids)
    save_model(model.eval(), tokenizer, directory / "model", sid_vocabulary=vocabulary)
    sids.save(directory / "sid_tokenizer")
    held_out = [search_prompt(int(i)) for i in rng.integers(0, n_items, size=500)]
    prompts_file.write_text(json.dumps(held_out))
    return Setup(directory / "model", sids, held_out)


def run_setup(run: Path, model_dir: Path | None, n_prompts: int) -> Setup:
    """A trained run's model and search prompts of its first test queries (no user context)."""
    import pyarrow.parquet as pq

    from onesearch_ray.runs import latest_model_dir

    sids = SemanticIdTokenizer.load(run / "sid_tokenizer")
    table = pq.read_table(run / "queries.parquet", columns=["query", "split", "codes"]).to_pylist()
    rows = [r for r in table if r["split"] == "test"] or table
    builder = PromptBuilder(sids)
    prompts = [builder.search_prompt(r["query"], r["codes"], None) for r in rows[:n_prompts]]
    return Setup(model_dir or latest_model_dir(run), sids, prompts)


# ---- the baseline --------------------------------------------------------------------------
class HFGenerateEngine:
    """transformers beam search with ``prefix_allowed_tokens_fn`` over the trie (the usual baseline)."""

    def __init__(self, model, tokenizer, vocabulary: SidVocabulary, trie: SidTrie) -> None:
        self.model, self.tokenizer, self.vocabulary, self.trie = model.eval(), tokenizer, vocabulary, trie

    @torch.inference_mode()
    def search(self, prompts: Sequence[str], beam: int) -> list[list[SidHit]]:
        # the model's own (attended) alignment pads, then masked left padding to the batch's longest
        ids = encode_prompts(self.tokenizer, prompts, prompt_block(self.model.config))
        width, depth, pad = max(map(len, ids)), self.trie.depth, self.tokenizer.pad_token_id
        out = self.model.generate(
            input_ids=torch.tensor([[pad] * (width - len(row)) + row for row in ids]),
            attention_mask=torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in ids]),
            num_beams=beam,
            num_return_sequences=beam,
            max_new_tokens=depth,
            do_sample=False,
            length_penalty=0.0,
            early_stopping=True,
            prefix_allowed_tokens_fn=self._allowed_fn(width),
            return_dict_in_generate=True,
            output_scores=True,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        sequences = out.sequences[:, width : width + depth].tolist()
        scores = out.sequences_scores.tolist()
        hits = []
        for start in range(0, len(sequences), beam):
            rows = zip(sequences[start : start + beam], scores[start : start + beam], strict=True)
            hits.append([SidHit(self._codes(s), float(v)) for s, v in rows if np.isfinite(v)])
        return hits

    def _allowed_fn(self, width: int) -> Callable[[int, torch.Tensor], list[int]]:
        def allowed(batch_id: int, input_ids: torch.Tensor) -> list[int]:
            generated = input_ids[width:].tolist()
            codes = [self.vocabulary.position_of(t) for t in generated]
            if len(generated) >= self.trie.depth or any(c is None or c[0] != p for p, c in enumerate(codes)):
                return [self.tokenizer.eos_token_id]  # a dead (-inf) beam: anything finite-free
            prefix = tuple(c[1] for c in codes)
            return self.vocabulary.position_token_ids[len(prefix)][self.trie.allowed_codes(prefix)].tolist()

        return allowed

    def _codes(self, ids: list[int]) -> tuple[int, ...]:
        try:
            return self.vocabulary.ids_to_codes(ids)
        except ValueError:
            return (-1,) * self.trie.depth


# ---- measuring -----------------------------------------------------------------------------
def timed(engine, prompts: Sequence[str], beam: int, batch_size: int) -> tuple[list[list[SidHit]], dict]:
    engine.search(prompts[:batch_size], beam)  # warm-up
    hits, latencies = [], []
    started = time.perf_counter()
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        t0 = time.perf_counter()
        hits += engine.search(chunk, beam)
        latencies += [time.perf_counter() - t0] * len(chunk)
    total = time.perf_counter() - started
    ms = sorted(1000 * x for x in latencies)
    stats = {
        "qps": len(prompts) / total,
        "p50_ms": statistics.median(ms),
        "p99_ms": ms[min(len(ms) - 1, int(np.ceil(0.99 * len(ms))) - 1)],
        "seconds": total,
    }
    return hits, stats


def agreement(hits: list[list[SidHit]], reference: list[list[SidHit]], trie: SidTrie) -> dict:
    """Same top-K list (order included) / mean set overlap / max score gap vs the reference row."""
    same, overlaps, gaps, invalid, returned = 0, [], [0.0], 0, 0
    for got, want in zip(hits, reference, strict=True):
        got_codes, want_codes = [h.codes for h in got], [h.codes for h in want]
        same += got_codes == want_codes
        overlaps.append(len(set(got_codes) & set(want_codes)) / max(1, len(want_codes)))
        want_score = {h.codes: h.score for h in want}
        gaps += [abs(h.score - want_score[h.codes]) for h in got if h.codes in want_score]
        invalid += sum(h.codes not in trie for h in got)
        returned += len(got)
    return {
        "identical_topk": same / max(1, len(hits)),
        "topk_overlap": float(np.mean(overlaps)) if overlaps else 1.0,
        "max_score_gap": max(gaps),
        "invalid_sids": invalid,
        "returned_per_query": returned / max(1, len(hits)),
    }


def _mean_tokens(tokenizer, prompts: Sequence[str], block: int) -> float:
    return float(np.mean([len(ids) for ids in encode_prompts(tokenizer, prompts, block)]))


def markdown(rows: list[dict]) -> str:
    head = (
        "| beam | engine | queries a call | q/s | p50 ms | p99 ms | vs hf_generate | same top-K as reference "
        "| overlap | same top-K as hf_generate | max score gap |"
    )
    lines = [head, "|" + "---|" * 11]
    nan = float("nan")
    for r in rows:
        lines.append(
            f"| {r['beam']} | {r['engine']} | {r['batch_size']} | {r['qps']:.2f} | {r['p50_ms']:.1f} "
            f"| {r['p99_ms']:.1f} "
            f"| {r.get('speedup_vs_hf_generate', nan):.1f}x | {r['identical_topk']:.0%} "
            f"| {r['topk_overlap']:.1%} | {r.get('identical_vs_hf_generate', nan):.0%} "
            f"| {r['max_score_gap']:.1e} |"
        )
    return "\n".join(lines)


# ---- main ----------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", type=Path, help="a trained run (sid_tokenizer, model, queries.parquet)")
    parser.add_argument("--model-dir", type=Path, help="with --run: this model instead of the run's latest")
    parser.add_argument("--beams", type=int, nargs="+", default=[10, 50, 350])
    parser.add_argument("--prompts", type=int, default=20, help="queries per beam width")
    parser.add_argument("--batch-size", type=int, default=1, help="queries per search() call")
    parser.add_argument("--baseline-batch-size", type=int, help="hf_generate's (default: --batch-size)")
    parser.add_argument("--engines", nargs="+", default=ROWS, choices=ROWS)
    parser.add_argument("--threads", type=int, default=1, help="torch/OpenMP threads, all engines")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/serving_engines.json"))
    parser.add_argument("--demo-dir", type=Path, default=Path("runs/bench/serving_demo"))
    parser.add_argument("--demo-size", default="small")
    parser.add_argument("--demo-items", type=int, default=4000)
    parser.add_argument("--demo-layout", default="64-64-64+opq2x64")
    parser.add_argument("--demo-steps", type=int, default=60)
    parser.add_argument(
        "--vllm-kwargs", type=json.loads, default={}, help="JSON, e.g. '{\"block_size\": 64}'"
    )
    args = parser.parse_args(argv)
    if args.baseline_batch_size is None:
        args.baseline_batch_size = args.batch_size
    return args


def make_engines(args: argparse.Namespace, setup: Setup, trie: SidTrie) -> dict[str, object]:
    model, tokenizer = load_model(setup.model_dir)
    vocabulary = SidVocabulary.from_tokenizers(tokenizer, setup.sids)
    engines: dict[str, object] = {}
    if "transformers" in args.engines or "vllm" in args.engines or "hf_generate" in args.engines:
        engines["transformers"] = TransformersEngine(model, tokenizer, vocabulary.position_token_ids, trie)
    if "hf_generate" in args.engines:
        engines["hf_generate"] = HFGenerateEngine(model, tokenizer, vocabulary, trie)
    for name in ("vllm", "vllm-compiled"):
        if name in args.engines:
            started = time.perf_counter()
            engines[name] = make_engine(name, **args.vllm_kwargs)(setup.model_dir, vocabulary, trie)
            print(f"{name} engine up in {time.perf_counter() - started:.1f} s")
    return engines


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.run:
        setup = run_setup(args.run, args.model_dir, args.prompts)
    else:
        setup = build_demo(
            args.demo_dir, size=args.demo_size, n_items=args.demo_items, layout=args.demo_layout,
            steps=args.demo_steps,
        )  # fmt: skip
    trie = SidTrie.of_catalogue(setup.sids)
    engines = make_engines(args, setup, trie)
    tokenizer, block = engines["transformers"].tokenizer, engines["transformers"].prompt_block
    prompts = setup.prompts[: args.prompts]
    rows = []
    for beam in args.beams:
        batch_of = {name: args.batch_size for name in engines} | {"hf_generate": args.baseline_batch_size}
        results = {name: timed(engine, prompts, beam, batch_of[name]) for name, engine in engines.items()}
        reference = results["transformers"][0]
        for name, (hits, stats) in results.items():
            if name not in args.engines:
                continue
            row = {"beam": beam, "engine": name, "batch_size": batch_of[name], **stats}
            row |= agreement(hits, reference, trie)
            if "hf_generate" in results:
                baseline_hits, baseline = results["hf_generate"]
                row["speedup_vs_hf_generate"] = stats["qps"] / baseline["qps"]
                versus = agreement(hits, baseline_hits, trie)
                row["identical_vs_hf_generate"] = versus["identical_topk"]
                row["overlap_vs_hf_generate"] = versus["topk_overlap"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    report = {
        "model_dir": str(setup.model_dir),
        "prompts": len(prompts),
        "threads": args.threads,
        "prompt_block": block,
        "level_sizes": list(trie.level_sizes),
        "catalogue_sids": len(trie),
        "prompt_tokens_mean": _mean_tokens(tokenizer, prompts, block),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print("\n" + markdown(rows) + f"\n\nJSON: {args.out}")
    return rows


if __name__ == "__main__":
    main()
