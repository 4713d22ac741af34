"""Supervised fine-tuning, nanoGPT style: one stage's whole training loop reads top to bottom here.

The loop is plain torch. It knows nothing of Ray: the Ray Train shell (``pipelines/train.py``)
hands it a (possibly DDP-wrapped) model, its rank and world size, and two callbacks, ``on_log``
and ``on_checkpoint``. Loss is next-token cross-entropy on the TARGET tokens only (the SID and
eos), never on the prompt, and the output head runs only where a target token is predicted.
Batches are a pure function of (seed, epoch, rank), so a resumed run continues with exactly the
batches it would have seen.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from onesearch_ray.prompts.tokenizer import left_align, sid_token_ids

IGNORE_INDEX = -100
TRAINABLE = ("all", "embeddings", "new_tokens")
SOFTMAX = ("full", "sid")


@dataclass
class SFTConfig:
    epochs: float = 1.0
    max_steps: int = 0  # 0: derived from epochs
    batch_size: int = 32  # per worker
    learning_rate: float = 1e-3
    min_learning_rate: float = 1e-4
    warmup_steps: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    max_length: int = 160
    checkpoint_every: int = 200
    log_every: int = 20
    seed: int = 0
    # What learns (CPU cost control): "all"; "embeddings" (the token embedding matrix, tied to the
    # output head); "new_tokens" (only the rows added for markers and SIDs: a few-MiB adapter). With
    # "embeddings"/"new_tokens", ``trainable_layers`` top decoder layers (and the final norm) learn too.
    trainable: str = "all"
    trainable_layers: int = 0
    # "full": softmax over the whole vocabulary, as evaluation and serving score. "sid": softmax over
    # the SID tokens and eos only (the output rows of the rest are never computed: cheaper on CPU), a
    # RESTRICTED softmax: the model is not taught to push text tokens below SID tokens, which the
    # full-vocabulary scores at serving time (trie-masked) do not need but do see.
    softmax: str = "full"

    def __post_init__(self) -> None:
        if self.trainable not in TRAINABLE:
            raise ValueError(f"trainable {self.trainable!r}: expected one of {TRAINABLE}")
        if self.softmax not in SOFTMAX:
            raise ValueError(f"softmax {self.softmax!r}: expected one of {SOFTMAX}")
        if self.trainable_layers < 0:
            raise ValueError(f"trainable_layers {self.trainable_layers}: must be >= 0")


@dataclass
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]


def tokenize_pairs(
    tokenizer, pairs: Sequence[tuple[str, str]], max_length: int, prompt_block: int = 0
) -> list[TokenizedExample]:
    """prompt + target -> ids, with labels only on target tokens; over-long prompts lose their head,
    then prompts are left-padded to a multiple of ``prompt_block`` exactly as the engines pad them."""
    pad_id = tokenizer.pad_token_id
    prompts = tokenizer([p for p, _ in pairs], add_special_tokens=False)["input_ids"]
    targets = tokenizer([t for _, t in pairs], add_special_tokens=False)["input_ids"]
    examples = []
    for prompt_ids, target_ids in zip(prompts, targets, strict=True):
        prompt_ids = left_align(prompt_ids[-max(1, max_length - len(target_ids)) :], prompt_block, pad_id)
        examples.append(
            TokenizedExample(prompt_ids + target_ids, [IGNORE_INDEX] * len(prompt_ids) + list(target_ids))
        )
    return examples


def collate(examples: Sequence[TokenizedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example; labels are shifted by the model itself."""
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        attention[row, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention}


def total_steps(n_examples: int, config: SFTConfig, world_size: int) -> int:
    if config.max_steps:
        return config.max_steps
    per_step = config.batch_size * world_size
    return max(1, math.ceil(config.epochs * n_examples / per_step))


def batch_indices(n_examples: int, step: int, config: SFTConfig, rank: int, world_size: int) -> np.ndarray:
    """Example indices of this rank's batch at ``step`` (deterministic: seed, epoch, rank)."""
    global_batch = config.batch_size * world_size
    steps_per_epoch = max(1, n_examples // global_batch)
    epoch, offset = divmod(step, steps_per_epoch)
    order = np.random.default_rng((config.seed, epoch)).permutation(n_examples)
    start = offset * global_batch + rank * config.batch_size
    return np.take(order, np.arange(start, start + config.batch_size), mode="wrap")


def learning_rate(step: int, steps: int, config: SFTConfig) -> float:
    """Linear warm-up, then cosine decay to ``min_learning_rate``."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, steps - config.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return config.min_learning_rate + cosine * (config.learning_rate - config.min_learning_rate)


def set_trainable(model: torch.nn.Module, config: SFTConfig) -> None:
    """Freeze what ``config.trainable`` leaves out. Call it before DDP wraps the model (DDP registers
    the parameters that require grad when it is built)."""
    if config.trainable == "all":
        return
    model.requires_grad_(False)
    for weight in _vocabulary_matrices(model):
        weight.requires_grad_(True)
        if config.trainable == "new_tokens":
            start = _new_token_start(model)
            weight.register_hook(
                lambda grad, start=start: torch.cat([torch.zeros_like(grad[:start]), grad[start:]])
            )
    if config.trainable_layers:
        decoder = model.get_decoder()
        decoder.layers[-config.trainable_layers :].requires_grad_(True)
        decoder.norm.requires_grad_(True)


def _vocabulary_matrices(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The input embedding and, when untied, the output head: one row per token."""
    matrices = [model.get_input_embeddings().weight]
    output = model.get_output_embeddings()
    if output is not None and output.weight is not matrices[0]:
        matrices.append(output.weight)
    return matrices


def _new_token_start(model: torch.nn.Module) -> int:
    start = getattr(model.config, "new_token_start", None)
    if start is None:
        raise ValueError(
            "trainable 'new_tokens': the model records no new_token_start (only a model extended from "
            "train.model.init_from has rows that are new)"
        )
    return int(start)


def make_optimizer(model: torch.nn.Module, config: SFTConfig) -> torch.optim.Optimizer:
    bare = getattr(model, "module", model)
    # Rows that must stay as they are get zero gradients, and no weight decay either.
    kept_rows = {id(p) for p in _vocabulary_matrices(bare)} if config.trainable == "new_tokens" else set()
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2 and id(p) not in kept_rows]
    no_decay = [p for p in params if p.dim() < 2 or id(p) in kept_rows]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.learning_rate, betas=(0.9, 0.95))


def softmax_vocabulary(tokenizer, config: SFTConfig) -> torch.Tensor | None:
    """Token ids the ``sid`` softmax runs over (every SID token, then eos); None for ``full``."""
    if config.softmax == "full":
        return None
    return torch.tensor([*sid_token_ids(tokenizer), tokenizer.eos_token_id], dtype=torch.long)


def target_logits(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], vocabulary: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, target ids) at every position that predicts a target token, one row each.

    The output head runs only there (``logits_to_keep``), and with ``vocabulary`` only over those
    tokens' rows: targets are a few tokens per example, the head is a vocabulary-sized matmul.
    """
    labels = batch["labels"][:, 1:]
    rows, positions = torch.nonzero(labels != IGNORE_INDEX, as_tuple=True)
    targets = labels[rows, positions]
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if vocabulary is None:
        kept = torch.unique(positions)
        logits = model(**inputs, logits_to_keep=kept).logits
        return logits[rows, torch.searchsorted(kept, positions)], targets
    hidden = model(**inputs, output_hidden_states=True, logits_to_keep=1).hidden_states[-1]
    head = getattr(model, "module", model).get_output_embeddings()
    logits = hidden[rows, positions] @ head.weight[vocabulary].T
    if getattr(head, "bias", None) is not None:
        logits = logits + head.bias[vocabulary]
    index = torch.full((head.weight.shape[0],), -1, dtype=torch.long, device=targets.device)
    index[vocabulary] = torch.arange(len(vocabulary), device=targets.device)
    restricted = index[targets]
    if (restricted < 0).any():
        outside = int(targets[restricted < 0][0])
        raise ValueError(
            f"target token id {outside} is outside the SID softmax (softmax: sid needs SID targets)"
        )
    return logits, restricted


def train_step(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    config: SFTConfig,
    vocabulary: torch.Tensor | None = None,
) -> dict[str, float]:
    """Forward, loss on target tokens, backward, clip, update. Returns loss and target-token accuracy.

    On CUDA the forward runs in bfloat16 autocast (weights and optimizer state stay float32)."""
    model.train()
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=batch["input_ids"].is_cuda):
        logits, targets = target_logits(model, batch, vocabulary)
    loss = torch.nn.functional.cross_entropy(logits.float(), targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], config.grad_clip)
    optimizer.step()
    with torch.no_grad():
        accuracy = (logits.argmax(-1) == targets).float().mean().item() if len(targets) else 0.0
    return {"loss": loss.item(), "token_accuracy": accuracy, "target_tokens": len(targets)}


def train(
    model: torch.nn.Module,
    examples: Sequence[TokenizedExample],
    config: SFTConfig,
    *,
    pad_id: int,
    rank: int = 0,
    world_size: int = 1,
    optimizer: torch.optim.Optimizer | None = None,
    start_step: int = 0,
    device: torch.device | str = "cpu",
    vocabulary: torch.Tensor | None = None,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    on_checkpoint: Callable[[int, torch.optim.Optimizer, dict[str, float]], bool | None] | None = None,
) -> dict[str, float]:
    """Run one SFT stage from ``start_step`` to the end; returns the last window's metrics.

    ``vocabulary``: the ``sid`` softmax's token ids (:func:`softmax_vocabulary`); None: full softmax."""
    if not examples:
        raise ValueError("SFT stage has no training examples")
    optimizer = optimizer or make_optimizer(model, config)
    steps = total_steps(len(examples), config, world_size)
    window: list[dict[str, float]] = []
    metrics: dict[str, float] = {}
    started = time.perf_counter()
    vocabulary = None if vocabulary is None else vocabulary.to(device)
    for step in range(start_step, steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, steps, config)
        rows = batch_indices(len(examples), step, config, rank, world_size)
        batch = {k: v.to(device) for k, v in collate([examples[i] for i in rows], pad_id).items()}
        window.append(train_step(model, batch, optimizer, config, vocabulary))
        done = step + 1
        if done % config.log_every == 0 or done == steps:
            elapsed = time.perf_counter() - started
            metrics = {
                "step": done,
                "steps": steps,
                "loss": float(np.mean([w["loss"] for w in window])),
                "token_accuracy": float(np.mean([w["token_accuracy"] for w in window])),
                "lr": optimizer.param_groups[0]["lr"],
                "target_tokens_per_s": sum(w["target_tokens"] for w in window)
                * world_size
                / max(elapsed, 1e-9),
            }
            window, started = [], time.perf_counter()
            if on_log:
                on_log(done, metrics)
        # on_checkpoint returning True stops the stage here (early stopping on valid)
        if on_checkpoint and (done % config.checkpoint_every == 0 or done == steps):
            if on_checkpoint(done, optimizer, metrics):
                break
    return metrics
