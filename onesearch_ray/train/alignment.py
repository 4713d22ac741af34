"""Preference alignment after SFT: list-wise DPO and TPMA-GRPO stages (``docs/onesearch.md`` section 3).

The driver (:func:`align_stage`) builds the stage's data once into ``RUN/align/<name>/``, hands a
:class:`AlignJob` to a trainer (Ray Train workers in ``pipelines/train.py``, or this process in
``onesearch_ray.train.local``), then turns the last checkpoint into ``RUN/model/<name>`` and makes
it the run's latest model. ``stage`` is the algorithm (dpo | grpo); ``name`` (default: the stage)
only names the output, so rounds of the live reward loop sit side by side (``--name dpo-2``), each
starting from the run's latest model. The per-worker loop (:func:`run_align_loop`) knows nothing of
Ray, and each optimisation step is one function (:func:`dpo_step`, :func:`grpo_step`).

DPO (OneSearch): one positive against up to K negatives, weighted by the reward gap, an SFT anchor,
and the starting (SFT) model as the frozen reference. Lists (``train.preference_data``) come from
the starting model's own constrained beams re-ranked by the combined reward (phase 1, ``beams``)
and from logged feedback (phase 2, ``log``): the track's search log, or with ``--feedback LOG`` the
server's live feedback log.

GRPO (OneSearch-V2): per prompt, G rollouts are the current policy's top-G constrained beams (the
reference engine, in this process): TPMA per-position advantages against the search's clicked and
ordered SIDs plus the group-normalised composite item reward, one on-policy update per batch, and a
k3 KL guard to the frozen starting model. Why not vLLM for the rollouts: the policy changes every
step, and pushing new weights into a vLLM engine each step costs more than decoding a few prompts
with the model already in memory; on CPU there is no vLLM at all.

A stage reruns nothing it has: data files are reused, training resumes from the last complete
checkpoint, and a finished stage is skipped (delete ``RUN/align/<name>`` and ``RUN/model/<name>``
to train it again, or train a new round under another ``--name``).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from onesearch_ray.decoding.beam import TransformersEngine
from onesearch_ray.io import read_json, write_json, write_parquet
from onesearch_ray.khqe import SemanticIdTokenizer
from onesearch_ray.model import load_model, save_model
from onesearch_ray.prompts import SidVocabulary
from onesearch_ray.prompts.tokenizer import encode_prompts, prompt_block
from onesearch_ray.rewards import (
    RewardConfig,
    composite_item_reward,
    load_reward_config,
    relevance_tier,
)
from onesearch_ray.runs import RunDir, latest_model_dir, write_latest_model
from onesearch_ray.train import checkpoints
from onesearch_ray.train.config import (
    AlignConfig,
    DPOConfig,
    GRPOConfig,
    OptimConfig,
    TrainConfig,
    load_align_config,
)
from onesearch_ray.train.preference import (
    listwise_dpo_loss,
    sid_token_logprobs,
    tpma_advantages,
    tpma_grpo_loss,
)
from onesearch_ray.train.preference_data import (
    ItemRewards,
    PreferenceList,
    Search,
    build_dpo_lists,
    grpo_prompts,
    heldout_dpo_lists,
    item_rewards,
    lists_table,
    new_user_searches,
    sample,
    split_searches,
    track_searches,
)
from onesearch_ray.train.stages import STAGES, StageInputs
from onesearch_ray.train.workflow import check_training_pairs, stage_inputs, trained_stage_model

log = logging.getLogger(__name__)
ALIGN_STAGES = ("dpo", "grpo")
LISTS_FILE = "lists.parquet"
PROMPTS_FILE = "prompts.parquet"
HELDOUT_FILE = "heldout.parquet"
JOB_FILE = "job.json"
_NAME = re.compile(r"[A-Za-z0-9._-]+")
# (prompts, SID codes) -> (prompt token ids, SID token ids (N, L)), as the engines encode them
Encoder = Callable[[Sequence[str], Sequence[Sequence[int]]], tuple[list[list[int]], torch.Tensor]]


# ---- the per-worker loop ----------------------------------------------------------------------------
@dataclass
class AlignJob:
    """Where one alignment stage trains; pickled to Ray Train workers."""

    stage: str  # the algorithm: dpo | grpo
    name: str  # the output: RUN/align/<name>/ (stage_dir), RUN/model/<name>, manifest train.<name>
    stage_dir: Path
    init_dir: Path  # the starting model: the policy's first weights and the frozen reference
    sid_dir: Path
    config: DPOConfig | GRPOConfig
    rewards: ItemRewards | None = None  # grpo: scores the rollouts


def sequence_batch(
    tokenizer, vocabulary: SidVocabulary, prompts: Sequence[str], codes: Sequence[Sequence[int]], block: int
) -> tuple[list[list[int]], torch.Tensor]:
    """(prompt token ids, SID token ids (N, L)) of (prompt, SID) rows, encoded as the engines encode."""
    prompt_ids = encode_prompts(tokenizer, prompts, block)
    sid_ids = torch.tensor([vocabulary.codes_to_ids(c) for c in codes], dtype=torch.long)
    return prompt_ids, sid_ids


def sequence_logprobs(
    model: torch.nn.Module,
    prompt_ids: list[list[int]],
    sid_ids: torch.Tensor,
    device: torch.device | str,
    pad_id: int,
) -> torch.Tensor:
    """log pi(SID | prompt) per row (N,) on ``device``, with the engines' scoring (sum over SID tokens)."""
    return sid_token_logprobs(model, prompt_ids, sid_ids.to(device), pad_id).sum(-1)


def batch_rows(n: int, step: int, config: OptimConfig, rank: int) -> np.ndarray:
    """This rank's rows at ``step``: a pure function of (seed, step, rank), so resuming repeats nothing."""
    return np.random.default_rng((config.seed, step, rank)).integers(0, n, size=config.batch_size)


def learning_rate(step: int, config: OptimConfig) -> float:
    return config.learning_rate * min(1.0, (step + 1) / max(1, config.warmup_steps))


def dpo_step(
    policy: torch.nn.Module,
    reference: torch.nn.Module,
    batch: pa.Table,
    optimizer: torch.optim.Optimizer,
    config: DPOConfig,
    encode: Encoder,
    device: torch.device | str,
    pad_id: int,
) -> dict[str, float]:
    """One list-wise DPO update on a batch of lists (one forward over every positive and negative)."""
    prompts, positives = batch["prompt"].to_pylist(), batch["positive"].to_pylist()
    negatives, reward_neg = batch["negatives"].to_pylist(), batch["reward_neg"].to_pylist()
    rows_prompt = prompts + [p for p, negs in zip(prompts, negatives, strict=True) for _ in negs]
    rows_codes = positives + [c for negs in negatives for c in negs]
    prompt_ids, sid_ids = encode(rows_prompt, rows_codes)
    policy.train()
    policy_scores = sequence_logprobs(policy, prompt_ids, sid_ids, device, pad_id)
    with torch.no_grad():
        reference_scores = sequence_logprobs(reference, prompt_ids, sid_ids, device, pad_id)
    size, width = len(prompts), max(len(n) for n in negatives)
    mask = torch.zeros((size, width), dtype=torch.bool)
    index = torch.zeros((size, width), dtype=torch.long)
    rewards = torch.zeros((size, width), dtype=torch.float64)
    cursor = size
    for row, negs in enumerate(negatives):
        mask[row, : len(negs)] = True
        index[row, : len(negs)] = torch.arange(cursor, cursor + len(negs))
        rewards[row, : len(negs)] = torch.tensor(reward_neg[row], dtype=torch.float64)
        cursor += len(negs)
    mask, index = mask.to(device), index.to(device)
    out = listwise_dpo_loss(
        policy_scores[:size].double(),
        reference_scores[:size].double(),
        policy_scores[index].double(),
        reference_scores[index].double(),
        torch.tensor(batch["reward_pos"].to_pylist(), dtype=torch.float64, device=device),
        rewards.to(device),
        mask,
        beta=config.beta,
        alpha=config.alpha,
        sft_weight=config.sft_weight,
        guard_weight=config.guard_weight,
    )
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(policy.parameters(), config.grad_clip)
    optimizer.step()
    with torch.no_grad():
        margin = (policy_scores[:size, None] - policy_scores[index]).masked_select(mask).mean()
    return {
        "loss": out.loss.item(),
        "preference": out.preference.item(),
        "anchor": out.anchor.item(),
        "margin": margin.item(),  # mean log pi(y+) - log pi(y-) over the batch's pairs
    }


@dataclass
class Rollouts:
    """G rollouts per prompt: SID codes (B, G, L), their items and composite rewards (B, G)."""

    codes: np.ndarray
    items: np.ndarray
    rewards: np.ndarray


def rollout(
    engine: TransformersEngine, sids: SemanticIdTokenizer, batch: pa.Table, group: int, rewards: ItemRewards
) -> Rollouts:
    """The policy's top-``group`` constrained beams per prompt, scored by the composite item reward."""
    hits = engine.search(batch["prompt"].to_pylist(), group)
    if any(len(h) < group for h in hits):
        raise ValueError(f"grpo: the catalogue has fewer than group={group} SIDs for a prompt")
    codes = np.array([[hit.codes for hit in h[:group]] for h in hits], dtype=np.int64)
    found = [[sids.items_for_sid(c) for c in row] for row in codes]
    valid = np.array([[bool(f) for f in row] for row in found])
    items = np.array([[f[0] if f else -1 for f in row] for row in found], dtype=np.int64)
    clicked = [set(c) for c in batch["clicked"].to_pylist()]
    ordered = [set(o) for o in batch["ordered"].to_pylist()]
    flat = items.ravel().tolist()
    queries = [q for q in batch["query_id"].to_pylist() for _ in range(group)]  # None: no query
    reward = composite_item_reward(
        np.array([[i in ordered[b] for i in row] for b, row in enumerate(items)]),
        np.array([[i in clicked[b] for i in row] for b, row in enumerate(items)]),
        rewards.calibrated(flat).ctr.reshape(items.shape),
        relevance_tier(rewards.grades(queries, flat)).reshape(items.shape),
        valid,
        rewards.config,
    )
    return Rollouts(codes, items, reward)


def truth_tensors(
    truths: Sequence[Sequence[Sequence[int]]], length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ground-truth SIDs (B, M, L) padded with -1, and their mask (B, M)."""
    width = max(1, max(len(t) for t in truths))
    codes = torch.full((len(truths), width, length), -1, dtype=torch.long)
    mask = torch.zeros((len(truths), width), dtype=torch.bool)
    for row, truth in enumerate(truths):
        if truth:
            codes[row, : len(truth)] = torch.tensor(truth)
            mask[row, : len(truth)] = True
    return codes, mask


def grpo_step(
    policy: torch.nn.Module,
    reference: torch.nn.Module,
    engine: TransformersEngine,
    batch: pa.Table,
    optimizer: torch.optim.Optimizer,
    config: GRPOConfig,
    encode: Encoder,
    rewards: ItemRewards,
    sids: SemanticIdTokenizer,
    device: torch.device | str,
    pad_id: int,
) -> dict[str, float]:
    """Rollouts from the current policy, TPMA advantages, one on-policy update with the KL guard."""
    engine.model.eval()  # the engine decodes with the policy's own (bare) module
    out = rollout(engine, sids, batch, config.group, rewards)
    size, group, length = out.codes.shape
    truth, truth_mask = truth_tensors(batch["truth"].to_pylist(), length)
    advantages = tpma_advantages(
        torch.as_tensor(out.codes),
        truth,
        truth_mask,
        torch.as_tensor(out.rewards),
        config.w_item,
        gate_item_reward=config.gate_item_reward,
        item_std_floor=config.item_std_floor,
    )
    prompts = [p for p in batch["prompt"].to_pylist() for _ in range(group)]
    prompt_ids, sid_ids = encode(prompts, out.codes.reshape(-1, length).tolist())
    policy.train()
    logprobs = sid_token_logprobs(policy, prompt_ids, sid_ids.to(device), pad_id).view(size, group, length)
    with torch.no_grad():
        reference_logprobs = sid_token_logprobs(reference, prompt_ids, sid_ids.to(device), pad_id)
    loss = tpma_grpo_loss(
        logprobs,
        logprobs.detach(),
        advantages.advantages.to(device),
        advantages.gates.to(device),
        reference_logprobs.view(size, group, length),
        config.kl_weight,
        None if config.gate_item_reward else advantages.item_advantages.to(device),
    )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(policy.parameters(), config.grad_clip)
    optimizer.step()
    return {
        "loss": loss.item(),
        "reward": float(out.rewards.mean()),  # mean composite reward of the rollouts
        "top_reward": float(out.rewards[:, 0].mean()),  # of the policy's best beam
        "truth_hit": _truth_hits(out.codes, batch["truth"].to_pylist()),  # rollouts that are a truth
    }


def _truth_hits(codes: np.ndarray, truths: Sequence[Sequence[Sequence[int]]]) -> float:
    hits = [tuple(c) in {tuple(t) for t in truths[b]} for b in range(len(codes)) for c in codes[b].tolist()]
    return float(np.mean(hits))


def run_align_loop(
    job: AlignJob,
    *,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str = "cpu",
    wrap_model: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
    save_checkpoint: Callable[[int, torch.nn.Module, torch.optim.Optimizer, dict], None],
) -> None:
    """One worker's share of an alignment stage: load policy and frozen reference, resume from the
    last checkpoint, step, log, checkpoint (``save_checkpoint`` receives the unwrapped model).

    Each rank draws its own rows (seed, step, rank), so ``world_size`` (the SFT loop's interface)
    changes nothing here; DDP averages the ranks' gradients."""
    config = job.config
    policy, tokenizer = load_model(job.init_dir)
    reference, _ = load_model(job.init_dir)
    reference.requires_grad_(False).eval().to(device)
    start_step, optimizer_state = 0, None
    last = checkpoints.latest(job.stage_dir)
    if last is not None:
        start_step, optimizer_state = checkpoints.restore(last, policy)
        if rank == 0:
            log.info("%s: resuming from %s (step %d)", job.name, last.name, start_step)
    policy = wrap_model(policy) if wrap_model else policy.to(device)
    bare = getattr(policy, "module", policy)
    optimizer = torch.optim.AdamW(
        policy.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    sids = SemanticIdTokenizer.load(job.sid_dir)
    vocabulary = SidVocabulary.from_tokenizers(tokenizer, sids)
    block, pad_id = prompt_block(bare.config), tokenizer.pad_token_id

    encode: Encoder = functools.partial(sequence_batch, tokenizer, vocabulary, block=block)

    if job.stage == "dpo":
        data = pq.read_table(job.stage_dir / LISTS_FILE)

        def step_fn(rows: np.ndarray) -> dict[str, float]:
            return dpo_step(policy, reference, data.take(rows), optimizer, config, encode, device, pad_id)
    else:
        data = pq.read_table(job.stage_dir / PROMPTS_FILE)
        engine = TransformersEngine.for_catalogue(bare, tokenizer, sids)

        def step_fn(rows: np.ndarray) -> dict[str, float]:
            return grpo_step(
                policy,
                reference,
                engine,
                data.take(rows),
                optimizer,
                config,
                encode,
                job.rewards,
                sids,
                device,
                pad_id,
            )

    window: list[dict[str, float]] = []
    for step in range(start_step, config.max_steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config)
        window.append(step_fn(batch_rows(data.num_rows, step, config, rank)))
        done = step + 1
        metrics: dict[str, float] = {}
        if done % config.log_every == 0 or done == config.max_steps:
            metrics = {
                "step": done,
                "steps": config.max_steps,
                **{k: float(np.mean([w[k] for w in window])) for k in window[0]},
            }
            window = []
            if rank == 0:
                log.info(
                    "%s step %d/%d %s",
                    job.name,
                    done,
                    config.max_steps,
                    {k: round(v, 4) for k, v in metrics.items()},
                )
                append_metrics(job, metrics)
        if done % config.checkpoint_every == 0 or done == config.max_steps:
            save_checkpoint(done, bare, optimizer, metrics)


def append_metrics(job: AlignJob, record: dict) -> None:
    with open(job.stage_dir / "metrics.jsonl", "a") as handle:
        handle.write(json.dumps({"stage": job.stage, **record}) + "\n")


# ---- measuring a model against the stage's data ----------------------------------------------------
@dataclass
class ModelScorer:
    """A model with what it takes to score (prompt, SID) rows and decode beams; for before/after
    measurements of a stage (tests, bench), outside training."""

    model: torch.nn.Module
    tokenizer: object
    sids: SemanticIdTokenizer

    @classmethod
    def load(cls, model_dir: str | Path, sid_dir: str | Path) -> ModelScorer:
        model, tokenizer = load_model(model_dir)
        return cls(model.eval(), tokenizer, SemanticIdTokenizer.load(sid_dir))

    def engine(self) -> TransformersEngine:
        return TransformersEngine.for_catalogue(self.model, self.tokenizer, self.sids)

    @torch.no_grad()
    def preference_margin(self, lists: pa.Table) -> float:
        """Mean over lists of log pi(y+) - mean_k log pi(y_k): how far the model prefers positives."""
        vocabulary = SidVocabulary.from_tokenizers(self.tokenizer, self.sids)
        block, margins = prompt_block(self.model.config), []
        for prompt, positive, negatives in zip(
            *(lists[c].to_pylist() for c in ("prompt", "positive", "negatives")), strict=True
        ):
            prompt_ids, sid_ids = sequence_batch(
                self.tokenizer, vocabulary, [prompt] * (1 + len(negatives)), [positive, *negatives], block
            )
            scores = sequence_logprobs(self.model, prompt_ids, sid_ids, "cpu", self.tokenizer.pad_token_id)
            margins.append(float(scores[0] - scores[1:].mean()))
        return float(np.mean(margins))

    def rollout_rewards(self, prompts: pa.Table, group: int, rewards: ItemRewards) -> dict[str, float]:
        """Mean composite reward of the top beam and of the top ``group`` beams, and the share of
        top beams that are a clicked or ordered SID of the search."""
        out = rollout(self.engine(), self.sids, prompts, group, rewards)
        return {
            "top_reward": float(out.rewards[:, 0].mean()),
            "group_reward": float(out.rewards.mean()),
            "top_truth_hit": _truth_hits(out.codes[:, :1], prompts["truth"].to_pylist()),
        }


# ---- the driver -----------------------------------------------------------------------------------
def align_stage(
    run_dir: str | Path,
    data: str | Path,
    stage: str,
    config: AlignConfig,
    rewards: RewardConfig,
    train_stage: Callable[[AlignJob], None],
    *,
    feedback: pa.Table | None = None,
    workers: int = 1,
    name: str | None = None,
) -> Path:
    """Build the stage's data (once), train it with ``train_stage``, and make ``RUN/model/<name>``
    the run's latest model. ``feedback``: the live feedback log's table (DPO phase 2 from it).
    ``name`` (default: ``stage``): where the stage's data, checkpoints and model go."""
    if stage not in ALIGN_STAGES:
        raise ValueError(f"unknown alignment stage {stage!r} (known: {', '.join(ALIGN_STAGES)})")
    if feedback is not None and stage != "dpo":
        raise ValueError("--feedback trains DPO phase 2; it does not apply to grpo")
    name = check_align_name(stage, stage if name is None else name)
    run = RunDir(run_dir)
    stage_dir = (run / f"align/{name}").resolve()
    _check_same_stage(stage_dir, stage, name)
    done = trained_stage_model(run, name)
    if done is not None:
        log.info("%s: already trained (%s); skipping", name, done)
        return done
    init_dir = _starting_model(run, stage_dir, stage)
    stage_config = config.dpo if stage == "dpo" else config.grpo
    inputs = stage_inputs(run.path, data)
    searches, heldout = split_searches(track_searches(inputs), stage_config.heldout_searches)
    hidden = {s.session_id for s in heldout}
    scores = item_rewards(inputs, rewards, hidden)
    if not (stage_dir / HELDOUT_FILE).exists():  # written last: the data is complete
        if stage == "dpo":
            lists = build_dpo_lists(run.path, inputs, init_dir, config, scores, searches, feedback, hidden)
            write_parquet(stage_dir / LISTS_FILE, lists_table(lists))
            log.info("dpo: %d preference lists (%s)", len(lists), _sources(lists))
            held = lists_table(heldout_dpo_lists(inputs, init_dir, config.dpo, scores, heldout))
        else:
            write_parquet(stage_dir / PROMPTS_FILE, _grpo_training_prompts(inputs, searches, config.grpo))
            held = grpo_prompts(heldout, inputs)
        write_parquet(stage_dir / HELDOUT_FILE, held)
    job = AlignJob(
        stage,
        name,
        stage_dir,
        init_dir,
        (run.path / "sid_tokenizer").resolve(),
        stage_config,
        scores if stage == "grpo" else None,
    )
    train_stage(job)
    final_dir = finish_alignment(run, job, workers, str(data), scores)
    write_latest_model(run.path, final_dir)
    return final_dir


def align_run(
    run_dir: str | Path,
    data: str | Path,
    stage: str,
    config_path: str | Path | None,
    train_stage: Callable[[AlignJob], None],
    *,
    feedback: str | Path | None = None,
    max_steps: int | None = None,
    workers: int = 1,
    name: str | None = None,
) -> Path:
    """:func:`align_stage` with its configs read from ``config_path`` (``align:`` and ``rewards:``)
    and the live feedback log read from ``feedback`` (a missing or bad log is a clear error)."""
    if feedback is not None and stage != "dpo":
        raise ValueError("--feedback applies to --stage dpo only")
    table = None
    if feedback is not None:
        from onesearch_ray.rewards.feedback_log import read_feedback

        table = read_feedback(feedback)
    return align_stage(
        run_dir,
        data,
        stage,
        load_align_config(config_path, max_steps=max_steps),
        load_reward_config(config_path),
        train_stage,
        feedback=table,
        workers=workers,
        name=name,
    )


def align_options(args: argparse.Namespace, config: TrainConfig) -> dict[str, Any]:
    """The keyword arguments of :func:`align_run` from a CLI's parsed ``args`` and its TrainConfig."""
    return {
        "feedback": args.feedback,
        "max_steps": args.max_steps,
        "workers": config.num_workers,
        "name": args.name,
    }


def check_align_name(stage: str, name: str) -> str:
    """``name`` if it can name ``stage``'s output (``RUN/align/<name>``, ``RUN/model/<name>``): a plain
    directory name, not an SFT stage's, ``init`` or the other alignment stage's."""
    taken = {*STAGES, "init", *ALIGN_STAGES} - {stage}
    if not _NAME.fullmatch(name) or name in (".", "..") or name in taken:
        raise ValueError(
            f"--name {name!r}: use a plain directory name (letters, digits, '-', '_', '.') other than "
            f"{', '.join(sorted(taken))}"
        )
    return name


def _grpo_training_prompts(inputs: StageInputs, searches: Sequence[Search], config: GRPOConfig) -> pa.Table:
    chosen = sample(searches, config.max_prompts, config.seed)
    chosen += new_user_searches(chosen, inputs, config.new_user_share, config.seed)
    prompts = grpo_prompts(chosen, inputs)
    if prompts.num_rows == 0:
        raise ValueError(
            "grpo: the track has no train search with a target to learn from (a clicked or ordered "
            "item, a next purchase or a relevant judgment)"
        )
    check_training_pairs(inputs, "grpo", [(p, "") for p in prompts["prompt"].to_pylist()])
    log.info("grpo: %d prompts", prompts.num_rows)
    return prompts


def _starting_model(run: RunDir, stage_dir: Path, stage: str) -> Path:
    """The run's latest model, recorded in ``job.json`` on the first attempt: a resumed stage keeps
    the model it started from."""
    path = stage_dir / JOB_FILE
    if path.exists():
        return Path(read_json(path)["init"])
    init_dir = latest_model_dir(run.path).resolve()
    write_json(path, {"init": str(init_dir), "stage": stage})
    return init_dir


def _check_same_stage(stage_dir: Path, stage: str, name: str) -> None:
    """A name once used by one algorithm is not resumed (or skipped) as the other."""
    path = stage_dir / JOB_FILE
    recorded = read_json(path).get("stage", stage) if path.exists() else stage
    if recorded != stage:
        raise ValueError(f"--name {name!r} is a {recorded} stage in {stage_dir}; pick another name")


def _sources(lists: Sequence[PreferenceList]) -> str:
    counts: dict[str, int] = {}
    for item in lists:
        counts[item.source] = counts.get(item.source, 0) + 1
    return ", ".join(f"{n} from {s}" for s, n in counts.items())


def heldout_report(job: AlignJob, model_dir: Path, rewards: ItemRewards) -> dict[str, float]:
    """The stage's measure of ``model_dir`` on its held-out searches: DPO, the preference margin of
    their logged lists; GRPO, the composite reward of the top beams. Empty without held-out data."""
    heldout = pq.read_table(job.stage_dir / HELDOUT_FILE)
    if heldout.num_rows == 0:
        return {}
    scorer = ModelScorer.load(model_dir, job.sid_dir)
    if job.stage == "dpo":
        return {"margin": scorer.preference_margin(heldout), "lists": heldout.num_rows}
    return {**scorer.rollout_rewards(heldout, job.config.group, rewards), "prompts": heldout.num_rows}


def finish_alignment(run: RunDir, job: AlignJob, workers: int, data: str, rewards: ItemRewards) -> Path:
    """The last checkpoint as ``RUN/model/<name>``, measured on the held-out searches before and
    after, recorded in the manifest."""
    chosen = checkpoints.latest(job.stage_dir)
    if chosen is None:
        raise RuntimeError(f"{job.name}: training finished without a checkpoint in {job.stage_dir}")
    model, tokenizer = load_model(job.init_dir)
    step = checkpoints.load_weights(chosen, model)
    final_dir = run / f"model/{job.name}"
    save_model(model, tokenizer, final_dir)
    heldout = {
        "before": heldout_report(job, job.init_dir, rewards),
        "after": heldout_report(job, final_dir, rewards),
    }
    log.info("%s on held-out searches: %s", job.name, heldout)
    run.record_stage(
        f"train.{job.name}",
        config={job.stage: dataclasses.asdict(job.config), "workers": workers},
        inputs={"data": data, "init": str(job.init_dir)},
        outputs={
            "model": str(final_dir),
            "checkpoint": chosen.name,
            "step": step,
            "metrics": checkpoints.read_state(chosen)["metrics"],
            "heldout": heldout,
        },
    )
    return final_dir
