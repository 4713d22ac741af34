"""The generator's decoder on vLLM: prompt embeddings in, the heads' decoder parts out.

Every head of ``CodeItemGenerator`` is a query part plus a linear map of the decoder output
(``model.code_head``, ``model.item_correction``). Those linear maps become the rows of an LM head,
so the decoder is served as a plain ``Qwen3ForCausalLM`` whose "vocabulary" is:

    [level 0 codes | level 1 codes | ... | one row per dimension of the item correction]

vLLM runs it with ``enable_prompt_embeds`` (the prompt views and code-prefix embeddings come from
the model, in this process) and a logits processor hands each request's raw logits row back to the
driver; the query parts, the trie, the planning and the item step are ``generator.search``'s, the
same as for the torch engine. A request is one sequence and one engine step (``max_tokens=1``): the
first code level for the whole batch in one step, then one step per deeper level for the kept
prefixes.

The engine core runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) so that the processor
and the driver share memory; one driver at a time (a lock).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from vllm import LLM, SamplingParams
from vllm.inputs.engine import embeds_input
from vllm.sampling_params import RequestOutputKind
from vllm.v1.sample.logits_processor import LogitsProcessor, MoveDirectionality

from onesearch_ray.generator.model import CodeItemGenerator

CPU_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
CAPTURE = "onesearch_capture"
CAPTURED: dict[int, torch.Tensor] = {}  # capture key -> the request's raw logits row (this process)


def vocabulary_layout(model: CodeItemGenerator) -> tuple[list[int], int]:
    """Where each code level starts in the exported vocabulary, and where the item correction starts."""
    starts = list(itertools.accumulate(model.codes.level_sizes, initial=0))
    return starts[:-1], starts[-1]


def export_decoder(model: CodeItemGenerator, path: str | Path) -> Path:
    """Write the decoder and its heads as a Hugging Face ``Qwen3ForCausalLM`` directory (config + weights)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = model.decoder.config.to_dict()
    _, correction_start = vocabulary_layout(model)
    width = model.config.decoder.hidden_size
    with torch.no_grad():
        head = torch.cat(
            [model.code_head(level) for level in range(model.codes.levels)] + [model.item_correction.weight]
        )
        weights = {f"model.{k}": v.contiguous() for k, v in model.decoder.state_dict().items()}
        # prompts arrive as embeddings, never as token ids: the token table is never read
        weights["model.embed_tokens.weight"] = torch.zeros(len(head), width)
        weights["lm_head.weight"] = head.contiguous()
    config.update(
        architectures=["Qwen3ForCausalLM"],
        vocab_size=len(head),
        tie_word_embeddings=False,
        torch_dtype="float32",
        onesearch_correction_start=correction_start,
    )
    (path / "config.json").write_text(json.dumps(config, indent=1))
    save_file(weights, str(path / "model.safetensors"))
    return path


def vllm_kwargs(max_model_len: int) -> dict[str, Any]:
    """``vllm.LLM`` arguments for this decoder, in-process, exact float32 (as the torch engine)."""
    return {
        "dtype": "float32",
        "max_model_len": max_model_len,
        "enable_prompt_embeds": True,
        "skip_tokenizer_init": True,
        "enable_prefix_caching": False,  # prompts are a few embeddings; nothing worth caching
        "async_scheduling": False,
        "distributed_executor_backend": "uni",
        "enforce_eager": True,  # torch.compile start-up costs more than it saves at this size
        "max_num_seqs": 1024,
        "max_num_batched_tokens": 16384,
        "block_size": 32,
    }


class VLLMDecoder:
    """A ``generator.search.DecodingEngine`` on an in-process ``vllm.LLM`` (``search(decoder=...)``)."""

    def __init__(self, llm: Any, model: CodeItemGenerator) -> None:
        engine = llm.llm_engine
        if type(engine.engine_core).__name__ != "InprocClient":
            raise ValueError("VLLMDecoder needs vLLM's engine core in this process (VLLMDecoder.start does)")
        self.llm = llm
        self.level_starts, self.correction_start = vocabulary_layout(model)
        self.level_sizes = model.codes.level_sizes
        self._keys = itertools.count()
        self._lock = threading.Lock()

    @classmethod
    def start(cls, model: CodeItemGenerator, **overrides: Any) -> VLLMDecoder:
        """Export ``model``'s decoder to a temporary directory and load it into vLLM (~5 s on CPU)."""
        prepare_in_process_vllm()  # vLLM reads its environment when the engine starts
        kwargs = {**vllm_kwargs(model.decoder.config.max_position_embeddings), **overrides}
        kwargs["logits_processors"] = [*kwargs.get("logits_processors", []), CaptureLogitsProcessor]
        folder = Path(tempfile.mkdtemp(prefix="onesearch-decoder-"))
        try:
            llm = LLM(model=str(export_decoder(model, folder)), **kwargs)
        finally:
            shutil.rmtree(folder, ignore_errors=True)  # vLLM has the weights in memory now
        return cls(llm, model)

    def last_outputs(self, sequences: torch.Tensor, level: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.logits(sequences)
        start = self.level_starts[level]
        return rows[:, start : start + self.level_sizes[level]], rows[:, self.correction_start :]

    def logits(self, sequences: torch.Tensor) -> torch.Tensor:
        """(n, vocabulary) raw logits at the last position of each input sequence, one engine run."""
        engine = self.llm.llm_engine
        with self._lock:
            keys = [next(self._keys) for _ in range(len(sequences))]
            try:
                for key, sequence in zip(keys, sequences.detach().float().contiguous(), strict=True):
                    params = SamplingParams(
                        max_tokens=1,
                        temperature=0.0,
                        detokenize=False,
                        output_kind=RequestOutputKind.FINAL_ONLY,
                        extra_args={CAPTURE: key},
                    )
                    engine.add_request(f"decoder-{key}", embeds_input(sequence), params)
                while engine.has_unfinished_requests():
                    engine.step()
                return torch.stack([CAPTURED.pop(key) for key in keys])
            finally:
                for key in keys:
                    CAPTURED.pop(key, None)


class CaptureLogitsProcessor(LogitsProcessor):
    """Copies the raw logits row of every request that carries ``extra_args[CAPTURE]`` to ``CAPTURED``.

    Rows are keyed by the engine's batch index, kept up to date from each step's batch changes
    (removed, added, then moved: a swap or a one-way move). A request prefilled in chunks is copied
    at each of its steps; the last copy, made at its final prompt position, is the one read.
    """

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        self.keys: dict[int, int] = {}

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        key = (sampling_params.extra_args or {}).get(CAPTURE)
        if key is not None and not isinstance(key, int):
            raise ValueError(f"extra_args[{CAPTURE!r}] must be an integer key, got {key!r}")

    def is_argmax_invariant(self) -> bool:
        return False  # vLLM skips argmax-invariant processors for greedy requests: this one must run

    def update_state(self, batch_update: Any) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self.keys.pop(index, None)
        for index, params, _prompt, _output in batch_update.added:
            key = (params.extra_args or {}).get(CAPTURE)
            if key is None:
                self.keys.pop(index, None)
            else:
                self.keys[index] = key
        for first, second, way in batch_update.moved:
            a, b = self.keys.pop(first, None), self.keys.pop(second, None)
            if a is not None:
                self.keys[second] = a
            if way == MoveDirectionality.SWAP and b is not None:
                self.keys[first] = b

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        for index, key in self.keys.items():
            CAPTURED[key] = logits[index].clone()
        return logits


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
