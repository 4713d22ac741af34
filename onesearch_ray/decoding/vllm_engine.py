"""Trie-constrained SID beam search on vLLM (pinned 0.32, V1 engine): the serving ``DecodingEngine``.

How a search runs. The engine drives the beam loop itself: vLLM's ``LLM.beam_search`` ignores
logits processors, and one request per beam per SID position keeps the scores exact. Each step sends
ONE ``LLM.generate`` call holding every live beam of every prompt in flight (continuous batching
across prompts), each a ``max_tokens=1`` request whose prompt is the tokenized search prompt plus the
beam's SID tokens so far. Prefix caching computes a prompt's full KV blocks once; later steps
recompute only the tail past the last full block.

Exact scores, cheaply. A request asks for the logprobs of exactly the SID tokens its trie prefix
allows (``SamplingParams.logprob_token_ids``, at most 128 ids per request; a prefix with more
allowed tokens is split over several requests with the same prompt, which prefix caching makes
cheap). With ``logprobs_mode="raw_logprobs"`` those are the full-vocabulary log-softmax computed
before any logits processor: masked, not renormalised, the scoring rule of
``onesearch_ray.decoding.beam``; ``select_beams`` then ranks them exactly as ``TransformersEngine``
does (same tie-break). The same allowed ids switch on ``SidConstraintLogitsProcessor`` for the
request, so even the token vLLM samples is a valid SID token. 0 invalid SIDs by construction.

Trie swaps. ``set_trie`` swaps one reference; a search reads it once when it starts and keeps that
version to the end.

Async use (Ray Serve). ``AsyncVLLMEngine`` wraps a ``VLLMEngine``: ``await engine.search(...)`` hands
the prompts to ONE background thread that owns the in-process ``LLM`` and advances every search in
flight by one SID position per ``generate`` call, so concurrent callers share batches at step
granularity. Why not ``vllm.v1.engine.async_llm.AsyncLLM``: in 0.32 it always runs the engine core
in a separate process ("asyncio without multiprocessing is not currently supported"), which on
these 2-core CPU boxes means ~27 s start-up instead of ~5 s (stack notes), msgspec/ZMQ per request
and a second busy process, for no batching gain: the worker thread already batches every search
in flight. The event loop is never blocked. ``VLLMEngine`` itself also works over a multiprocess
``LLM`` (the GPU default): the processor needs nothing but the request's ``extra_args``.

Cost model (measured on CPU, see ``bench/serving_engines.py``): vLLM caches KV only in FULL blocks
(32 tokens minimum on CPU). Prompts are therefore left-padded to a multiple of the model's
``prompt_block`` (32; the model is trained on the same padding, ``prompts.encode_prompts``), so the
prompt is computed once and each beam request computes only its SID tokens (depth tokens), where
``TransformersEngine`` (KV-cache reorder) computes one token per beam per step; plus ~0.2 ms of vLLM
bookkeeping per request. A model trained without alignment (``prompt_block`` 0) still works, but
every beam request then recomputes the prompt's last partial block too.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onesearch_ray.decoding.beam import SidHit, select_beams
from onesearch_ray.decoding.trie import SidTrie
from onesearch_ray.prompts.tokenizer import encode_prompts, prompt_block

MAX_SCORED_TOKENS = 128  # vllm.sampling_params.MAX_LOGPROB_TOKEN_IDS in 0.32
CPU_ENV = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "HF_HUB_OFFLINE": "1",
}


def default_vllm_kwargs(cuda: bool) -> dict[str, Any]:
    """``vllm.LLM`` arguments: CPU (eager, in-process, small blocks for prefix reuse) or GPU."""
    common: dict[str, Any] = {
        "dtype": "float32",  # the reference engine scores in float32; pass dtype= to trade exactness
        "max_model_len": 512,
        "enable_prefix_caching": True,
        "logprobs_mode": "raw_logprobs",
    }
    if cuda:
        return {**common, "max_num_seqs": 1024, "max_num_batched_tokens": 16384}
    return {
        **common,
        "enforce_eager": True,
        "distributed_executor_backend": "uni",
        "block_size": 32,  # CPU default 128 would leave short prompts uncached
        "max_num_seqs": 1024,
        "max_num_batched_tokens": 16384,
    }


@dataclass
class SearchState:
    """One prompt's beam search, advanced one SID position per engine step."""

    prompt_ids: list[int]
    beam: int
    trie: SidTrie
    codes: np.ndarray = field(default_factory=lambda: np.zeros((1, 0), np.int64))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(1))
    done: bool = False

    @property
    def depth(self) -> int:
        return self.codes.shape[1]

    def hits(self) -> list[SidHit]:
        return [
            SidHit(tuple(int(c) for c in row), float(s))
            for row, s in zip(self.codes, self.scores, strict=True)
        ]


@dataclass
class _Step:
    """The requests of one engine step and how their answers map back to beams."""

    prompts: list[dict[str, Any]] = field(default_factory=list)
    params: list[Any] = field(default_factory=list)
    owners: list[tuple[int, int]] = field(default_factory=list)  # (search index, beam row) per request
    masks: list[np.ndarray | None] = field(default_factory=list)  # per search: allowed codes (n, K)


class VLLMEngine:
    """Exact trie-constrained beam search over SIDs on an in-process ``vllm.LLM``."""

    def __init__(
        self,
        llm: Any,
        tokenizer: Any,
        position_token_ids: Sequence[np.ndarray],
        trie: SidTrie,
        *,
        constrain: bool = True,
        max_scored_tokens: int = MAX_SCORED_TOKENS,
    ) -> None:
        self.llm = llm
        self.tokenizer = tokenizer
        self.prompt_block = prompt_block(self._model_config("hf_config"))  # as the model was trained
        self.position_token_ids = [np.asarray(ids, dtype=np.int64) for ids in position_token_ids]
        self.constrain = constrain
        self.max_scored_tokens = min(int(max_scored_tokens), MAX_SCORED_TOKENS)
        self._code_of = [_inverse(ids) for ids in self.position_token_ids]
        self._lock = threading.Lock()  # one generate() at a time (LLM is not thread-safe)
        self._trie = self._checked(trie)

    @classmethod
    def from_model_dir(
        cls,
        model_dir: str | Path,
        position_token_ids: Sequence[np.ndarray] | None,
        trie: SidTrie,
        *,
        constrain: bool = True,
        warmup: bool = True,
        **vllm_kwargs: Any,
    ) -> VLLMEngine:
        """Load a ``save_model`` directory into vLLM; ``position_token_ids=None`` reads its SID vocabulary.

        CPU: sets ``VLLM_ENABLE_V1_MULTIPROCESSING=0``, ``VLLM_CPU_KVCACHE_SPACE=1`` and
        ``HF_HUB_OFFLINE=1`` unless already set (in this process's environment), eager + "uni".
        ``vllm_kwargs`` override the defaults of :func:`default_vllm_kwargs`. ``warmup`` runs one small
        search now (the first one pays a few seconds of one-time set-up). Call it under an
        ``if __name__ == "__main__":`` guard in scripts.
        """
        import torch

        cuda = torch.cuda.is_available()
        if not cuda:
            for name, value in CPU_ENV.items():
                os.environ.setdefault(name, value)
        from transformers import AutoTokenizer
        from vllm import LLM

        from onesearch_ray.decoding.vllm_processor import SidConstraintLogitsProcessor

        _tolerate_foreign_module_objects()
        kwargs = {**default_vllm_kwargs(cuda), **vllm_kwargs}
        if kwargs.get("logprobs_mode") != "raw_logprobs":
            raise ValueError("VLLMEngine scores with raw (pre-processor) logprobs: logprobs_mode must be raw")
        kwargs["logits_processors"] = [*kwargs.get("logits_processors", []), SidConstraintLogitsProcessor]
        if position_token_ids is None:
            from onesearch_ray.prompts import SidVocabulary

            position_token_ids = SidVocabulary.load(model_dir).position_token_ids
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        engine = cls(
            LLM(model=str(model_dir), **kwargs), tokenizer, position_token_ids, trie, constrain=constrain
        )
        if warmup:
            engine.warmup()
        return engine

    def warmup(self, prompt: str = "<|answer|>", beam: int = 8) -> None:
        """One throw-away search (``<|answer|>`` is the prompt builder's last marker)."""
        self.search([prompt], beam)

    # ---- trie ------------------------------------------------------------------------------
    @property
    def trie(self) -> SidTrie:
        return self._trie

    def set_trie(self, trie: SidTrie) -> None:
        """Atomic swap; searches already running keep the trie they started with."""
        self._trie = self._checked(trie)

    def _checked(self, trie: SidTrie) -> SidTrie:
        sizes = tuple(len(ids) for ids in self.position_token_ids)
        if tuple(trie.level_sizes) != sizes:
            raise ValueError(f"trie level sizes {trie.level_sizes} differ from the SID vocabulary's {sizes}")
        return trie

    # ---- search ----------------------------------------------------------------------------
    def search(self, prompts: Sequence[str], beam: int) -> list[list[SidHit]]:
        """Top-``beam`` valid SIDs (best first) for each prompt; all prompts decode in shared batches."""
        searches = self.start(prompts, beam)
        while not all(s.done for s in searches):
            self.step(searches)
        return [s.hits() for s in searches]

    def start(self, prompts: Sequence[str], beam: int) -> list[SearchState]:
        """New searches on the current trie (read once, here)."""
        if beam < 1:
            raise ValueError(f"beam must be >= 1, got {beam}")
        trie = self._trie
        encoded = encode_prompts(self.tokenizer, prompts, self.prompt_block)
        limit = self._max_model_len()
        for ids in encoded:
            if limit is not None and len(ids) + trie.depth > limit:
                raise ValueError(f"prompt of {len(ids)} tokens + a SID does not fit max_model_len {limit}")
        return [SearchState(list(ids), int(beam), trie, done=trie.depth == 0) for ids in encoded]

    def _max_model_len(self) -> int | None:
        return self._model_config("max_model_len")

    def _model_config(self, name: str) -> Any:
        config = getattr(getattr(self.llm, "llm_engine", None), "model_config", None)
        return getattr(config, name, None)

    def step(self, searches: Sequence[SearchState]) -> None:
        """Extend every unfinished search by one SID position (one ``generate`` call for all)."""
        step = self._requests(searches)
        outputs = self._generate(step) if step.prompts else []
        logprobs = self._scatter_logprobs(searches, step, outputs)
        for index, search in enumerate(searches):
            if search.done:
                continue
            mask = step.masks[index]
            _, search.codes, search.scores = select_beams(
                search.scores, search.codes, logprobs[index], mask, search.beam
            )
            search.done = len(search.codes) == 0 or search.depth == search.trie.depth

    def _requests(self, searches: Sequence[SearchState]) -> _Step:
        from vllm import SamplingParams

        from onesearch_ray.decoding.vllm_processor import sid_constraint_args

        step = _Step()
        for index, search in enumerate(searches):
            if search.done:
                step.masks.append(None)
                continue
            depth, mask = search.depth, search.trie.allowed_mask(search.codes)
            step.masks.append(mask)
            block = self.position_token_ids[depth]
            prefix_tokens = self._sid_tokens(search.codes)
            for row in range(len(search.codes)):
                allowed = block[np.flatnonzero(mask[row])].tolist()
                if not allowed:
                    continue
                prompt = {"prompt_token_ids": search.prompt_ids + prefix_tokens[row]}
                extra = sid_constraint_args(allowed) if self.constrain else None
                for start in range(0, len(allowed), self.max_scored_tokens):
                    step.prompts.append(prompt)
                    step.params.append(
                        SamplingParams(
                            max_tokens=1,
                            temperature=0.0,
                            logprob_token_ids=allowed[start : start + self.max_scored_tokens],
                            flat_logprobs=True,
                            detokenize=False,
                            extra_args=extra,
                            skip_clone=True,
                        )
                    )
                    step.owners.append((index, row))
        return step

    def _sid_tokens(self, codes: np.ndarray) -> list[list[int]]:
        if codes.shape[1] == 0:
            return [[] for _ in range(len(codes))]
        columns = [self.position_token_ids[d][codes[:, d]] for d in range(codes.shape[1])]
        return np.stack(columns, axis=1).tolist()

    def _generate(self, step: _Step) -> list[Any]:
        with self._lock:
            return self.llm.generate(step.prompts, step.params, use_tqdm=False)

    def _scatter_logprobs(self, searches: Sequence[SearchState], step: _Step, outputs: list[Any]) -> list:
        """Per search, a (beams, K) array of full-vocab logprobs of the allowed codes (-inf elsewhere)."""
        tables = [None if mask is None else np.full(mask.shape, -np.inf) for mask in step.masks]
        for (index, row), output in zip(step.owners, outputs, strict=True):
            flat = output.outputs[0].logprobs
            token_ids = np.asarray(flat.token_ids, dtype=np.int64)
            values = np.asarray(flat.logprobs, dtype=np.float64)
            code_of = self._code_of[searches[index].depth]
            inside = token_ids < len(code_of)
            codes = np.where(inside, code_of[np.minimum(token_ids, len(code_of) - 1)], -1)
            keep = codes >= 0
            tables[index][row, codes[keep]] = values[keep]
        return tables


class AsyncVLLMEngine:
    """``await search(prompts, beam)`` for asyncio servers; one worker thread owns the vLLM engine.

    Concurrent searches are advanced together: each worker step admits newly arrived searches and
    runs one ``generate`` for every search in flight, whatever its depth.
    """

    def __init__(self, engine: VLLMEngine) -> None:
        self.engine = engine
        self._inbox: list[tuple[list[SearchState], asyncio.AbstractEventLoop, asyncio.Future]] = []
        self._wake = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    @classmethod
    def from_model_dir(cls, *args: Any, **kwargs: Any) -> AsyncVLLMEngine:
        return cls(VLLMEngine.from_model_dir(*args, **kwargs))

    @property
    def trie(self) -> SidTrie:
        return self.engine.trie

    def set_trie(self, trie: SidTrie) -> None:
        self.engine.set_trie(trie)

    async def search(self, prompts: Sequence[str], beam: int) -> list[list[SidHit]]:
        searches = self.engine.start(prompts, beam)  # tokenizes and pins the trie version now
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        with self._wake:
            if self._closed:
                raise RuntimeError("AsyncVLLMEngine is closed")
            self._inbox.append((searches, loop, future))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="vllm-sid-search", daemon=True)
                self._thread.start()
            self._wake.notify()
        return await future

    def close(self) -> None:
        """Stop the worker thread (searches in flight fail with RuntimeError)."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        active: list[tuple[list[SearchState], asyncio.AbstractEventLoop, asyncio.Future]] = []
        while True:
            with self._wake:
                while not self._inbox and not active and not self._closed:
                    self._wake.wait()
                if self._closed:
                    break
                active += self._inbox
                self._inbox = []
            try:
                pending = [s for job in active for s in job[0] if not s.done]
                if pending:
                    self.engine.step(pending)
            except Exception as err:  # noqa: BLE001 - handed to every waiting caller
                for _, loop, future in active:
                    loop.call_soon_threadsafe(_set_exception, future, err)
                active = []
                continue
            still = []
            for job in active:
                if all(s.done for s in job[0]):
                    job[1].call_soon_threadsafe(_set_result, job[2], [s.hits() for s in job[0]])
                else:
                    still.append(job)
            active = still
        with self._wake:
            active, self._inbox = active + self._inbox, []
        for _, loop, future in active:
            loop.call_soon_threadsafe(_set_exception, future, RuntimeError("AsyncVLLMEngine closed"))


def _set_result(future: asyncio.Future, value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future, err: BaseException) -> None:
    if not future.done():
        future.set_exception(err)


def _tolerate_foreign_module_objects() -> None:
    """Work around a vLLM 0.32 start-up crash when numba (hence llvmlite) is imported first.

    On CPU, engine start-up registers kernel overrides by scanning every object of every module in
    ``sys.modules`` with ``vars(obj).get("kernel")``. llvmlite's ffi ``lib`` (imported by numba, which
    ``bm25s`` and so ``onesearch_ray.khqe`` import) answers ``__dict__`` with a function wrapper, and
    the scan dies with "'_lib_fn_wrapper' object has no attribute 'get'". Shadowing ``vars`` in that
    one vLLM module with a version that returns {} for such objects leaves everything else as is.
    """
    try:
        from vllm.triton_utils import dispatcher
    except ImportError:
        return
    dispatcher.vars = _tolerant_vars


def _tolerant_vars(obj: Any) -> Any:
    namespace = vars(obj)
    return namespace if hasattr(namespace, "get") else {}


def _inverse(token_ids: np.ndarray) -> np.ndarray:
    """Dense token id -> code table (-1 for ids of other positions)."""
    table = np.full(int(token_ids.max()) + 1 if len(token_ids) else 0, -1, dtype=np.int64)
    table[token_ids] = np.arange(len(token_ids))
    return table
