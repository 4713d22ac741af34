"""Training step time as the catalogue grows: the item loss over the whole catalogue against the
sampled one (``TrainConfig.sampled_negatives``).

A trained-track run's catalogue (Home Depot: 54,667 items) and its training searches; the catalogue
is then tiled to ``--sizes`` items (each copy's vectors perturbed, its lexical rows and codes the
same: a stand-in with the cost profile of a larger catalogue, not its quality). At each size, one
fresh untrained model per loss takes ``--steps`` training steps (batch 128: forward, backward, AdamW)
on the same batches; the median step's wall seconds are reported, and the peak RSS.

    python bench/sampled_loss.py --run runs/hd --data ../shared/data/homedepot \\
        --config configs/homedepot_cpu.yaml --sizes 54667 1000000 --negatives 1024
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import resource
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402
import torch  # noqa: E402

from onesearch_ray.data import load_track  # noqa: E402
from onesearch_ray.generator.catalogue import build_generator, load_catalogue  # noqa: E402
from onesearch_ray.generator.codes import CodeTree  # noqa: E402
from onesearch_ray.generator.config import load_job_config  # noqa: E402
from onesearch_ray.generator.job import training_searches  # noqa: E402
from onesearch_ray.generator.model import CodeItemGenerator  # noqa: E402
from onesearch_ray.generator.train import loss_of, parameter_groups  # noqa: E402

BATCH = 128


def tiled(model: CodeItemGenerator, size: int, rng: np.random.Generator) -> CodeItemGenerator:
    """``model``'s catalogue tiled to ``size`` items (vectors perturbed, lexical rows and codes copied)."""
    n = model.n_items
    rows = np.arange(size) % n
    vectors = model.item_vectors.numpy()[rows] + 0.01 * rng.standard_normal(
        (size, model.item_vectors.shape[1])
    )
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    lexical = model.lexical
    saturation = sp.csr_matrix(lexical.saturation[rows])
    frequency = np.bincount(saturation.indices, minlength=lexical.n_terms).astype(np.float64)
    index = dataclasses.replace(lexical, saturation=saturation, document_frequency=frequency, n_items=size)
    codes = CodeTree.build(model.codes.item_codes[rows], model.codes.level_sizes, vectors)
    return CodeItemGenerator(model.config, vectors, codes, index)


def step_seconds(model: CodeItemGenerator, batches: list, negatives: int, config) -> list[float]:
    optimizer = torch.optim.AdamW(parameter_groups(model, config))
    seconds = []
    for step, batch in enumerate(batches):
        started = time.perf_counter()
        losses = loss_of(model, batch, np.random.default_rng(step), negatives=negatives)
        loss = losses["item"] + config.code_loss_weight * losses["code"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seconds.append(time.perf_counter() - started)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--sizes", type=int, nargs="+", default=[54667, 1_000_000])
    parser.add_argument("--negatives", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    config = load_job_config(args.config)
    track = load_track(args.data)
    catalogue = load_catalogue(args.run, track)
    searches = training_searches(args.run, track, catalogue, config)
    order = np.random.default_rng(0).permutation(len(searches))
    batches = [[searches[i] for i in order[s * BATCH : (s + 1) * BATCH]] for s in range(args.steps)]
    base = build_generator(catalogue, config.model, searches)
    print("| catalogue items | item loss | median step (s) | steps (s) | peak RSS (GiB) |")
    print("|---|---|---|---|---|")
    losses = {"whole catalogue": 0, f"sampled ({args.negatives} + {args.negatives})": args.negatives}
    for size in args.sizes:
        for name, negatives in losses.items():
            rng = np.random.default_rng(size)
            model = copy.deepcopy(base) if size == base.n_items else tiled(base, size, rng)
            seconds = step_seconds(model, batches, negatives, config.train)
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
            steps = ", ".join(f"{s:.2f}" for s in seconds)
            median = statistics.median(seconds[1:])
            print(f"| {size:,} | {name} | {median:.3f} | {steps} | {rss:.1f} |", flush=True)
            del model


if __name__ == "__main__":
    main()
