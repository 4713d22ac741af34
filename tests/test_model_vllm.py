"""vLLM loads a saved tiny model and its greedy continuation equals transformers' (vLLM in a subprocess)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from onesearch_ray.khqe import QuantizerConfig, SemanticIdTokenizer
from onesearch_ray.model import ModelConfig, build_model, load_model, save_model
from onesearch_ray.prompts import train_text_tokenizer

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed"),
]
PROMPT = "<|search|><|query|> red drill <|qsid|><a_1><b_2><c_3><d_4><d_20> <|answer|>"
MAX_TOKENS = 8
VLLM_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from vllm import LLM, SamplingParams

    if __name__ == "__main__":
        llm = LLM(model=sys.argv[1], enforce_eager=True, distributed_executor_backend="uni",
                  dtype="float32", max_model_len=256)
        params = SamplingParams(max_tokens=int(sys.argv[3]), temperature=0.0, ignore_eos=True)
        out = llm.generate([sys.argv[2]], params)[0]
        ids = {"prompt": list(out.prompt_token_ids), "output": list(out.outputs[0].token_ids)}
        print("RESULT " + json.dumps(ids))
    """
)


def test_vllm_greedy_equals_transformers(tmp_path):
    vectors = np.random.default_rng(0).standard_normal((300, 16)).astype(np.float32)
    sid = SemanticIdTokenizer.fit(np.arange(300), vectors, config=QuantizerConfig(layout="16-16-16+opq2x16"))
    tok = train_text_tokenizer(["red cordless drill", "brass lamp", "oak table"] * 20, sid, vocab_size=400)
    directory = save_model(build_model(ModelConfig(size="tiny", seed=3), tok), tok, tmp_path / "model")
    assert json.loads((directory / "config.json").read_text())["architectures"] == ["Qwen3ForCausalLM"]

    env = {
        **os.environ,
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "HF_HUB_OFFLINE": "1",
        "VLLM_CACHE_ROOT": str(tmp_path / "vllm-cache"),
        "VLLM_RPC_BASE_PATH": str(tmp_path),
    }
    script = tmp_path / "run_vllm.py"
    script.write_text(VLLM_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), str(directory), PROMPT, str(MAX_TOKENS)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    result = json.loads(lines[-1].removeprefix("RESULT "))

    model, tokenizer = load_model(directory)
    prompt_ids = tokenizer.encode(PROMPT)
    assert result["prompt"] == prompt_ids
    with torch.no_grad():
        hf = model.generate(
            torch.tensor([prompt_ids]), max_new_tokens=MAX_TOKENS, do_sample=False, min_new_tokens=MAX_TOKENS
        )[0, len(prompt_ids) :].tolist()
        # Every vLLM token must be an argmax of transformers' logits on vLLM's own path (ties allowed).
        logits = model(torch.tensor([prompt_ids + result["output"]])).logits[0, len(prompt_ids) - 1 : -1]
    chosen = logits[torch.arange(MAX_TOKENS), torch.tensor(result["output"])]
    assert torch.all(chosen >= logits.max(dim=-1).values - 1e-4)
    top2 = logits.topk(2, dim=-1).values
    if torch.all(top2[:, 0] - top2[:, 1] > 1e-4):  # no near-tie: the sequences must be identical
        assert result["output"] == hf
