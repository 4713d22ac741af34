"""Systems named on the command line -> builders of :class:`SearchSystem` for one run.

``cascade`` (RRF + personalised re-rank), ``rrf`` (without the re-rank), ``random``, ``oracle``,
``NAME=MODEL_DIR`` (a generator directory, e.g. ``grpo=generator-grpo``; a relative path is tried as
given, then inside the run) and ``NAME=URL`` (a running search API over HTTP, its pages' clicks and
orders sent to its ``/feedback``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from onesearch_ray.generator.served import ENGINES, model_dirs
from onesearch_ray.runs import is_generator_dir
from onesearch_ray.sim.config import RerankConfig, SimulationConfig
from onesearch_ray.sim.systems import (
    CascadeSystem,
    HttpSystem,
    OracleSystem,
    RandomSystem,
    SearchSystem,
    ServiceSystem,
)
from onesearch_ray.sim.tune import tune_rerank
from onesearch_ray.sim.world import World

log = logging.getLogger(__name__)
NAMED_SYSTEMS = ("cascade", "rrf", "random", "oracle")


@dataclass(frozen=True)
class SystemOptions:
    engine: str = "transformers"  # the generators' engine (generator.served.ENGINES)
    beam: int = 50
    seed: int = 0  # the random system's stream
    rerank: RerankConfig = field(default_factory=RerankConfig)
    tune_rerank: bool = False  # cascade: choose the re-rank on the simulator first (sim.tune)
    feedback_log: Path | None = None  # models: record impressions, clicks and orders here
    write_token: str | None = None  # NAME=URL systems: the API's write token, for /feedback

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"unknown engine {self.engine!r} (one of {', '.join(ENGINES)})")
        if self.beam < 1:
            raise ValueError(f"beam must be >= 1, got {self.beam}")


def default_systems(run: Path) -> list[str]:
    """The cascade (control) and every generator of the run (``RUN/generator``, its alignments)."""
    models = model_dirs(run)
    if not models:  # the cascade alone is no A/B test: ask for what was meant
        raise FileNotFoundError(
            f"{run}: no trained generator to test against the cascade (run `onesearch generator` "
            "first, or name the systems with --system)"
        )
    return ["cascade", *(f"{d.name}={d}" for d in models)]


def system_builders(
    specs: Sequence[str], run: Path, world: World, options: SystemOptions, simulation: SimulationConfig
) -> dict[str, Callable[[], SearchSystem]]:
    """A builder per spec, in order (the first is the control); every name and path is checked now,
    before any system is built. ``simulation``: the traffic mix a tuned re-rank is chosen on."""
    if not run.is_dir():
        raise FileNotFoundError(f"run directory {run} not found")
    builders: dict[str, Callable[[], SearchSystem]] = {}
    for spec in specs:
        name, builder = _builder(spec, run, world, options, simulation)
        if name in builders:
            raise ValueError(f"system {name!r} named twice")
        builders[name] = builder
    return builders


def _builder(
    spec: str, run: Path, world: World, options: SystemOptions, simulation: SimulationConfig
) -> tuple[str, Callable[[], SearchSystem]]:
    if "=" in spec:
        name, path = (part.strip() for part in spec.split("=", 1))
        if not name:
            raise ValueError(f"system {spec!r}: empty name (expected NAME=MODEL_DIR or NAME=URL)")
        if path.startswith(("http://", "https://")):
            return name, lambda: HttpSystem(name, path, options.beam, options.write_token)
        return name, _service_builder(name, _model_dir(path, run), run, world, options)
    if spec == "rrf":
        return spec, lambda: _cascade(spec, run, world, None)
    if spec == "cascade":
        tuning = simulation if options.tune_rerank else None
        return spec, lambda: _cascade(spec, run, world, options.rerank, tuning)
    if spec == "random":
        return spec, lambda: RandomSystem(world, seed=options.seed)
    if spec == "oracle":
        return spec, lambda: OracleSystem(world)
    raise ValueError(f"unknown system {spec!r} (one of {', '.join(NAMED_SYSTEMS)}, or NAME=MODEL_DIR)")


def _model_dir(path: str, run: Path) -> Path:
    for candidate in (Path(path), run / path):
        if is_generator_dir(candidate):
            return candidate
    raise FileNotFoundError(f"generator directory {path!r} not found (as given, or inside {run})")


def _cascade(
    name: str, run: Path, world: World, rerank: RerankConfig | None, tuning: SimulationConfig | None = None
) -> CascadeSystem:
    from onesearch_ray.khqe import catalogue_texts
    from onesearch_ray.khqe.cache import encoded_vectors
    from onesearch_ray.khqe.config import run_khqe_config
    from onesearch_ray.khqe.encoder import make_encoder

    config = run_khqe_config(run).encoder  # the run's own encoder, as the models have (e5 for Chinese)
    encoder = make_encoder(config)
    texts = catalogue_texts(world.track.items)
    vectors = encoded_vectors(run, "items", texts, config, "passage", encoder)
    cascade = CascadeSystem(world, vectors, encoder, rerank, name=name)
    if tuning is not None:
        chosen, grid = tune_rerank(world, cascade, tuning)
        best = sorted(grid, key=lambda point: -point["expected_orders_per_1k"])[:5]
        log.info("re-rank tuned on %d searches of its own: %s; best points %s", tuning.searches, chosen, best)
        cascade.description += f", tuned on {tuning.searches} searches of its own (seed {tuning.seed + 1})"
    return cascade


def _service_builder(
    name: str, model_dir: Path, run: Path, world: World, options: SystemOptions
) -> Callable[[], SearchSystem]:
    def build() -> SearchSystem:
        from onesearch_ray.rewards.feedback_log import FeedbackLog
        from onesearch_ray.serving.service import SearchService

        log_file = FeedbackLog(options.feedback_log) if options.feedback_log else None
        service = SearchService(
            run,
            options.engine,
            data=world.track.root,
            model_dir=model_dir,
            feedback_log=log_file,
        )
        if world.cold_items:  # held out of training: they join the served catalogue live
            service.add_track_items(world.track, sorted(world.cold_items))
        return ServiceSystem(name, service, options.beam, options.engine)

    return build
