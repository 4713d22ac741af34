"""The decoder-only generator: a Qwen3 causal LM from scratch, or any local HF checkpoint (vLLM serves both).

``build_model`` makes one from scratch (vocab = the SID-aware tokenizer) or starts from a LOCAL HF
checkpoint (architecture kept, e.g. the Llama of ``onesearch backbone``) and grows its embeddings for
the new tokens (new rows = the mean embedding; ``backbone.extend_pretrained`` refines the SID rows).
``save_model`` writes one self-contained HF directory (safetensors + config + generation config +
tokenizer, plus an ``onesearch_model.json`` manifest with checksums) atomically; vLLM and
``transformers`` load it as is.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from onesearch_ray.io import atomic_dir, file_sha256, read_json, write_json

MANIFEST = "onesearch_model.json"
FORMAT_NAME = "onesearch-model"
FORMAT_VERSION = 1
REQUIRED_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json")
# Head sizes that vLLM's CPU attention supports (GPU backends accept these too).
VLLM_HEAD_DIMS = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256)

PRESETS: dict[str, dict[str, int]] = {
    # tiny: tests and the CPU quickstart. head_dim 32 (not 64 / 4 = 16): vLLM CPU attention needs >= 32.
    "tiny": dict(
        hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=32, intermediate_size=128
    ),
    # small: trains on a 2-core CPU.
    "small": dict(
        hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=64, intermediate_size=768
    ),
    "base": dict(
        hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=4, head_dim=64, intermediate_size=1536
    ),
    # large: GPUs (about the width of Qwen3-0.6B, fewer layers).
    "large": dict(
        hidden_size=1024, num_layers=16, num_heads=16, num_kv_heads=8, head_dim=64, intermediate_size=3072
    ),
}


@dataclass
class ModelConfig:
    """A preset ``size`` plus optional overrides; ``init_from`` = a local HF checkpoint to start from.

    With ``init_from`` the checkpoint's own dimensions apply; ``num_layers``, when set, keeps only its
    first ``num_layers`` decoder layers (a cheaper model that keeps the embeddings and the lower
    layers' knowledge), and ``sid_embedding_init`` chooses how the SID tokens' rows start:
    ``title_mean`` (mean title embedding of the items under the code) or ``vocab_mean``.
    """

    size: str = "small"
    hidden_size: int | None = None
    num_layers: int | None = None
    num_heads: int | None = None
    num_kv_heads: int | None = None
    head_dim: int | None = None
    intermediate_size: int | None = None
    max_position_embeddings: int = 512
    tie_word_embeddings: bool = True
    rope_theta: float = 10000.0
    init_from: str | None = None
    sid_embedding_init: str = "title_mean"
    # Prompts are left-padded to a multiple of this many tokens in training and serving (vLLM's KV
    # block on CPU: aligned prompts are cached whole); saved as ``prompt_block`` in config.json.
    prompt_block: int = 32
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # passed to Qwen3Config as is

    def resolved(self) -> dict[str, int]:
        """The preset with overrides applied, validated."""
        if self.size not in PRESETS:
            raise ValueError(f"model size {self.size!r}: expected one of {sorted(PRESETS)}")
        dims = dict(PRESETS[self.size])
        for name in dims:
            value = getattr(self, name)
            if value is not None:
                dims[name] = int(value)
        if any(v <= 0 for v in dims.values()):
            raise ValueError(f"model dimensions must be positive: {dims}")
        if dims["num_heads"] % dims["num_kv_heads"]:
            raise ValueError(
                f"num_heads {dims['num_heads']} not a multiple of num_kv_heads {dims['num_kv_heads']}"
            )
        if dims["head_dim"] not in VLLM_HEAD_DIMS:
            raise ValueError(f"head_dim {dims['head_dim']}: vLLM needs one of {VLLM_HEAD_DIMS}")
        return dims

    def qwen3_config(self, tokenizer: PreTrainedTokenizerBase) -> Qwen3Config:
        dims = self.resolved()
        return Qwen3Config(
            vocab_size=len(tokenizer),
            hidden_size=dims["hidden_size"],
            intermediate_size=dims["intermediate_size"],
            num_hidden_layers=dims["num_layers"],
            num_attention_heads=dims["num_heads"],
            num_key_value_heads=dims["num_kv_heads"],
            head_dim=dims["head_dim"],
            max_position_embeddings=self.max_position_embeddings,
            tie_word_embeddings=self.tie_word_embeddings,
            rope_parameters={"rope_type": "default", "rope_theta": float(self.rope_theta)},
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **self.extra,
        )


def build_model(config: ModelConfig, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """A float32 causal LM for ``tokenizer``: Qwen3 from scratch, or ``config.init_from`` (local)."""
    if config.init_from:
        model = _load_local(Path(config.init_from), torch.float32)
        if config.num_layers:
            _keep_first_layers(model, config.num_layers)
        resize_embeddings(model, len(tokenizer))
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            model = Qwen3ForCausalLM(config.qwen3_config(tokenizer)).to(torch.float32)
    _set_special_ids(model, tokenizer)
    model.config.prompt_block = config.prompt_block
    return model


def _keep_first_layers(model: PreTrainedModel, n_layers: int) -> None:
    """Drop every decoder layer above the first ``n_layers`` (config updated: vLLM builds as many)."""
    layers = model.get_decoder().layers
    if not 0 < n_layers <= len(layers):
        raise ValueError(f"num_layers {n_layers}: the checkpoint has {len(layers)} layers")
    model.get_decoder().layers = layers[:n_layers]
    model.config.num_hidden_layers = n_layers
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:n_layers]


def resize_embeddings(model: PreTrainedModel, n_tokens: int) -> None:
    """Grow the (input and, if untied, output) embeddings to ``n_tokens`` rows; new rows = old mean.

    Never shrinks: a checkpoint whose matrix is already larger (padded vocab) keeps its size.
    """
    old = model.get_input_embeddings().weight.shape[0]
    if n_tokens <= old:
        return
    model.resize_token_embeddings(n_tokens, mean_resizing=False)
    with torch.no_grad():
        matrices = [model.get_input_embeddings().weight]
        output = model.get_output_embeddings()
        if output is not None and output.weight.data_ptr() != matrices[0].data_ptr():
            matrices.append(output.weight)
        for weight in matrices:
            weight[old:] = weight[:old].mean(dim=0, keepdim=True)
        bias = getattr(output, "bias", None)
        if bias is not None:
            bias[old:] = bias[:old].mean()


def _set_special_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    ids = {
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    for name, value in ids.items():
        setattr(model.config, name, value)
    model.generation_config = GenerationConfig(**ids)


def save_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    directory: str | Path,
    *,
    sid_vocabulary: Any | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write model + tokenizer (+ ``sid_vocabulary.json``) as ONE HF directory, atomically."""
    directory = Path(directory)
    with atomic_dir(directory) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if sid_vocabulary is not None:
            sid_vocabulary.save(tmp)
        files = sorted(p.name for p in tmp.iterdir() if p.is_file())
        write_json(
            tmp / MANIFEST,
            {
                "format": FORMAT_NAME,
                "version": FORMAT_VERSION,
                "architecture": type(model).__name__,
                "n_parameters": sum(p.numel() for p in model.parameters()),
                "vocab_size": len(tokenizer),
                "metadata": metadata or {},
                "sha256": {name: file_sha256(tmp / name) for name in files},
            },
        )
    return directory


def load_model(
    directory: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model in eval mode, tokenizer) from a :func:`save_model` directory (or any local HF one).

    Raises FileNotFoundError / ValueError naming the missing or corrupt file.
    """
    directory = Path(directory)
    check_model_dir(directory)
    model = _load_local(directory, dtype).to(device)
    model.eval()
    return model, load_tokenizer(directory)


def load_tokenizer(directory: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer of a :func:`save_model` directory, without loading the weights."""
    directory = Path(directory)
    try:
        return AutoTokenizer.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError, json.JSONDecodeError) as err:
        raise ValueError(f"{directory / 'tokenizer.json'}: cannot load the tokenizer ({err})") from err


def check_model_dir(directory: Path) -> None:
    """Every required file present; checksums match the manifest when there is one."""
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such model directory")
    weights = [directory / "model.safetensors", directory / "model.safetensors.index.json"]
    for path in [directory / name for name in REQUIRED_FILES]:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing (not a saved model directory?)")
    if not any(p.is_file() for p in weights):
        raise FileNotFoundError(f"{weights[0]}: missing (no safetensors weights)")
    manifest = directory / MANIFEST
    if not manifest.is_file():
        return
    for name, digest in (read_json(manifest).get("sha256") or {}).items():
        path = directory / name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing (listed in {MANIFEST})")
        if file_sha256(path) != digest:
            raise ValueError(f"{path}: corrupt (checksum differs from {MANIFEST})")


def _load_local(directory: Path, dtype: torch.dtype) -> PreTrainedModel:
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such local checkpoint (init_from never downloads)")
    try:
        return AutoModelForCausalLM.from_pretrained(directory, local_files_only=True, dtype=dtype)
    except (OSError, ValueError, RuntimeError, json.JSONDecodeError) as err:
        raise ValueError(f"{directory}: cannot load the checkpoint ({type(err).__name__}: {err})") from err


def model_summary(config: ModelConfig) -> dict[str, Any]:
    """The config with the resolved preset, for run metadata."""
    return {**asdict(config), "resolved": config.resolved()}
