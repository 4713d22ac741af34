"""The Qwen3 generator: presets, build, forward, save/load round trip, init_from + embedding resize."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from onesearch_ray.model import PRESETS, ModelConfig, build_model, load_model, save_model
from onesearch_ray.prompts import SidVocabulary, extend_tokenizer, train_text_tokenizer

TEXTS = ["Voltmaster 20V cordless drill", "brass pendant light", "oak coffee table", "red drill"] * 20
PROMPT = "<|search|><|query|> red drill <|answer|><a_1><b_2>"


@pytest.fixture(scope="module")
def tok(toy_sids):
    return train_text_tokenizer(TEXTS, toy_sids, vocab_size=400)


@pytest.fixture(scope="module")
def tiny(tok):
    return build_model(ModelConfig(size="tiny", seed=1), tok)


def _ids(tok) -> torch.Tensor:
    return torch.tensor([tok.encode(PROMPT)])


def test_presets_resolve_and_validate():
    assert ModelConfig(size="tiny").resolved()["hidden_size"] == 64
    assert ModelConfig(size="small", num_layers=6).resolved()["num_layers"] == 6
    assert [PRESETS[s]["hidden_size"] for s in ("tiny", "small", "base", "large")] == [64, 256, 512, 1024]
    with pytest.raises(ValueError, match="size"):
        ModelConfig(size="huge").resolved()
    with pytest.raises(ValueError, match="head_dim"):
        ModelConfig(size="tiny", head_dim=16).resolved()
    with pytest.raises(ValueError, match="num_kv_heads"):
        ModelConfig(size="tiny", num_kv_heads=3).resolved()


def test_build_tiny_and_forward(tiny, tok):
    assert tiny.config.vocab_size == len(tok) and tiny.dtype == torch.float32
    assert (tiny.config.pad_token_id, tiny.config.eos_token_id) == (tok.pad_token_id, tok.eos_token_id)
    assert tiny.get_input_embeddings().weight is tiny.get_output_embeddings().weight  # tied
    logits = tiny(_ids(tok)).logits
    assert logits.shape == (1, _ids(tok).shape[1], len(tok)) and torch.isfinite(logits).all()
    again = build_model(ModelConfig(size="tiny", seed=1), tok)
    assert torch.equal(again.get_input_embeddings().weight, tiny.get_input_embeddings().weight)  # seeded


def test_save_load_equal_logits(tiny, tok, toy_sids, tmp_path):
    vocabulary = SidVocabulary.from_tokenizers(tok, toy_sids)
    directory = save_model(tiny, tok, tmp_path / "model", sid_vocabulary=vocabulary)
    names = {p.name for p in directory.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json"} <= names
    assert {"tokenizer_config.json", "sid_vocabulary.json", "onesearch_model.json"} <= names
    config = json.loads((directory / "config.json").read_text())
    assert config["architectures"] == ["Qwen3ForCausalLM"] and config["eos_token_id"] == tok.eos_token_id
    model, tokenizer = load_model(directory)
    assert tokenizer.encode(PROMPT) == tok.encode(PROMPT) and not model.training
    with torch.no_grad():
        assert torch.allclose(model(_ids(tok)).logits, tiny(_ids(tok)).logits, atol=1e-6)
    plain = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True)  # what vLLM reads
    assert type(plain).__name__ == "Qwen3ForCausalLM"
    assert SidVocabulary.load(directory).level_sizes == (16,) * 5


def test_load_names_missing_or_corrupt_file(tiny, tok, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such model directory"):
        load_model(tmp_path / "absent")
    directory = save_model(tiny, tok, tmp_path / "model")
    (directory / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_model(directory)
    directory = save_model(tiny, tok, tmp_path / "model")  # replaces the broken one atomically
    weights = directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])
    with pytest.raises(ValueError, match="model.safetensors"):
        load_model(directory)


def test_init_from_checkpoint_grows_embeddings_with_mean_rows(toy_sids, tmp_path):
    base_tok = train_text_tokenizer(TEXTS, None, vocab_size=400)  # a "pretrained" LM without SID tokens
    base = build_model(ModelConfig(size="tiny", seed=2), base_tok)
    save_model(base, base_tok, tmp_path / "base")
    new_tok = extend_tokenizer(base_tok, toy_sids)
    assert len(new_tok) == len(base_tok) + 80
    model = build_model(ModelConfig(size="tiny", init_from=str(tmp_path / "base")), new_tok)
    old, new = base.get_input_embeddings().weight, model.get_input_embeddings().weight
    assert new.shape == (len(new_tok), 64) and model.config.vocab_size == len(new_tok)
    assert torch.equal(new[: len(base_tok)], old)
    expected = old.mean(dim=0)
    assert torch.allclose(new[len(base_tok) :], expected.expand(80, -1))
    assert model.get_output_embeddings().weight is new  # still tied
    text = torch.tensor([base_tok.encode("red drill lamp")])
    with torch.no_grad():
        assert torch.allclose(model(text).logits[..., : len(base_tok)], base(text).logits, atol=1e-5)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        build_model(ModelConfig(size="tiny", init_from=str(tmp_path / "nope")), new_tok)
