"""vLLM V1 logits processor that runs SID beam search inside the engine's batch.

A request takes part with ``SamplingParams(extra_args=beam_args(search_id, prompt_len, stop))``: it
is a beam of the live search ``search_id`` in ``onesearch_ray.decoding.inflight.LIVE_SEARCHES``,
and its SID path is its prompt past ``prompt_len`` plus what it generated. At every step the
processor hands the logits of each search's rows to that search, which selects its next beams
(exact full-vocabulary log-softmax of the raw logits, trie-masked), and then forces each row's
token: the beam's chosen SID token, or ``stop`` for a beam that fell out. Only valid SID tokens are
ever emitted: 0 invalid SIDs by construction. Requests without the key are untouched, so ordinary
generation can share the engine.

The searches live in the driver's process, so the engine core must run in-process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``, the "uni" executor); ``VLLMEngine`` checks this.
"""

from __future__ import annotations

from typing import Any

import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from onesearch_ray.decoding.inflight import BeamRow, BeamRows

BEAM_SEARCH = "onesearch_beam"
_BEAM_KEYS = ("search", "prompt_len", "stop")


def beam_args(search_id: int, prompt_len: int, stop_token_id: int) -> dict[str, Any]:
    """The ``extra_args`` that make a request a beam of search ``search_id``."""
    return {BEAM_SEARCH: {"search": search_id, "prompt_len": prompt_len, "stop": stop_token_id}}


def _beam_row(params: SamplingParams, prompt_ids: list[int] | None, output_ids: list[int]) -> BeamRow | None:
    spec = (params.extra_args or {}).get(BEAM_SEARCH)
    if spec is None:
        return None
    return BeamRow(spec["search"], tuple((prompt_ids or [])[spec["prompt_len"] :]), output_ids, spec["stop"])


class SidBeamSearchLogitsProcessor(LogitsProcessor):
    """Advances every in-batch SID beam search by one position per engine step."""

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        self.beam_rows = BeamRows()

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        spec = (sampling_params.extra_args or {}).get(BEAM_SEARCH)
        if spec is None:
            return
        if not isinstance(spec, dict) or not all(isinstance(spec.get(k), int) for k in _BEAM_KEYS):
            raise ValueError(f"extra_args[{BEAM_SEARCH!r}]: expected integers {', '.join(_BEAM_KEYS)}")

    def is_argmax_invariant(self) -> bool:
        return False  # it picks the token

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        self.beam_rows.update(
            batch_update.removed,
            [
                (index, _beam_row(params, prompt, output))
                for index, params, prompt, output in batch_update.added
            ],
            [(a, b, way == MoveDirectionality.SWAP) for a, b, way in batch_update.moved],
        )

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        return self.beam_rows.apply(logits)
