"""The generator's items as a live catalogue: what the item step reads.

``model_catalogue`` turns a model's catalogue (its text vectors plus trained offsets, biases, lexical
rows and term weights) into the base segment of a :class:`~onesearch_ray.catalogue.LiveCatalogue`,
grouped by the code levels the decoder emits and, given the items' full SIDs, by ``refine_levels``
deeper SID levels: those let a search keep at most ``SearchConfig.max_items`` items however large
the catalogue grows (``generator.search``). Each index level gets residual centroids, the untrained
geometry that plans the levels below the decoded ones. Items added later (``LiveCatalogue.add``)
score by their own vectors and title terms, with bias 0: nothing to train.
"""

from __future__ import annotations

import numpy as np
import torch

from onesearch_ray.catalogue import LiveCatalogue, build_segment
from onesearch_ray.catalogue.live import Scorer, shard_of
from onesearch_ray.generator.codes import CodeTree
from onesearch_ray.generator.model import CodeItemGenerator


@torch.no_grad()
def model_catalogue(
    model: CodeItemGenerator,
    item_ids: np.ndarray | None = None,
    codes: np.ndarray | None = None,
    sid_level_sizes: tuple[int, ...] | None = None,
    titles: list[str] | None = None,
    vector_dtype: str | None = None,
    *,
    name: str = "",
    shard: tuple[int, int] | None = None,
    scorer: Scorer | None = None,
) -> LiveCatalogue:
    """The model's items as a live catalogue.

    ``item_ids``: the catalogue's id of each model row (default: the row itself, for training-time
    searches); ``codes`` (rows, positions) and ``sid_level_sizes``: the items' full SIDs and their
    layout, to index ``model.config.search.refine_levels`` levels below the decoded ones;
    ``titles``: shown with hits (default empty); ``vector_dtype``: how dense rows are stored
    (default ``SearchConfig.vector_dtype``); ``name``: the model's name, which snapshots carry.

    Shards (``catalogue.shards``): ``shard=(i, n)`` keeps the rows of shard i's items only; a
    ``scorer`` makes the planner's catalogue, which keeps every item but none of the trained dense
    rows (the shards score them).
    """
    vector_dtype = vector_dtype or model.config.search.vector_dtype
    n = model.n_items
    levels = model.codes.levels
    item_ids = np.arange(n, dtype=np.int64) if item_ids is None else np.asarray(item_ids, np.int64)
    sizes = tuple(model.codes.level_sizes)
    if codes is None:
        codes = model.codes.item_codes
    else:
        codes = np.asarray(codes, np.int64)
        if not np.array_equal(codes[:, :levels], model.codes.item_codes):
            raise ValueError("the items' SIDs do not start with the codes the model was trained on")
        depth = min(levels + model.config.search.refine_levels, _prefix_levels(sid_level_sizes))
        sizes = tuple(sid_level_sizes[:depth])
    rows = np.arange(n) if shard is None else np.flatnonzero(shard_of(item_ids, shard[1]) == shard[0])
    if scorer is None:
        vectors = (model.item_vectors[rows] + model.item_offset[rows]).numpy().astype(vector_dtype)
    else:
        vectors = np.zeros((n, 0), vector_dtype)
    base = build_segment(
        item_ids[rows],
        vectors,
        model.item_bias.numpy()[rows],
        codes[rows],
        [titles[row] for row in rows.tolist()] if titles is not None else [""] * len(rows),
        model.lexical.saturation[rows],
        sizes,
        model.config.search.first_pass_rows,
    )
    if shard is not None:  # a shard never plans
        centroids = ()
    elif len(sizes) == levels:  # the model holds these centroids already (built the same way)
        centroids = tuple(getattr(model, f"centroids_{level}").numpy() for level in range(levels))
    else:
        centroids = tuple(CodeTree.build(codes[:, : len(sizes)], sizes, model.item_vectors.numpy()).centroids)
    return LiveCatalogue(
        base,
        model.lexical,
        model.term_weights().detach().numpy(),
        lexical_scale=float(model.log_lexical_scale.exp()),
        vector_dtype=vector_dtype,
        centroids=centroids,
        model=name,
        shard=shard,
        scorer=scorer,
        first_pass_rows=model.config.search.first_pass_rows,
    )


def _prefix_levels(level_sizes: tuple[int, ...] | None) -> int:
    """How many leading SID levels can key the index (prefix keys stay well inside int64)."""
    if not level_sizes:
        return 0
    depth, space = 0, 1
    for size in level_sizes:
        space *= int(size)
        if space > 1 << 24:
            break
        depth += 1
    return depth
