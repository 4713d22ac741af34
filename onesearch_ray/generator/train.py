"""Training the generator: one readable loop, list-wise over the whole catalogue, selected on valid.

An ``Example`` is one search (query text and vector, the user's recent items) with graded targets
(catalogue rows and gains). One step:

1. prompts -> decoder, teacher-forced on one target's code prefix (drawn by gain);
2. code loss: level 1 against the gain-weighted mix of the targets' first codes, deeper levels
   against the drawn target's codes;
3. item loss: the targets' gain distribution against a softmax over EVERY item (dense + lexical +
   bias): the model learns the order of the targets, not only its top item. With
   ``sampled_negatives`` the softmax is over the batch's targets, hard negatives (items under each
   search's best first-level codes: where its search will look) and uniform draws from the rest
   weighted up to stand for it (``item_candidates``): a step's cost is set by the batch, not by
   the catalogue;
4. AdamW with weight decay: every correction starts at zero, so the decay is the pull toward the
   pretrained geometry (the anchor).

The weights that score best on the selection searches (``valid``) are the ones kept.
"""

from __future__ import annotations

import copy
import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from onesearch_ray.behavior.copurchase import own_pair_values
from onesearch_ray.generator.config import TrainConfig
from onesearch_ray.generator.model import CodeItemGenerator, PromptBatch
from onesearch_ray.generator.prompts import build_prompts
from onesearch_ray.io import atomic_path

log = logging.getLogger(__name__)


@dataclass
class Example:
    query: str
    query_vector: np.ndarray
    targets: np.ndarray  # catalogue rows
    gains: np.ndarray  # > 0, one per target
    history: list[int] = field(default_factory=list)  # catalogue rows, oldest first
    query_id: int | None = None  # the track's query (rewards grade rollouts by it); None: no query
    reference: np.ndarray | None = None  # preference training: the reference model's log p(targets)


def example_prompts(model: CodeItemGenerator, examples: Sequence[Example]) -> PromptBatch:
    return build_prompts(
        model.lexical,
        model.config.hash_buckets,
        [e.query for e in examples],
        np.stack([e.query_vector for e in examples]),
        model.item_vectors.numpy(),
        [e.history for e in examples],
        model.config.history,
        model.config.copurchase_window,
        repeat_window=model.config.repeat_window,
    )


HARD_CODES = 4  # first-level codes per search whose items are its hard negatives


def loss_of(
    model: CodeItemGenerator, examples: Sequence[Example], rng: np.random.Generator, negatives: int = 0
) -> dict[str, torch.Tensor]:
    """The item and code losses of one batch (``negatives``: the sampled softmax's, 0 for the whole
    catalogue)."""
    prompts = example_prompts(model, examples)
    drawn = np.array([rng.choice(e.targets, p=e.gains / e.gains.sum()) for e in examples])
    levels = model.codes.levels
    prefix = torch.as_tensor(model.codes.item_codes[drawn, : levels - 1]) if levels > 1 else None
    prompt = model.prompt_embeddings(prompts)
    hidden = model.hidden(prompt, prefix)
    last = prompt.shape[1] - 1

    first = F.log_softmax(model.code_logits(0, hidden[:, last], prompts.query_vectors), -1)
    first_target = torch.zeros_like(first)
    for row, e in enumerate(examples):
        codes = torch.as_tensor(model.codes.item_codes[e.targets, 0])
        first_target[row].index_add_(0, codes, torch.as_tensor(e.gains / e.gains.sum(), dtype=torch.float32))
    code_loss = -(first_target * first).sum(-1).mean()
    for level in range(1, levels):
        logits = model.code_logits(level, hidden[:, last + level], prompts.query_vectors)
        code_loss = code_loss + F.cross_entropy(logits, torch.as_tensor(model.codes.item_codes[drawn, level]))

    if negatives:
        rows, correction, fixed = item_candidates(model, examples, first.detach(), negatives, rng)
        logits = sampled_item_logits(model, prompts, hidden[:, last], rows) + correction
        columns = [np.searchsorted(fixed, e.targets) for e in examples]  # targets are fixed rows
    else:
        logits = item_logits(model, prompts, hidden[:, last])
        columns = [e.targets for e in examples]
    log_probs = F.log_softmax(_without_own_pairs(model, prompts, examples, logits, columns), -1)
    item_loss = torch.zeros(())
    for row, (e, targets) in enumerate(zip(examples, columns, strict=True)):
        weights = torch.as_tensor(e.gains / e.gains.sum(), dtype=torch.float32)
        item_loss = item_loss - (weights * log_probs[row, torch.as_tensor(targets)]).sum()
    return {"item": item_loss / len(examples), "code": code_loss}


def item_candidates(
    model: CodeItemGenerator,
    examples: Sequence[Example],
    first_codes: torch.Tensor,
    negatives: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, torch.Tensor, np.ndarray]:
    """The rows a sampled item loss scores, each one's log-weight, and the fixed rows among them.

    Fixed (sorted, first): the batch's targets and ``negatives`` hard negatives, drawn from the items
    under each search's ``HARD_CODES`` best first-level codes (``first_codes``: (B, level size)
    scores), weight 1. Then up to ``negatives`` uniform draws from the other items, each weighted
    up (log-weight log(rest / draws)) so that together they stand for the rest of the catalogue."""
    targets = np.concatenate([e.targets for e in examples])
    best = torch.topk(first_codes, min(HARD_CODES, first_codes.shape[1]), dim=1).indices.numpy()
    per_search = max(1, negatives // len(examples))
    hard = [model.codes.sample_under(codes, per_search, rng) for codes in best]
    fixed = np.unique(np.concatenate([targets, *hard]))
    drawn = np.setdiff1d(rng.integers(0, model.n_items, negatives), fixed)
    rest = model.n_items - len(fixed)
    weight = np.log(rest / len(drawn)) if len(drawn) else 0.0
    correction = torch.cat([torch.zeros(len(fixed)), torch.full((len(drawn),), float(weight))])
    return np.concatenate([fixed, drawn]), correction, fixed


def sampled_item_logits(
    model: CodeItemGenerator, prompts: PromptBatch, last: torch.Tensor, rows: np.ndarray
) -> torch.Tensor:
    """(B, len(rows)) ``item_logits`` of catalogue ``rows`` only."""
    item_query = model.item_query(last, prompts.query_vectors)
    index = torch.as_tensor(rows)
    vectors = model.item_vectors[index] + model.item_offset[index]
    dense = model.log_dense_scale.exp() * item_query @ vectors.T + model.item_bias[index]
    return dense + model.lexical_logits_of(prompts.lexical_terms, rows)


def item_log_probs(model: CodeItemGenerator, prompts: PromptBatch) -> torch.Tensor:
    """(B, items) the item step's log-probabilities over the whole catalogue."""
    last = model.hidden(model.prompt_embeddings(prompts))[:, -1]
    return F.log_softmax(item_logits(model, prompts, last), -1)


def item_logits(model: CodeItemGenerator, prompts: PromptBatch, last: torch.Tensor) -> torch.Tensor:
    """(B, items) the item step's logits (dense + lexical + bias) from the prompt's last output."""
    item_query = model.item_query(last, prompts.query_vectors)
    return model.dense_logits(item_query) + model.lexical_logits(prompts.lexical_terms)


def _without_own_pairs(
    model: CodeItemGenerator,
    prompts: PromptBatch,
    examples: Sequence[Example],
    logits: torch.Tensor,
    columns: list[np.ndarray],
) -> torch.Tensor:
    """The logits with each search's own co-purchase pairs taken out of its targets' scores: the
    counts were made from these searches (``behavior.copurchase``), which must not see themselves.
    ``columns``: each search's targets as columns of ``logits``."""
    if prompts.copurchase_terms is None:
        return logits
    rows, targets, taken = [], [], []
    for row, (e, target_columns, recent) in enumerate(
        zip(examples, columns, prompts.copurchase_terms, strict=True)
    ):
        if len(recent):
            own = torch.as_tensor(own_pair_values(model.lexical.saturation, recent, e.targets))
            rows.append(torch.full((len(e.targets),), row))
            targets.append(torch.as_tensor(target_columns))
            taken.append(own @ model.term_weight[torch.as_tensor(recent)])
    if not rows:
        return logits
    scaled = model.log_lexical_scale.exp() * torch.cat(taken)
    return logits.index_put((torch.cat(rows), torch.cat(targets)), -scaled, accumulate=True)


class Checkpoints(Protocol):
    """Where the training state goes at each selection point and comes back from after a restart
    (``pipelines.generator.RayTrainCheckpoints``: Ray Train's checkpoints)."""

    def load(self) -> dict | None:
        """The latest saved state (``write_training_state``'s payload), or None to start over."""
        ...

    def save(self, payload: dict, step: int) -> None:
        """Called by every worker at the same steps with its state (rank 0's is the one to keep)."""
        ...


LossFn = Callable[[CodeItemGenerator, Sequence[Example], np.random.Generator], dict[str, torch.Tensor]]


WEIGHT_PARAMETERS = ("term_weight", "log_dense_scale", "log_lexical_scale", "log_code_scale")
ITEM_PARAMETERS = ("item_offset", "item_bias")
REPEAT_PARAMETERS = ("repeat_weight",)


def parameter_groups(model: CodeItemGenerator, config: TrainConfig) -> list[dict]:
    """AdamW groups: the scoring weights, the per-item rows, the repeat weights, everything else
    (groups at rate 0, or with no parameter, left out)."""
    named = dict(model.named_parameters())
    weights = [named[n] for n in WEIGHT_PARAMETERS]
    items = [named[n] for n in ITEM_PARAMETERS]
    repeat = [named[n] for n in REPEAT_PARAMETERS if n in named]
    rest = [p for n, p in named.items() if n not in WEIGHT_PARAMETERS + ITEM_PARAMETERS + REPEAT_PARAMETERS]
    groups = [
        {"params": weights, "lr": config.weight_learning_rate, "weight_decay": 0.0},
        {"params": items, "lr": config.item_learning_rate, "weight_decay": config.weight_decay},
        {"params": repeat, "lr": config.repeat_learning_rate, "weight_decay": 0.0},
        {"params": rest, "lr": config.learning_rate, "weight_decay": config.weight_decay},
    ]
    for group in groups:
        if group["lr"] == 0:
            for parameter in group["params"]:
                parameter.requires_grad_(False)
    groups = [g for g in groups if g["lr"] > 0 and g["params"]]
    if not groups:
        raise ValueError(f"no parameter of this model learns at a positive rate: {config}")
    return groups


def train(
    model: CodeItemGenerator,
    examples: Sequence[Example],
    config: TrainConfig,
    select: Callable[[CodeItemGenerator], float] | None = None,
    checkpoints: Checkpoints | None = None,
    loss_fn: LossFn | None = None,
) -> dict:
    """Train in place; returns the history. ``loss_fn``: ``loss_of`` (the default: graded targets,
    with ``config.sampled_negatives``) or another of the same shape (``preference.dpo_loss_of``).

    With ``select`` (higher is better) the best weights win, the untrained start included. With
    ``checkpoints`` the whole state is saved there at every selection point (by every worker: the
    store decides who writes) and a restarted worker or a rerun resumes from the latest one
    (batches and target draws are seeded by epoch and step, so a resumed run matches an unbroken
    one). Under torch.distributed every worker passes the same ``examples``: each step's global batch
    (``batch_size`` of them, the batches one worker would take) is split across the workers, rank r
    taking every N-th from the r-th, and gradients are averaged, so N workers take one worker's
    steps on one worker's batches; only rank 0 selects. Workers passed lists of different lengths
    all take the shortest one's steps (``_fewest_examples``), so none waits in a collective alone.
    """
    config.validate()
    loss_fn = loss_fn or functools.partial(loss_of, negatives=config.sampled_negatives)
    fewest = _fewest_examples(len(examples))
    if not fewest:
        raise ValueError(
            "no training examples (on some worker: fewer examples than workers?): "
            "the track has no signal the generator can learn from"
        )
    torch.manual_seed(config.seed)
    _broadcast_weights(model)
    groups = parameter_groups(model, config)
    optimizer = torch.optim.AdamW(groups)
    world = dist.get_world_size() if dist.is_initialized() else 1
    batch_size = min(config.batch_size, fewest)
    if batch_size < world:
        raise ValueError(f"{fewest} training examples for {world} workers: each needs one a step")
    steps_per_epoch = max(1, fewest // batch_size)
    total_steps = max(1, int(config.epochs * steps_per_epoch))
    every = config.evaluate_every or steps_per_epoch
    # OneCycleLR divides by its warm-up's length: a short run (tests, a small alignment round) needs
    # a warm-up of at least two steps
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=[g["lr"] for g in groups],
        total_steps=max(total_steps, 4),
        pct_start=min(0.5, max(0.1, 2.0 / total_steps)),
    )
    rank = dist.get_rank() if dist.is_initialized() else 0
    select = select if rank == 0 else None
    state = _resume(checkpoints, model, optimizer, schedule)
    if state is None:
        state = {"step": 0, "history": {"steps": [], "selection": []}, "best": None}
        if select:
            state["best"] = {"score": select(model), "step": 0, "weights": copy.deepcopy(model.state_dict())}
            state["history"]["selection"].append({"step": 0, "score": state["best"]["score"]})
            log.info("untrained selection score %.4f", state["best"]["score"])
    history, started = state["history"], time.perf_counter() - 60 * state["history"].get("minutes", 0.0)
    for step in range(state["step"] + 1, total_steps + 1):
        epoch, position = divmod(step - 1, steps_per_epoch)
        order = np.random.default_rng([config.seed, epoch]).permutation(fewest)
        share = order[position * batch_size : (position + 1) * batch_size][rank::world]
        batch = [examples[i] for i in share]
        model.train()
        losses = loss_fn(model, batch, np.random.default_rng([config.seed, epoch, step]))
        loss = losses["item"] + config.code_loss_weight * losses["code"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        _average_gradients(model)
        optimizer.step()
        schedule.step()
        history["steps"].append({name: float(value.detach()) for name, value in losses.items()})
        history["minutes"] = (time.perf_counter() - started) / 60
        out_of_time = _rank0_decides(history["minutes"] >= config.max_minutes)
        if step % every and step != total_steps and not out_of_time:
            continue
        if select:
            score = select(model)
            history["selection"].append({"step": step, "score": score, "minutes": history["minutes"]})
            log.info(
                "step %d/%d (%.1f min): item loss %.3f, code loss %.3f, selection %.4f",
                step,
                total_steps,
                history["minutes"],
                history["steps"][-1]["item"],
                history["steps"][-1]["code"],
                score,
            )
            if score > state["best"]["score"]:
                state["best"] = {"score": score, "step": step, "weights": copy.deepcopy(model.state_dict())}
            state["since_best"] = 0 if state["best"]["step"] == step else state.get("since_best", 0) + 1
        if checkpoints is not None:
            checkpoints.save(_payload(model, optimizer, schedule, state | {"step": step}), step)
        if _rank0_decides(config.patience > 0 and state.get("since_best", 0) >= config.patience):
            log.info(
                "no better selection score for %d evaluations: stopping at step %d", config.patience, step
            )
            break
        if out_of_time:
            log.warning(
                "training budget of %.0f min spent at step %d of %d", config.max_minutes, step, total_steps
            )
            break
    if state["best"]:
        model.load_state_dict(state["best"]["weights"])
        history["best"] = {"score": state["best"]["score"], "step": state["best"]["step"]}
    return history


def _rank0_decides(flag: bool) -> bool:
    """Rank 0's value of ``flag`` on every worker (its clock and its selection scores rule)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return flag
    value = torch.tensor([float(flag)])
    dist.broadcast(value, src=0)
    return bool(value.item())


def _fewest_examples(count: int) -> int:
    """The smallest shard's size over the workers: every worker takes that many steps an epoch (a
    larger shard's extra examples sit out that epoch, others the next, as each epoch reshuffles),
    so no worker waits in a collective another never calls."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return count
    value = torch.tensor([count])
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return int(value.item())


def _broadcast_weights(model: CodeItemGenerator) -> None:
    """Rank 0's weights on every worker (as DDP does at its start): workers built their models apart,
    each from its own random initialisation, and averaged gradients would never bring them together.
    Buffers (the catalogue's vectors, code centroids) are built from the run alike on every worker:
    sending them would cost a catalogue's size for nothing."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    with torch.no_grad():
        for parameter in model.parameters():
            dist.broadcast(parameter, src=0)


def _average_gradients(model: CodeItemGenerator) -> None:
    """The workers' mean gradient on every worker. A parameter no worker's step touched keeps no
    gradient (AdamW then leaves it, as one worker would), one some worker's step touched gets zeros
    from the others."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    parameters = [p for p in model.parameters() if p.requires_grad]
    touched = torch.tensor([float(p.grad is not None) for p in parameters])
    dist.all_reduce(touched, op=dist.ReduceOp.MAX)
    for parameter, used in zip(parameters, touched.tolist(), strict=True):
        if not used:
            continue
        if parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)
        dist.all_reduce(parameter.grad)
        parameter.grad /= dist.get_world_size()


def _payload(model, optimizer, schedule, state: dict) -> dict:
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "state": state,
    }


def write_training_state(path: Path, payload: dict) -> None:
    """The whole training state in one file, replaced atomically (a stop mid-write keeps the last)."""
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def read_training_state(path: Path) -> dict:
    """What ``write_training_state`` wrote; a damaged or missing file is named in a clear error."""
    try:
        return torch.load(path, weights_only=False)
    except Exception as err:  # a damaged file, a copy cut short
        raise ValueError(
            f"{path}: cannot resume from this checkpoint ({err}); delete it to start over"
        ) from err


def _resume(checkpoints: Checkpoints | None, model, optimizer, schedule) -> dict | None:
    payload = checkpoints.load() if checkpoints is not None else None
    if payload is None:
        return None
    try:
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        schedule.load_state_dict(payload["schedule"])
    except Exception as err:  # a checkpoint from another config
        raise ValueError(
            f"{checkpoints}: cannot resume from this checkpoint ({err}); delete it to start over"
        ) from err
    log.info("resumed from %s at step %d", checkpoints, payload["state"]["step"])
    return payload["state"]
