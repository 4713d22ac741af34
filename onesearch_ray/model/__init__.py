"""The decoder-only generator (Qwen3 from scratch, or a pretrained Llama; vLLM serves both)."""

from onesearch_ray.model.backbone import (
    DEFAULT_BACKBONE_DIR,
    convert_gguf,
    extend_pretrained,
    packaged_gguf,
    set_title_mean_rows,
)
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
    "DEFAULT_BACKBONE_DIR",
    "convert_gguf",
    "extend_pretrained",
    "packaged_gguf",
    "set_title_mean_rows",
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
