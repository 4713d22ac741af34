"""The generator on a candidate KHQE layout, free of Ray: one trial of ``onesearch tune``'s rung 2.

A layout's residual k-means levels are the coarse code levels the generator decodes before its item
step (``GeneratorConfig.code_levels``); the OPQ codes after them are the SID's fine tail, which the
generator never decodes. ``for_layout`` sets the code levels from the layout, with one beam width per
level (the configured widths, the last one repeated for deeper levels). ``train_on_layout`` builds
the generator on SIDs fitted in memory (``catalogue_of``), trains it with the generator's own loop
(``generator.train.train``) and scores ``valid`` at every selection point, handing each point's
metrics to ``report`` (the sweep passes ``ray.tune.report``). ``test`` is never scored.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from onesearch_ray.data import Track
from onesearch_ray.generator.catalogue import build_generator, catalogue_of
from onesearch_ray.generator.config import GeneratorConfig, GeneratorJobConfig
from onesearch_ray.generator.job import SELECTION_METRIC, split_metrics, training_searches
from onesearch_ray.generator.model import CodeItemGenerator
from onesearch_ray.generator.train import train
from onesearch_ray.khqe import CodebookLayout, SemanticIdTokenizer


def for_layout(config: GeneratorConfig, layout: CodebookLayout | str) -> GeneratorConfig:
    """``config`` decoding every residual level of ``layout``: ``code_levels`` = the layout's RQ
    levels, ``search.beams`` = the configured widths cut or extended (last width repeated) to them."""
    layout = CodebookLayout.parse(layout) if isinstance(layout, str) else layout
    levels = len(layout.rq_levels)
    widths = tuple(config.search.beams)
    beams = widths[:levels] + (widths[-1],) * (levels - len(widths))
    model = replace(config, code_levels=levels, search=replace(config.search, beams=beams))
    model.validate()
    return model


def train_on_layout(
    run: Path,
    track: Track,
    tokenizer: SemanticIdTokenizer,
    item_vectors: np.ndarray,
    query_vectors: np.ndarray,
    config: GeneratorJobConfig,
    report: Callable[[dict], None] | None = None,
) -> tuple[CodeItemGenerator, dict]:
    """Train the generator of ``config`` (``model`` set ``for_layout`` of ``tokenizer``'s layout) on
    ``tokenizer``'s SIDs and return it at its best valid point, with the training history.

    ``item_vectors`` and ``query_vectors`` hold one row per ``track.items`` / ``track.queries`` row
    (the encode job's cache); ``run`` is the encoded run (only distillation, when on, reads it).
    ``report`` gets each selection point's valid metrics (``split_metrics``: the first
    ``select_queries`` valid queries with a relevant item) plus ``point`` (0: the untrained start)
    and ``minutes`` (wall time since the start, scoring included).
    """
    config = replace(config, model=for_layout(config.model, tokenizer.layout))
    catalogue = catalogue_of(track, tokenizer, item_vectors, query_vectors)
    model = build_generator(catalogue, config.model)
    examples = training_searches(run, track, catalogue, config)
    started, points = time.perf_counter(), 0

    def select(current: CodeItemGenerator) -> float:
        nonlocal points
        metrics = split_metrics(current, catalogue, track, "valid", config)
        if report is not None:
            report(metrics | {"point": points, "minutes": (time.perf_counter() - started) / 60})
        points += 1
        return float(metrics[SELECTION_METRIC])

    history = train(model, examples, config.train, select)
    history["examples"] = len(examples)
    return model, history
