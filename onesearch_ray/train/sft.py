"""Supervised fine-tuning, nanoGPT style: one stage's whole training loop reads top to bottom here.

The loop is plain torch. It knows nothing of Ray: the Ray Train shell (``pipelines/train.py``)
hands it a (possibly DDP-wrapped) model, its rank and world size, and two callbacks, ``on_log``
and ``on_checkpoint``. Loss is next-token cross-entropy on the TARGET tokens only (the SID and
eos), never on the prompt. Batches are a pure function of (seed, epoch, rank), so a resumed run
continues with exactly the batches it would have seen.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from onesearch_ray.prompts.tokenizer import left_align

IGNORE_INDEX = -100


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


def make_optimizer(model: torch.nn.Module, config: SFTConfig) -> torch.optim.Optimizer:
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.learning_rate, betas=(0.9, 0.95))


def train_step(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    config: SFTConfig,
) -> dict[str, float]:
    """Forward, loss on target tokens, backward, clip, update. Returns loss and target-token accuracy."""
    model.train()
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    shifted_logits, shifted_labels = logits[:, :-1, :], batch["labels"][:, 1:]
    loss = torch.nn.functional.cross_entropy(
        shifted_logits.reshape(-1, shifted_logits.size(-1)).float(),
        shifted_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
    )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    optimizer.step()
    with torch.no_grad():
        scored = shifted_labels != IGNORE_INDEX
        correct = (shifted_logits.argmax(-1) == shifted_labels) & scored
        accuracy = correct.sum().item() / max(1, scored.sum().item())
    return {"loss": loss.item(), "token_accuracy": accuracy, "target_tokens": int(scored.sum().item())}


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
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    on_checkpoint: Callable[[int, torch.optim.Optimizer, dict[str, float]], bool | None] | None = None,
) -> dict[str, float]:
    """Run one SFT stage from ``start_step`` to the end; returns the last window's metrics."""
    if not examples:
        raise ValueError("SFT stage has no training examples")
    optimizer = optimizer or make_optimizer(model, config)
    steps = total_steps(len(examples), config, world_size)
    window: list[dict[str, float]] = []
    metrics: dict[str, float] = {}
    started = time.perf_counter()
    for step in range(start_step, steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, steps, config)
        rows = batch_indices(len(examples), step, config, rank, world_size)
        batch = {k: v.to(device) for k, v in collate([examples[i] for i in rows], pad_id).items()}
        window.append(train_step(model, batch, optimizer, config))
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
