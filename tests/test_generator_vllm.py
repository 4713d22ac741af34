"""The generator's vLLM engine (prompt embeddings, heads as LM-head rows) returns the torch engine's top-K.

vLLM runs in a subprocess (as in ``test_vllm_engine.py``: an in-process engine would pin this pytest
process's torch threads to 1 and hold its KV cache for the session). The subprocess loads the saved
generator, searches through ``VLLMDecoder`` and prints its rankings as JSON; this process searches the
same prompts with the reference ``TorchDecoder`` and compares.
"""

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

from onesearch_ray.catalogue.lexical import LexicalIndex
from onesearch_ray.generator.codes import CodeTree
from onesearch_ray.generator.config import GeneratorConfig, SearchConfig
from onesearch_ray.generator.model import CodeItemGenerator
from onesearch_ray.generator.prompts import build_prompts
from onesearch_ray.generator.search import beam_search
from onesearch_ray.generator.store import load_generator, save_generator

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed"),
]
WORDS = "red blue oak steel brass cordless drill saw lamp table chair paint pipe valve hose tile".split()
N_ITEMS, DIM, K = 60, 16, 10

VLLM_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from onesearch_ray.generator.prompts import build_prompts
    from onesearch_ray.generator.search import beam_search
    from onesearch_ray.generator.store import load_generator
    from onesearch_ray.generator.vllm_decoder import VLLMDecoder

    model, _ = load_generator(sys.argv[1])
    spec = json.loads(open(sys.argv[2]).read())
    decoder = VLLMDecoder.start(model)
    prompts = build_prompts(
        model.lexical, model.config.hash_buckets, spec["queries"], np.asarray(spec["vectors"], np.float32),
        model.item_vectors.numpy(), spec["histories"], model.config.history,
    )
    batched = beam_search(model, prompts, spec["k"], decoder=decoder)
    one = build_prompts(
        model.lexical, model.config.hash_buckets, spec["queries"][:1],
        np.asarray(spec["vectors"][:1], np.float32), model.item_vectors.numpy(), spec["histories"][:1],
        model.config.history,
    )
    alone = beam_search(model, one, spec["k"], decoder=decoder)
    print("RESULT " + json.dumps({"batched": batched, "alone": alone}))
    """
)


def _model(rng: np.random.Generator) -> CodeItemGenerator:
    titles = [" ".join(rng.choice(WORDS, size=3, replace=False)) for _ in range(N_ITEMS)]
    vectors = rng.normal(size=(N_ITEMS, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    rows = np.arange(N_ITEMS)
    codes = CodeTree.build(np.stack([rows % 4, rows // 4 % 3], 1), (4, 3), vectors)
    config = GeneratorConfig(hash_buckets=64, code_levels=2, history=2, search=SearchConfig(beams=(2, 3)))
    model = CodeItemGenerator(config, vectors, codes, LexicalIndex.build(titles))
    with torch.no_grad():  # every correction away from zero, so that the decoder decides something
        for parameter in model.parameters():
            parameter.add_(0.2 * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(1)))
    return model


@pytest.fixture(scope="module")
def vllm_rankings(tmp_path_factory):
    rng = np.random.default_rng(0)
    directory = tmp_path_factory.mktemp("generator-vllm")
    save_generator(_model(rng), np.arange(N_ITEMS) + 1000, directory / "generator")
    queries = ["cordless drill", "red paint", "", "oak table lamp", "brass valve pipe", "zebra"]
    spec = {
        "queries": queries,
        "vectors": rng.normal(size=(len(queries), DIM)).tolist(),
        "histories": [[], [3, 7], [1, 2, 5], [], [40], [9, 9]],
        "k": K,
    }
    (directory / "spec.json").write_text(json.dumps(spec))
    script = directory / "run_vllm_decoder.py"
    script.write_text(VLLM_SCRIPT)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "VLLM_CACHE_ROOT": str(directory / "vllm-cache"),
        "VLLM_RPC_BASE_PATH": str(directory),
    }
    done = subprocess.run(
        [sys.executable, str(script), str(directory / "generator"), str(directory / "spec.json")],
        env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-4000:]
    model, _ = load_generator(directory / "generator")
    prompts = build_prompts(
        model.lexical,
        model.config.hash_buckets,
        spec["queries"],
        np.asarray(spec["vectors"], np.float32),
        model.item_vectors.numpy(),
        spec["histories"],
        model.config.history,
    )
    return json.loads(lines[-1].removeprefix("RESULT ")), beam_search(model, prompts, K)


def assert_same_ranking(got: list, want: list) -> None:
    assert [row for row, _ in got] == [row for row, _ in want]
    np.testing.assert_allclose([s for _, s in got], [s for _, s in want], rtol=1e-4, atol=1e-4)


def test_vllm_engine_returns_the_torch_engines_top_k(vllm_rankings):
    result, reference = vllm_rankings
    assert len(reference) == 6 and all(len(r) == K for r in reference)
    # the beams (2 of 4 first codes, then 3 prefixes) prune: the kept items differ between queries
    assert len({tuple(sorted(row for row, _ in r)) for r in reference}) > 1
    for got, want in zip(result["batched"], reference, strict=True):
        assert_same_ranking(got, want)


def test_a_search_alone_ranks_as_in_a_batch(vllm_rankings):
    result, reference = vllm_rankings
    assert_same_ranking(result["alone"][0], reference[0])
