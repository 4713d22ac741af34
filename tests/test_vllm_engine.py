"""VLLMEngine (and its async wrapper) returns exactly the reference engine's SIDs; trie swaps apply.

vLLM runs in a subprocess: an in-process engine would pin this pytest process's torch threads to 1
(vLLM patches ``torch.set_num_threads``), bind its memory and hold a 1 GiB KV cache for the rest of
the session. The subprocess writes its hits as JSON; this process compares them with
``TransformersEngine`` on the same saved model.
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

from onesearch_ray.decoding.beam import SidHit, TransformersEngine
from onesearch_ray.decoding.trie import SidTrie
from onesearch_ray.khqe import QuantizerConfig, SemanticIdTokenizer
from onesearch_ray.model import ModelConfig, build_model, load_model, save_model
from onesearch_ray.prompts import PromptBuilder, SidVocabulary, prompt_block, train_text_tokenizer
from onesearch_ray.train.sft import SFTConfig, tokenize_pairs, train

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed"),
]
BEAMS = (5, 20)
N_ITEMS = 300
WORDS = "red blue oak steel brass cordless drill saw lamp table chair paint pipe valve hose tile".split()
TOL = 1e-4

VLLM_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    import numpy as np
    from vllm import SamplingParams
    from onesearch_ray.decoding.beam import SearchLimitError
    from onesearch_ray.decoding.trie import SidTrie
    from onesearch_ray.decoding.vllm_engine import AsyncVLLMEngine, VLLMEngine

    def dump(hits):
        return [[[list(h.codes), h.score] for h in row] for row in hits]

    async def concurrent(engine, prompts, beams):
        calls = [engine.search([p], beam) for p in prompts for beam in beams]
        return [row[0] for row in await asyncio.gather(*calls)]

    if __name__ == "__main__":
        spec = json.loads(open(sys.argv[2]).read())
        prompts, level_sizes = spec["prompts"], spec["level_sizes"]
        small = SidTrie(np.asarray(spec["small"]), level_sizes, version=1)
        big = small.with_added([spec["target"]])
        engine = VLLMEngine.from_model_dir(sys.argv[1], None, small)
        out = {"beams": {str(b): dump(engine.search(prompts, b)) for b in spec["beams"]}}
        out["one_by_one"] = dump([engine.search([p], 5)[0] for p in prompts])
        # a search started before a swap keeps its trie; the next one sees the new item
        running = engine.start(prompts[:1], 5)
        engine.step(running)
        engine.set_trie(big)
        while not all(s.done for s in running):
            engine.step(running)
        out["pinned"] = dump([s.hits() for s in running])
        out["swapped"] = dump(engine.search(prompts[:1], 5))
        # a search abandoned half-way leaves nothing running and the engine usable
        abandoned = engine.start(prompts[:2], 5)
        engine.step(abandoned)
        engine.step(abandoned)
        engine.cancel(abandoned)
        out["cancelled"] = [s.error for s in abandoned]
        out["leftover_requests"] = engine.llm.llm_engine.has_unfinished_requests()
        out["after_cancel"] = dump(engine.search(prompts[:1], 5))
        # requests beyond the engine's limits are refused up front, naming the limit
        out["limits"] = []
        for prompt, beam in ((prompts[0], 5000), ("drill " * 600, 5)):
            try:
                engine.search([prompt], beam)
            except SearchLimitError as err:
                out["limits"].append(str(err))
        out["trie_version"] = engine.trie.version
        served = AsyncVLLMEngine(engine)
        out["async"] = dump(asyncio.run(concurrent(served, prompts[:3], spec["beams"])))
        served.close()
        # ordinary generation on the same engine is left alone by the processor
        ids = engine.tokenizer(prompts[0], add_special_tokens=False)["input_ids"]
        greedy = SamplingParams(max_tokens=1, temperature=0.0, detokenize=False)
        plain = engine.llm.generate([{"prompt_token_ids": ids}], greedy, use_tqdm=False)
        out["greedy"] = plain[0].outputs[0].token_ids[0]
        print("RESULT " + json.dumps(out))
    """
)


def _load(rows: list) -> list[list[SidHit]]:
    return [[SidHit(tuple(codes), score) for codes, score in row] for row in rows]


def assert_same_hits(got: list[SidHit], want: list[SidHit]) -> None:
    """Same SIDs in the same order with scores within TOL; order may differ only inside near-ties."""
    assert len(got) == len(want)
    np.testing.assert_allclose([h.score for h in got], [h.score for h in want], atol=TOL, rtol=0)
    for g, w in zip(got, want, strict=True):
        if g.codes != w.codes:
            tied = {h.codes for h in want if abs(h.score - w.score) <= TOL}
            assert g.codes in tied or abs(g.score - want[-1].score) <= TOL, (g, w)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained 30 steps on title -> SID pairs, saved; plus its SIDs and prompts."""
    directory = tmp_path_factory.mktemp("vllm_engine")
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((N_ITEMS, 16)).astype(np.float32)
    sids = SemanticIdTokenizer.fit(
        np.arange(N_ITEMS), vectors, config=QuantizerConfig(layout="16-16-16+opq2x16")
    )
    titles = [" ".join(rng.choice(WORDS, 3)) + f" {i}" for i in range(N_ITEMS)]
    tokenizer = train_text_tokenizer(titles * 2, sids, vocab_size=400)
    builder, codes = PromptBuilder(sids), sids.item_codes(list(range(N_ITEMS)))
    pairs = [(builder.title_to_sid_prompt(t), builder.target(c)) for t, c in zip(titles, codes, strict=True)]
    model = build_model(ModelConfig(size="tiny", seed=3), tokenizer)
    config = SFTConfig(max_steps=30, batch_size=16, warmup_steps=5, learning_rate=3e-3, log_every=10)
    examples = tokenize_pairs(tokenizer, pairs, 64, prompt_block(model.config))
    metrics = train(model, examples, config, pad_id=tokenizer.pad_token_id)
    assert metrics["loss"] < 4.5  # learnt something: the distribution is not flat
    vocabulary = SidVocabulary.from_tokenizers(tokenizer, sids)
    model_dir = save_model(model.eval(), tokenizer, directory / "model", sid_vocabulary=vocabulary)
    prompts = [builder.title_to_sid_prompt(titles[i]) for i in (0, 7, 42, 99, 250)]
    return directory, model_dir, sids, prompts


@pytest.fixture(scope="module")
def vllm_run(trained):
    """Run the script once; return (reference engine factory, small trie, big trie, target, results)."""
    directory, model_dir, sids, prompts = trained
    model, tokenizer = load_model(model_dir)
    position_ids = SidVocabulary.load(model_dir).position_token_ids
    full = SidTrie(np.asarray(sids.all_sids()), sids.layout.level_sizes)
    with torch.no_grad():
        target = TransformersEngine(model, tokenizer, position_ids, full).search(prompts[:1], 5)[0][0].codes
    small = full.with_removed([target])
    big = small.with_added([target])
    spec = {
        "prompts": prompts,
        "level_sizes": list(full.level_sizes),
        "small": small.sids.tolist(),
        "target": list(target),
        "beams": list(BEAMS),
    }
    (directory / "spec.json").write_text(json.dumps(spec))
    script = directory / "run_vllm_engine.py"
    script.write_text(VLLM_SCRIPT)
    env = {
        **os.environ,
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "VLLM_CACHE_ROOT": str(directory / "vllm-cache"),
        "VLLM_RPC_BASE_PATH": str(directory),
    }
    done = subprocess.run(
        [sys.executable, str(script), str(model_dir), str(directory / "spec.json")],
        env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-4000:]
    output = done.stdout + done.stderr  # vLLM logs to stdout
    assert "Traceback" not in output, output[-4000:]  # its harmless start-up one is filtered
    result = json.loads(lines[-1].removeprefix("RESULT "))

    def reference(trie: SidTrie) -> TransformersEngine:
        return TransformersEngine(model, tokenizer, position_ids, trie)

    return reference, small, big, target, prompts, result


@torch.no_grad()
def test_vllm_engine_equals_transformers_engine(vllm_run):
    reference, small, _, _, prompts, result = vllm_run
    for beam in BEAMS:
        want = reference(small).search(prompts, beam)
        got = _load(result["beams"][str(beam)])
        for g, w in zip(got, want, strict=True):
            assert len(w) == beam
            assert_same_hits(g, w)
            assert all(h.codes in small for h in g)  # 0 invalid SIDs


@torch.no_grad()
def test_one_prompt_at_a_time_gives_the_same_hits(vllm_run):
    reference, small, _, _, prompts, result = vllm_run
    want = reference(small).search(prompts, 5)
    for g, w in zip(_load(result["one_by_one"]), want, strict=True):
        assert_same_hits(g, w)


@torch.no_grad()
def test_trie_swap_is_seen_by_the_next_search_only(vllm_run):
    reference, small, big, target, prompts, result = vllm_run
    pinned, swapped = _load(result["pinned"])[0], _load(result["swapped"])[0]
    assert target not in [h.codes for h in pinned]  # started on the old trie
    assert_same_hits(pinned, reference(small).search(prompts[:1], 5)[0])
    assert swapped[0].codes == target  # the added item is the model's favourite
    assert_same_hits(swapped, reference(big).search(prompts[:1], 5)[0])
    assert result["trie_version"] == big.version


@torch.no_grad()
def test_cancelled_searches_leave_the_engine_clean(vllm_run):
    reference, _, big, _, prompts, result = vllm_run
    assert result["cancelled"] == ["search cancelled"] * 2
    assert result["leftover_requests"] is False
    assert_same_hits(_load(result["after_cancel"])[0], reference(big).search(prompts[:1], 5)[0])


def test_searches_beyond_the_engine_limits_are_refused(vllm_run):
    *_, result = vllm_run
    too_wide, too_long = result["limits"]
    assert "beam 5000" in too_wide and "'rows'" in too_wide
    assert "max_model_len 512" in too_long


@torch.no_grad()
def test_ordinary_requests_keep_their_greedy_token(vllm_run, trained):
    *_, result = vllm_run
    _, model_dir, _, prompts = trained
    model, tokenizer = load_model(model_dir)
    logits = model(torch.tensor([tokenizer(prompts[0], add_special_tokens=False)["input_ids"]])).logits[0, -1]
    assert logits[result["greedy"]] >= logits.max() - TOL


@torch.no_grad()
def test_async_engine_serves_concurrent_searches(vllm_run):
    reference, _, big, _, prompts, result = vllm_run
    got = _load(result["async"])
    want = [reference(big).search([p], beam)[0] for p in prompts[:3] for beam in BEAMS]
    for g, w in zip(got, want, strict=True):
        assert_same_hits(g, w)
