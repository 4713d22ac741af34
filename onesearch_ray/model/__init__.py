"""The decoder-only generator (Qwen3 architecture, served by vLLM): build, save, load."""

from onesearch_ray.model.decoder import (
    PRESETS,
    VLLM_HEAD_DIMS,
    ModelConfig,
    build_model,
    check_model_dir,
    load_model,
    load_tokenizer,
    model_summary,
    resize_embeddings,
    save_model,
)

__all__ = [
    "PRESETS",
    "VLLM_HEAD_DIMS",
    "ModelConfig",
    "build_model",
    "check_model_dir",
    "load_model",
    "load_tokenizer",
    "model_summary",
    "resize_embeddings",
    "save_model",
]
