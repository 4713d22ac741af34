"""Trie-constrained SID beam search on vLLM (pinned 0.32, V1 engine): the serving ``DecodingEngine``.

How a search runs. The beam search happens INSIDE vLLM's batch (``onesearch_ray.decoding.inflight``,
``vllm_processor``): every live beam is one request; at each engine step a logits processor hands a
search's rows to the search, which selects the next beams exactly as ``TransformersEngine`` does
(full-vocabulary log-softmax of the raw logits, trie-masked, not renormalised, same tie-break) and
forces each request's next token. A beam that keeps a child decodes one more token in its own
request; only forks (a beam's second, third... selected child) become new requests, added by this
driver between steps, their prompt blocks shared through prefix caching. So a query at beam B and
SID length P costs about P engine steps, one token per beam per step, and requests only where
beams fork: vLLM's ``LLM.beam_search`` (which ignores logits processors) or a request per beam per
position cost several times more (``docs/benchmarks.md``). 0 invalid SIDs by construction.

The driver owns the loop: ``LLMEngine.add_request`` for new searches' prompts and forks, then
``LLMEngine.step``. Every beam of a search must be scheduled in the same step, so searches are
admitted only while their beams fit the engine's rows (``max_num_seqs``), token budget and KV
blocks; one that can never fit raises ``SearchLimitError`` up front, and one whose beams vLLM still
splits fails with an error rather than a wrong answer. The searches live in this process, so the
engine core must too (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, set by
:meth:`VLLMEngine.from_model_dir`, CPU and GPU).

Trie swaps. ``set_trie`` swaps one reference; a search reads it once when it starts and keeps that
version to the end.

Async use (Ray Serve). ``AsyncVLLMEngine`` wraps a ``VLLMEngine``: ``await engine.search(...)`` hands
the prompts to ONE background thread that owns the ``LLM`` and steps the engine for every search in
flight, so concurrent callers share engine steps. Why not ``vllm.v1.engine.async_llm.AsyncLLM``: in
0.32 it always runs the engine core in a separate process, where the searches could not be seen
(and which on these 2-core CPU boxes means ~27 s start-up instead of ~5 s, stack notes). The event
loop is never blocked.

Prompts are left-padded to a multiple of the model's ``prompt_block`` (32 = vLLM's CPU KV block;
the model is trained on the same padding, ``prompts.encode_prompts``), so a fork's prompt is all
cached full blocks plus its few SID tokens.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onesearch_ray.decoding.beam import SearchLimitError, SidHit
from onesearch_ray.decoding.inflight import LIVE_SEARCHES, SearchState
from onesearch_ray.decoding.trie import SidTrie
from onesearch_ray.prompts.tokenizer import encode_prompts, prompt_block

CPU_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
STALL_STEPS = 100  # engine steps a search may wait for its beams to be scheduled before it fails


def default_vllm_kwargs(cuda: bool, compile: bool | None = None) -> dict[str, Any]:
    """``vllm.LLM`` arguments, in-process. ``compile`` None: vLLM's default on GPU, eager on CPU.

    On this 2-core CPU torch.compile makes a beam-50 search ~15% faster for 10-30 s more start-up
    (``docs/benchmarks.md``), so it is opt-in there.
    """
    kwargs: dict[str, Any] = {
        "dtype": "float32",  # the reference engine scores in float32; pass dtype= to trade exactness
        "max_model_len": 512,
        "enable_prefix_caching": True,
        "async_scheduling": False,  # forks must join the very next step
        # prompts arrive as token ids, outputs are never detokenized (~2% faster at beam 50); vLLM's
        # chat-template warm-up then fails harmlessly, its log record dropped by _quiet_chat_template_warmup
        "skip_tokenizer_init": True,
        "distributed_executor_backend": "uni",
        "max_num_seqs": 1024,
        "max_num_batched_tokens": 16384,
    }
    if not cuda:
        kwargs["block_size"] = 32  # CPU default 128 would leave short prompts uncached
    if compile is not None or not cuda:
        kwargs["enforce_eager"] = not compile
    return kwargs


class VLLMEngine:
    """Exact trie-constrained beam search over SIDs on an in-process ``vllm.LLM``.

    One live engine per process: vLLM keeps its parallel state per process, and creating a second
    ``LLM`` left the first failing its next step ("pipeline model parallel group is not
    initialized"). To change models, drop the old engine first (``SearchService.swap_model``).
    """

    def __init__(
        self, llm: Any, tokenizer: Any, position_token_ids: Sequence[np.ndarray], trie: SidTrie
    ) -> None:
        engine = llm.llm_engine
        if type(engine.engine_core).__name__ != "InprocClient":
            raise ValueError(
                "VLLMEngine needs vLLM's engine core in this process: create the LLM with "
                "VLLM_ENABLE_V1_MULTIPROCESSING=0 (VLLMEngine.from_model_dir does)"
            )
        self.llm = llm
        self.tokenizer = tokenizer
        self.prompt_block = prompt_block(engine.model_config.hf_config)  # as the model was trained
        self.position_token_ids = [np.asarray(ids, dtype=np.int64) for ids in position_token_ids]
        stop = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.pad_token_id
        if stop is None:
            raise ValueError("the tokenizer has neither an eos nor a pad token to end dropped beams with")
        self.stop_token_id = int(stop)
        scheduler, cache = engine.vllm_config.scheduler_config, engine.vllm_config.cache_config
        self.block_size = cache.block_size
        # what the engine can hold in one step: batch rows, tokens, KV cache blocks
        self.capacity = {
            "rows": scheduler.max_num_seqs,
            "tokens": scheduler.max_num_batched_tokens,
            "kv_blocks": cache.num_gpu_blocks or sys.maxsize,  # None until vLLM has sized its cache
        }
        self._lock = threading.Lock()  # one driver at a time (the LLM is not thread-safe)
        self._running: dict[int, SearchState] = {}
        self._progress: dict[int, tuple[int, int]] = {}  # search id -> (depth, steps without progress)
        self._trie = self._checked(trie)

    @classmethod
    def from_model_dir(
        cls,
        model_dir: str | Path,
        position_token_ids: Sequence[np.ndarray] | None,
        trie: SidTrie,
        *,
        warmup: bool = True,
        compile: bool | None = None,
        **vllm_kwargs: Any,
    ) -> VLLMEngine:
        """Load a ``save_model`` directory into vLLM; ``position_token_ids=None`` reads its SID vocabulary.

        Sets ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` (the searches must share the engine's process) and,
        on CPU, ``VLLM_CPU_KVCACHE_SPACE=1`` and ``HF_HUB_OFFLINE=1`` unless already set (in this
        process's environment). ``compile`` and ``vllm_kwargs``: see :func:`default_vllm_kwargs` (the
        kwargs override it). ``warmup`` runs one small search now (the first one pays a few seconds of
        one-time set-up). Call it under an ``if __name__ == "__main__":`` guard in scripts.
        """
        cuda = prepare_in_process_vllm()
        from vllm import LLM

        from onesearch_ray.decoding.vllm_processor import SidBeamSearchLogitsProcessor
        from onesearch_ray.model import load_tokenizer

        kwargs = {**default_vllm_kwargs(cuda, compile), **vllm_kwargs}
        kwargs["logits_processors"] = [*kwargs.get("logits_processors", []), SidBeamSearchLogitsProcessor]
        if position_token_ids is None:
            from onesearch_ray.prompts import SidVocabulary

            position_token_ids = SidVocabulary.load(model_dir).position_token_ids
        tokenizer = load_tokenizer(model_dir)
        engine = cls(LLM(model=str(model_dir), **kwargs), tokenizer, position_token_ids, trie)
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
        """Top-``beam`` valid SIDs (best first) for each prompt; all prompts decode in shared steps."""
        searches = self.start(prompts, beam)
        try:
            while not all(s.done for s in searches):
                self.step(searches)
        finally:
            self.cancel(searches)
        return [s.hits() for s in searches]

    def start(self, prompts: Sequence[str], beam: int) -> list[SearchState]:
        """New searches on the current trie (read once, here); nothing runs until :meth:`step`."""
        if beam < 1:
            raise SearchLimitError(f"beam must be >= 1, got {beam}")
        trie = self._trie
        limit = self.llm.llm_engine.model_config.max_model_len
        searches = []
        for ids in encode_prompts(self.tokenizer, prompts, self.prompt_block):
            if len(ids) + trie.depth > limit:
                raise SearchLimitError(f"prompt of {len(ids)} tokens + a SID exceeds max_model_len {limit}")
            search = SearchState(list(ids), int(beam), trie, self.position_token_ids)
            over = {k: v for k, v in self._needs(search).items() if v > self.capacity[k]}
            if over:
                raise SearchLimitError(
                    f"beam {beam} needs more than this engine holds: {over} (capacity {self.capacity}); "
                    "lower the beam or give vLLM more max_num_seqs / max_num_batched_tokens / KV cache"
                )
            searches.append(search)
        return searches

    def step(self, searches: Sequence[SearchState]) -> None:
        """Admit what fits, run one engine step, queue the forks it made; marks finished searches done."""
        with self._lock:
            self._admit([s for s in searches if not s.done and s.search_id not in self._running])
            for search in self._running.values():
                self._submit(search)
            self.llm.llm_engine.step()
            for search in list(self._running.values()):
                self._watch(search)
                if search.error:  # requests it still has queued would only be stopped later
                    self.llm.llm_engine.abort_request(self._request_ids(search))
                if search.done:
                    self._finish(search.search_id)

    def cancel(self, searches: Sequence[SearchState]) -> None:
        """Forget these searches (finished or not); their requests in flight are aborted."""
        with self._lock:
            for search in searches:
                if search.search_id in self._running:
                    if not search.done:
                        search.fail("search cancelled")
                        self.llm.llm_engine.abort_request(self._request_ids(search))
                    self._finish(search.search_id)

    def _admit(self, waiting: list[SearchState]) -> None:
        """Start waiting searches, first come first served, while every beam of each fits one step."""
        if not waiting:
            return
        used = dict.fromkeys(self.capacity, 0)
        for search in self._running.values():
            used = {k: used[k] + v for k, v in self._needs(search).items()}
        for search in waiting:
            total = {k: used[k] + v for k, v in self._needs(search).items()}
            if self._running and any(total[k] > self.capacity[k] for k in total):
                break  # later searches wait too
            used = total
            self._running[search.search_id] = search
            self._progress[search.search_id] = (-1, 0)
            LIVE_SEARCHES[search.search_id] = search

    def _needs(self, search: SearchState) -> dict[str, int]:
        """Most a search holds at once: a row per beam; in one step its prompt or every fork's uncached
        tail (tokens past the prompt's last full block, plus the SID); the prompt's KV blocks plus each
        beam's own."""
        prompt, size = len(search.prompt_ids), self.block_size
        tail = prompt % size + search.trie.depth
        return {
            "rows": search.beam,
            "tokens": max(prompt, search.beam * tail),
            "kv_blocks": -(-prompt // size) + search.beam * -(-tail // size),
        }

    def _submit(self, search: SearchState) -> None:
        """Add the search's new requests; they share one ``SamplingParams`` (all at the same depth)."""
        if not search.pending:
            return
        from vllm import SamplingParams
        from vllm.inputs.engine import tokens_input
        from vllm.sampling_params import RequestOutputKind

        from onesearch_ray.decoding.vllm_processor import beam_args

        base = len(search.prompt_ids)
        params = SamplingParams(
            max_tokens=search.trie.depth - search.depth,
            temperature=0.0,
            stop_token_ids=[self.stop_token_id],
            detokenize=False,
            output_kind=RequestOutputKind.FINAL_ONLY,
            extra_args=beam_args(search.search_id, base, self.stop_token_id),
            skip_clone=True,
        )
        add = self.llm.llm_engine.add_request
        for token_ids in search.pending:
            search.requests += 1
            add(f"sid-{search.search_id}-{search.requests}", tokens_input(token_ids), params)
        search.pending = []

    def _watch(self, search: SearchState) -> None:
        """Fail a search whose beams the engine keeps from running (it would otherwise wait forever)."""
        depth, waited = self._progress[search.search_id]
        waited = waited + 1 if search.depth == depth and not search.done else 0
        self._progress[search.search_id] = (search.depth, waited)
        if waited > STALL_STEPS:
            search.fail(f"search {search.search_id}: vLLM did not schedule its beams for {STALL_STEPS} steps")

    def _finish(self, search_id: int) -> None:
        self._running.pop(search_id, None)
        self._progress.pop(search_id, None)
        LIVE_SEARCHES.pop(search_id, None)

    def _request_ids(self, search: SearchState) -> list[str]:
        return [f"sid-{search.search_id}-{n}" for n in range(1, search.requests + 1)]


@dataclass
class _Job:
    """One awaited ``search`` call: its searches and where to deliver the hits."""

    searches: list[SearchState]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future

    @property
    def done(self) -> bool:
        return all(s.done for s in self.searches)

    def deliver(self) -> None:
        try:
            result = [s.hits() for s in self.searches]
        except RuntimeError as err:  # a search failed
            self.fail(err)
        else:
            self.loop.call_soon_threadsafe(_set_result, self.future, result)

    def fail(self, err: BaseException) -> None:
        self.loop.call_soon_threadsafe(_set_exception, self.future, err)


class AsyncVLLMEngine:
    """``await search(prompts, beam)`` for asyncio servers; one worker thread owns the vLLM engine.

    Concurrent searches share engine steps: each worker step admits newly arrived searches and
    advances every search in flight, whatever its depth.
    """

    def __init__(self, engine: VLLMEngine) -> None:
        self.engine = engine
        self._inbox: list[_Job] = []
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
        job = _Job(searches, loop, loop.create_future())
        with self._wake:
            if self._closed:
                raise RuntimeError("AsyncVLLMEngine is closed")
            self._inbox.append(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="vllm-sid-search", daemon=True)
                self._thread.start()
            self._wake.notify()
        return await job.future

    def close(self) -> None:
        """Stop the worker thread (searches in flight fail with RuntimeError)."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        active: list[_Job] = []
        while True:
            with self._wake:
                while not self._inbox and not active and not self._closed:
                    self._wake.wait()
                if self._closed:
                    break
                active += self._inbox
                self._inbox = []
            try:
                self.engine.step([s for job in active for s in job.searches])
            except Exception as err:  # noqa: BLE001 - handed to every waiting caller
                self._drop(active, err)
                active = []
                continue
            for job in active:
                if job.done:
                    job.deliver()
            active = [job for job in active if not job.done]
        with self._wake:
            active, self._inbox = active + self._inbox, []
        self._drop(active, RuntimeError("AsyncVLLMEngine closed"))

    def _drop(self, jobs: list[_Job], err: BaseException) -> None:
        for job in jobs:
            self.engine.cancel(job.searches)
            job.fail(err)


def _set_result(future: asyncio.Future, value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future, err: BaseException) -> None:
    if not future.done():
        future.set_exception(err)


def prepare_in_process_vllm() -> bool:
    """Set this process up for an in-process vLLM engine; returns whether CUDA is available.

    Sets ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` (logits processors then run in this process, where the
    searches they serve live) and, on CPU, ``VLLM_CPU_KVCACHE_SPACE=1`` and ``HF_HUB_OFFLINE=1`` unless
    already set; applies the two start-up workarounds below.
    """
    import torch

    cuda = torch.cuda.is_available()
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    if not cuda:
        for name, value in CPU_ENV.items():
            os.environ.setdefault(name, value)
    _tolerate_foreign_module_objects()
    _quiet_chat_template_warmup()
    return cuda


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


class _NoTokenizerWarmupFilter(logging.Filter):
    """Drops vLLM's "Chat template warmup failed" warning when it failed for want of a tokenizer."""

    def filter(self, record: logging.LogRecord) -> bool:
        err = record.exc_info[1] if record.exc_info else None
        return not (
            record.getMessage() == "Chat template warmup failed"
            and isinstance(err, ValueError)
            and "skip_tokenizer_init" in str(err)
        )


def _quiet_chat_template_warmup() -> None:
    """Silence one known-harmless vLLM 0.32 start-up traceback, and nothing else.

    ``LLM`` warms its renderer up by rendering a chat template, which needs the tokenizer that
    ``skip_tokenizer_init`` leaves out; the ValueError is logged with its traceback as a warning,
    though this engine never renders chat (prompts arrive as token ids). The filter sits on that one
    vLLM logger and drops only that record.
    """
    logger = logging.getLogger("vllm.renderers.base")
    if not any(isinstance(f, _NoTokenizerWarmupFilter) for f in logger.filters):
        logger.addFilter(_NoTokenizerWarmupFilter())


def _tolerant_vars(obj: Any) -> Any:
    namespace = vars(obj)
    return namespace if hasattr(namespace, "get") else {}
