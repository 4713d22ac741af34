"""SFT vs +DPO vs +GRPO on the synthetic world: offline metrics of the three models of one run.

Builds a small synthetic track, encodes it (Ray Data, a local cluster), trains a tiny model through
the three SFT stages, then DPO on top of it and GRPO on top of that, all in this process (the
``onesearch_ray.train.local`` trainers: the same loops the Ray Train jobs run). Reports, per model:

- ``test``: the search eval of ``onesearch eval`` on the test queries (cold-start prompts, graded
  relevance): HR@10/50/350, NDCG@10, MRR@10;
- ``held-out searches``: the latest ``heldout_searches`` searches of the log (never trained on by
  any stage; personalised prompts): HR@10 / HR@50 of a clicked or ordered item, and the stages'
  own measures (DPO margin, GRPO top-beam composite reward).

Writes ``alignment_synthetic.json`` and ``.md`` to ``--out``.

    python bench/alignment_synthetic.py --out /tmp/bench_align [--sft-steps 150] [--align-steps 60]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from onesearch_ray.data import SyntheticConfig, write_synthetic  # noqa: E402
from onesearch_ray.eval.generative import rank_prompts  # noqa: E402
from onesearch_ray.eval.runner import EvalConfig, evaluate  # noqa: E402
from onesearch_ray.io import atomic_path, write_json  # noqa: E402
from onesearch_ray.khqe import KHQEConfig  # noqa: E402
from onesearch_ray.rewards import RewardConfig  # noqa: E402
from onesearch_ray.train.alignment import ModelScorer, align_stage, run_align_loop  # noqa: E402
from onesearch_ray.train.config import AlignConfig, DPOConfig, GRPOConfig, load_train_config  # noqa: E402
from onesearch_ray.train.local import in_process_trainer  # noqa: E402
from onesearch_ray.train.preference_data import (  # noqa: E402
    ItemRewards,
    item_rewards,
    log_searches,
    split_searches,
)
from onesearch_ray.train.stages import STAGES  # noqa: E402
from onesearch_ray.train.workflow import stage_inputs, train_stages  # noqa: E402
from pipelines import prepare  # noqa: E402
from pipelines.common import init_ray  # noqa: E402

log = logging.getLogger("bench.alignment")
MODELS = {"SFT": "personalization", "+DPO": "dpo", "+GRPO": "grpo"}
TEST_METRICS = ("HR@10", "HR@50", "HR@350", "NDCG@10", "MRR@10")


def build_run(out: Path, args: argparse.Namespace) -> tuple[Path, Path]:
    """Synthetic track -> encoded run -> tiny SFT -> DPO -> GRPO; every step skipped when done."""
    data, run = out / "data", out / "run"
    if not (data / "items.parquet").exists():
        world = SyntheticConfig(
            seed=args.seed,
            n_items=args.items,
            n_users=args.users,
            n_queries=args.queries,
            n_sessions=args.sessions,
        )
        write_synthetic(data, world)
    if not (run / "sid_tokenizer").exists():
        init_ray(num_cpus=os.cpu_count())
        prepare.prepare(data, run, KHQEConfig())
    train = load_train_config(size="tiny", max_steps=args.sft_steps)
    train.tokenizer_vocab_size = 1000
    for stage in train.stages.values():
        stage.batch_size, stage.learning_rate = 16, 5e-3
    train_stages(run, data, list(STAGES), train, in_process_trainer("cpu"))
    config = AlignConfig(
        dpo=DPOConfig(max_steps=args.align_steps, learning_rate=1e-3, negatives=4, beam=8, max_prompts=100),
        grpo=GRPOConfig(max_steps=args.align_steps, learning_rate=1e-4),
    )
    for stage in ("dpo", "grpo"):
        align_stage(run, data, stage, config, RewardConfig(), in_process_trainer("cpu", run_align_loop))
    return run, data


def heldout_hits(run: Path, data: Path, model: str, heldout: int, beam: int) -> dict[str, float]:
    """HR@10 / HR@50 of a clicked or ordered item on the log's latest ``heldout`` searches."""
    inputs = stage_inputs(run, data)
    _, searches = split_searches(log_searches(inputs), heldout)
    searches = [s for s in searches if any(e >= 1 for e in s.events.values())]
    scorer = ModelScorer.load(run / "model" / model, run / "sid_tokenizer")
    prompts = [s.prompt for s in searches]
    ranked = rank_prompts(scorer.engine(), prompts, inputs.sids, beam, 50, progress=False)
    hits = {}
    for k in (10, 50):
        found = [
            any(e >= 1 and item in ranking[:k] for item, e in s.events.items())
            for s, ranking in zip(searches, ranked.rankings, strict=True)
        ]
        hits[f"click_HR@{k}"] = float(np.mean(found))
    return hits | {"n_searches": len(searches)}


def to_markdown(report: dict) -> str:
    keys = [*TEST_METRICS, "click_HR@10", "click_HR@50", "dpo_margin", "grpo_top_reward"]
    lines = ["| model | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, row in report["models"].items():
        lines.append(f"| {name} | " + " | ".join(f"{row.get(k, float('nan')):.4f}" for k in keys) + " |")
    return "\n".join(lines) + "\n"


def alignment_measures(run: Path, model: str, rewards: ItemRewards) -> dict[str, float]:
    """The stages' own held-out measures, for any model: DPO's margin on its held-out lists, GRPO's
    top-beam composite reward on its held-out prompts."""
    scorer = ModelScorer.load(run / "model" / model, run / "sid_tokenizer")
    lists = pq.read_table(run / "align/dpo/heldout.parquet")
    prompts = pq.read_table(run / "align/grpo/heldout.parquet")
    top = scorer.rollout_rewards(prompts, GRPOConfig().group, rewards)["top_reward"]
    return {"dpo_margin": scorer.preference_margin(lists), "grpo_top_reward": top}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--items", type=int, default=800)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--sft-steps", type=int, default=150)
    parser.add_argument("--align-steps", type=int, default=60)
    parser.add_argument("--beam", type=int, default=50)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    started = time.perf_counter()
    run, data = build_run(args.out, args)
    built = time.perf_counter() - started
    rewards = item_rewards(stage_inputs(run, data), RewardConfig())
    report: dict = {"machine": f"{platform.node()}, {os.cpu_count()} CPUs", "args": vars(args), "models": {}}
    for name, model in MODELS.items():
        config = EvalConfig(beam=args.beam, baselines=False, model_dir=str(run / "model" / model))
        test = evaluate(run, data, "search", config)["model"]
        row = {k: test[k] for k in TEST_METRICS}
        row |= heldout_hits(run, data, model, AlignConfig().dpo.heldout_searches, args.beam)
        report["models"][name] = row | alignment_measures(run, model, rewards)
    report["seconds"] = {"build": built, "total": time.perf_counter() - started}
    write_json(args.out / "alignment_synthetic.json", report)
    with atomic_path(args.out / "alignment_synthetic.md") as tmp:
        tmp.write_text(to_markdown(report))
    print(to_markdown(report))
    return report


if __name__ == "__main__":
    main()
