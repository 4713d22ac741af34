"""KHQE: layouts, keyphrases, quantizer, SemanticIdTokenizer, code metrics (real faiss, real encoder)."""

from __future__ import annotations

import numpy as np
import pytest

from onesearch_ray.khqe import (
    CodebookLayout,
    EncoderConfig,
    KeyphraseLexicon,
    LexiconConfig,
    QuantizerConfig,
    ResidualQuantizer,
    SemanticIdTokenizer,
    SentenceTransformerEncoder,
    code_metrics,
)
from onesearch_ray.khqe.keywords import fuse_keyword_embeddings, match_rows
from onesearch_ray.khqe.quantizer import balanced_kmeans, capacity_assign


def clustered_vectors(n: int = 3000, dim: int = 32, clusters: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, dim))
    vectors = centers[rng.integers(0, clusters, n)] + 0.3 * rng.standard_normal((n, dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


# ---- layouts -------------------------------------------------------------------------------
def test_layout_parses_paper_string():
    layout = CodebookLayout.parse("4096-1024-512+opq2x256")
    assert layout.rq_levels == (4096, 1024, 512)
    assert layout.level_sizes == (4096, 1024, 512, 256, 256)
    assert str(layout) == "4096-1024-512+opq2x256"
    assert CodebookLayout.parse("256-256-256").level_sizes == (256, 256, 256)


@pytest.mark.parametrize("bad", ["", "abc", "4096--12", "4096+opq2", "1-2", "64+opq2x100"])
def test_layout_rejects_malformed(bad):
    with pytest.raises(ValueError, match="layout"):
        CodebookLayout.parse(bad)


def test_layout_scales_down_for_small_catalogues_keeping_shape():
    small = CodebookLayout.parse("4096-1024-512+opq2x256").scaled_to(3000)
    assert small.rq_levels == (256, 256, 256) and small.opq_codes == 256 and small.opq_subspaces == 2
    assert CodebookLayout.parse("4096-1024-512+opq2x256").scaled_to(10_000_000).rq_levels == (4096, 1024, 512)


# ---- keyphrases ----------------------------------------------------------------------------
def test_lexicon_from_queries_and_attributes_longest_match_first():
    queries = ["black cordless drill", "cordless drill", "drill bits", "cordless drill 20v"] * 3
    lexicon = KeyphraseLexicon.build(queries, [{"brand": "DeWalt", "colour": "Black"}], LexiconConfig())
    assert lexicon.phrases["dewalt"] == "brand" and lexicon.phrases["cordless drill"] == "query_ngram"
    assert lexicon.match("DeWalt 20V Black Cordless Drill, with drill-bits") == [
        "dewalt",
        "20v",
        "black cordless drill",
    ]
    # whole words only: "drill" must not match inside "drilling"
    assert lexicon.match("drilling machine") == []
    assert lexicon.match("") == []


def test_lexicon_skips_stopwords_numbers_and_rare_ngrams():
    lexicon = KeyphraseLexicon.build(["the lamp", "the lamp", "the lamp", "2 4", "2 4", "2 4", "rare thing"])
    assert "lamp" in lexicon.phrases and "the lamp" not in lexicon.phrases
    assert "2 4" not in lexicon.phrases and "rare thing" not in lexicon.phrases


def test_lexicon_json_round_trip():
    lexicon = KeyphraseLexicon.build(["red lamp"] * 3)
    again = KeyphraseLexicon.from_json(lexicon.to_json())
    assert again.phrases == lexicon.phrases and again.match("a red lamp") == lexicon.match("a red lamp")
    with pytest.raises(ValueError, match="phrases"):
        KeyphraseLexicon.from_json({"phrases": [1, 2]})


def test_fusion_follows_paper_formula_and_keeps_unmatched_rows():
    text = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    phrases = np.array([[0.0, 1.0], [1.0, 0.0]], np.float32)
    fused = fuse_keyword_embeddings(text, [[0], []], phrases)
    expected = np.array([0.5, 0.5]) / np.linalg.norm([0.5, 0.5])
    np.testing.assert_allclose(fused[0], expected, rtol=1e-6)
    np.testing.assert_allclose(fused[1], text[1])


def test_match_rows_index_the_sorted_vocabulary():
    lexicon = KeyphraseLexicon.build(["oak table", "oak table", "oak table"])
    rows = match_rows(lexicon, ["an oak table", "nothing here"])
    assert [lexicon.vocabulary()[r] for r in rows[0]] == ["oak table"] and rows[1] == []


# ---- encoder -------------------------------------------------------------------------------
def test_packaged_encoder_loads_offline_and_normalises():
    encoder = SentenceTransformerEncoder(EncoderConfig())
    vectors = encoder.encode(["cordless drill", "drill, cordless", "pink sofa"])
    assert vectors.shape == (3, encoder.dim) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
    assert encoder.encode([]).shape == (0, encoder.dim)


def test_encoder_refuses_non_local_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        SentenceTransformerEncoder(EncoderConfig(model=str(tmp_path / "no-such-model")))


# ---- quantizer -----------------------------------------------------------------------------
def test_capacity_assignment_respects_capacity():
    data = clustered_vectors(1000, 16, clusters=3)
    centroids = data[:50]
    assignment = capacity_assign(data, centroids, capacity=20)
    assert np.bincount(assignment, minlength=50).max() <= 20 and (assignment >= 0).all()


def test_balanced_kmeans_is_more_even_than_plain():
    data = clustered_vectors(4000, 16, clusters=5)
    plain = ResidualQuantizer.fit(data, QuantizerConfig(layout="64", balanced_last_level=False))
    balanced = balanced_kmeans(data, 64, niter=10, balanced_niter=8, seed=0)
    plain_counts = np.bincount(plain.encode(data)[:, 0], minlength=64)
    balanced_counts = np.bincount(capacity_assign(data, balanced, capacity=63), minlength=64)
    assert balanced_counts.std() < plain_counts.std()


def test_rq_opq_lowers_reconstruction_error_and_raises_icr():
    data = clustered_vectors()
    rq = ResidualQuantizer.fit(data, QuantizerConfig(layout="32-32-32"))
    rq_opq = ResidualQuantizer.fit(data, QuantizerConfig(layout="32-32-32+opq2x32"))
    codes = rq_opq.encode(data)
    assert codes.shape == (len(data), 5) and codes[:, 3:].max() < 32
    error = lambda q: ((q.reconstruct(q.encode(data)) - data) ** 2).sum(1).mean()  # noqa: E731
    assert error(rq_opq) < error(rq)
    assert code_metrics(codes, (32,) * 5)["icr"] > code_metrics(rq.encode(data), (32,) * 3)["icr"]


def test_small_catalogue_fits_without_faiss_warnings(capfd):
    # 496 points against OPQ's 256-centroid rotation PQ: faiss warned once per OPQ iteration
    ResidualQuantizer.fit(clustered_vectors()[:496], QuantizerConfig(layout="16-16-16+opq2x16"))
    assert "WARNING" not in capfd.readouterr().err


def test_quantizer_rejects_bad_input():
    with pytest.raises(ValueError, match="non-empty"):
        ResidualQuantizer.fit(np.zeros((0, 4), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        ResidualQuantizer.fit(np.full((10, 4), np.nan, np.float32))
    quantizer = ResidualQuantizer.fit(clustered_vectors(200, 8), QuantizerConfig(layout="8-8"))
    with pytest.raises(ValueError, match="8-d"):
        quantizer.encode(np.zeros((2, 4), np.float32))


# ---- tokenizer -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer():
    data = clustered_vectors()
    return SemanticIdTokenizer.fit(
        np.arange(100, 100 + len(data)), data, config=QuantizerConfig(layout="64-32-16+opq2x16")
    )


def test_sid_tokens_round_trip_and_opq_offset(tokenizer):
    codes = tokenizer.item_codes([100])[0]
    sid = tokenizer.sid_string(codes)
    assert sid.startswith("<a_") and sid.count("<d_") == 2
    last = tokenizer.codes_to_tokens(codes)[-1]
    assert int(last[3:-1]) >= 16  # second OPQ code is offset past the first's tokens


def test_shared_sids_are_counted():
    data = np.repeat(clustered_vectors(50, 8), 2, axis=0)  # every vector twice -> shared SIDs
    tok = SemanticIdTokenizer.fit(np.arange(len(data)), data, config=QuantizerConfig(layout="8-4"))
    assert tok.metrics()["items_per_sid"]["max"] >= 2


def test_save_load_and_cold_start(tokenizer, tmp_path):
    path = tokenizer.save(tmp_path / "tok")
    loaded = SemanticIdTokenizer.load(path)
    np.testing.assert_array_equal(loaded.item_codes(), tokenizer.item_codes())
    new_vectors = clustered_vectors(5, seed=7)
    codes = loaded.add_items([1, 2, 3, 4, 5], new_vectors)
    assert {tuple(c) for c in codes.tolist()} <= {
        tuple(c) for c in tokenizer.item_codes().tolist()
    }  # trained SIDs only
    assert loaded.has_item(3) and loaded.n_items == tokenizer.n_items + 5
    with pytest.raises(ValueError, match="already has a SID"):
        loaded.add_items([3], new_vectors[:1])


def test_load_detects_corruption(tokenizer, tmp_path):
    path = tokenizer.save(tmp_path / "tok")
    (path / "codebooks.npz").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="codebooks.npz: missing or corrupt"):
        SemanticIdTokenizer.load(path)
    with pytest.raises(FileNotFoundError, match="no SID tokenizer"):
        SemanticIdTokenizer.load(tmp_path / "elsewhere")


# ---- metrics -------------------------------------------------------------------------------
def test_code_metrics_hand_computed():
    codes = np.array([[0, 0], [0, 1], [1, 1], [1, 1]])
    report = code_metrics(codes, (2, 4))
    assert report["icr"] == 0.5  # items 0 and 1 are alone; 2 and 3 share
    assert report["n_sids"] == 3
    assert report["cur"]["level_1"] == 1.0 and report["cur"]["level_2"] == 0.5
    assert report["cur"]["prefix_2"] == 3 / 8
    assert report["items_per_sid"] == {"mean": 4 / 3, "max": 2}
