"""vLLM V1 logits processor for SID-constrained decoding (switched on per request).

A request opts in with ``SamplingParams(extra_args={SID_CONSTRAINT: {"allowed_token_ids": [...]}})``:
the token ids the trie allows after the request's partial SID (the engine reads them off its trie
snapshot with one vectorised ``SidTrie.allowed_mask`` call per beam step). Every other token's logit
becomes -inf, so vLLM can only sample a valid next SID token. Requests without the key are untouched
(mixed constrained/unconstrained batches work).

The allowed ids travel IN the request, not as a reference to a trie held by the processor: the
engine core may live in another process (AsyncLLM, GPU multiprocessing), where a trie registered
in the caller would be invisible; and a request keeps the trie version it was built from even if the
engine swaps tries meanwhile.

Scoring never reads the masked logits: engines run vLLM with ``logprobs_mode="raw_logprobs"``,
where returned logprobs are the full-vocabulary log-softmax computed BEFORE any logits processor
(the scoring rule in ``onesearch_ray.decoding.beam``: masked, not renormalised).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

SID_CONSTRAINT = "onesearch_sid"


def sid_constraint_args(allowed_token_ids: Sequence[int]) -> dict[str, Any]:
    """The ``extra_args`` that switch the constraint on for one request."""
    return {SID_CONSTRAINT: {"allowed_token_ids": [int(t) for t in allowed_token_ids]}}


class AllowedTokens:
    """Per-request processor: keep only ``allowed`` token ids (others -> -inf)."""

    def __init__(self, allowed: Sequence[int]) -> None:
        if len(allowed) == 0:
            raise ValueError("a SID constraint needs at least one allowed token")
        self.allowed = list(allowed)

    def __call__(self, output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        masked = torch.full_like(logits, float("-inf"))
        index = torch.as_tensor(self.allowed, device=logits.device)
        masked[index] = logits[index]
        return masked


class SidConstraintLogitsProcessor(AdapterLogitsProcessor):
    """Applies each constrained request's allowed-token mask; one batched masked fill per step."""

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        spec = (sampling_params.extra_args or {}).get(SID_CONSTRAINT)
        if spec is None:
            return
        allowed = spec.get("allowed_token_ids") if isinstance(spec, dict) else None
        if not allowed or not all(isinstance(t, int) and t >= 0 for t in allowed):
            raise ValueError(f"extra_args[{SID_CONSTRAINT!r}]: expected a non-empty allowed_token_ids list")

    def is_argmax_invariant(self) -> bool:
        return False  # it changes which token wins

    def new_req_logits_processor(self, params: SamplingParams) -> AllowedTokens | None:
        spec = (params.extra_args or {}).get(SID_CONSTRAINT)
        return None if spec is None else AllowedTokens(spec["allowed_token_ids"])

    def _new_state(
        self, params: SamplingParams, prompt_ids: list[int] | None, output_ids: list[int]
    ) -> partial | None:
        """As the adapter's, minus its per-request ``inspect.signature`` (known here: 2 arguments)."""
        processor = self.new_req_logits_processor(params)
        return None if processor is None else partial(processor, output_ids)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """Same result as the per-row adapter loop, as one masked fill over all constrained rows."""
        if not self.req_info:
            return logits
        rows = list(self.req_info)
        allowed = [self.req_info[row].func.allowed for row in rows]
        row_index = torch.repeat_interleave(
            torch.arange(len(rows)), torch.as_tensor([len(a) for a in allowed])
        ).to(logits.device)
        token_index = torch.as_tensor([t for ids in allowed for t in ids], device=logits.device)
        keep = torch.zeros((len(rows), logits.shape[1]), dtype=torch.bool, device=logits.device)
        keep[row_index, token_index] = True
        batch_rows = torch.as_tensor(rows, device=logits.device)
        logits[batch_rows] = logits[batch_rows].masked_fill(~keep, float("-inf"))
        return logits
