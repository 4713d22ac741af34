"""The co-purchase term on hand-made histories: counts, postings, search, serving's snapshot, and a
training search that never sees its own pairs."""

from __future__ import annotations

import numpy as np
import torch

from onesearch_ray.behavior.copurchase import copurchase_counts, own_pair_values, recent_items
from onesearch_ray.catalogue import LiveCatalogue
from onesearch_ray.catalogue.lexical import LexicalIndex
from onesearch_ray.generator.codes import CodeTree
from onesearch_ray.generator.config import GeneratorConfig
from onesearch_ray.generator.evaluate import rank
from onesearch_ray.generator.items import model_catalogue
from onesearch_ray.generator.model import CodeItemGenerator
from onesearch_ray.generator.prompts import build_prompts
from onesearch_ray.generator.train import Example, item_logits, loss_of

TITLES = ["drill", "drill bits", "paint", "paint roller", "hose", "hose reel"]
# item 0 (drill) was followed by 1 (bits) three times and by 4 (hose) once; 2 (paint) by 3 (roller)
HISTORIES = [[0], [5, 0], [0], [0], [2], [2]]
TARGETS = [[1], [1], [1], [4], [3], [3]]


def test_counts_take_each_recent_item_once_from_the_window():
    assert recent_items([7, 3, 7, 9], window=3) == [3, 7, 9]
    assert recent_items([7, 3, 7, 9], window=0) == []
    counts = copurchase_counts([[1, 0, 1], [2, 0]], [[3, 3], [3]], n_items=5, window=2).toarray()
    # [.., 0, 1] -> 3 (item 1 and the target counted once each); [2, 0] -> 3
    assert counts[0, 3] == 2 and counts[1, 3] == 1 and counts[2, 3] == 1 and counts.sum() == 4


def co_purchase_model(weight: float = 5.0) -> CodeItemGenerator:
    vectors = np.eye(len(TITLES), 8, dtype=np.float32)  # orthogonal: the dense term ranks history items only
    codes = CodeTree.build(np.arange(len(TITLES))[:, None] % 2, (2,), vectors)
    counts = copurchase_counts(HISTORIES, TARGETS, len(TITLES), window=2)
    lexical = LexicalIndex.build(TITLES).with_copurchase(counts)
    config = GeneratorConfig(hash_buckets=64, copurchase_window=2, copurchase_weight=weight)
    return CodeItemGenerator(config, vectors, codes, lexical)


def test_postings_hold_log_counts_and_weights_start_at_the_configured_weight():
    model = co_purchase_model()
    lexical = model.lexical
    drill, paint = lexical.item_terms([0])[0], lexical.item_terms([2])[0]
    assert len(lexical.item_terms([1, 3])) == 0  # never a history item: no term
    postings = lexical.saturation.toarray()
    assert np.allclose(postings[:, drill], np.log1p([0, 3, 0, 0, 1, 0]))
    assert np.allclose(postings[:, paint], np.log1p([0, 0, 0, 2, 0, 0]))
    weights = model.term_weight.detach().numpy()
    assert weights[drill] == weights[paint] == 5.0
    assert np.allclose(weights[: len(lexical.vocabulary) - 3], lexical.idf()[: len(lexical.vocabulary) - 3])


def test_untrained_search_ranks_what_followed_the_recent_items_first():
    model = co_purchase_model()
    empty = np.zeros((2, 8), np.float32)
    ranked = rank(model, ["", ""], empty, k=3, histories=[[0], [5, 2]])
    assert ranked[0] == [0, 1, 4]  # the drill itself (dense), bits (3 follows), hose (1 follow)
    assert ranked[1] == [2, 5, 3]  # the history items, then the roller (5 had no follower)
    # a live catalogue's snapshot (what serving searches) gives the same terms and the same ranking
    snapshot = model_catalogue(model).snapshot
    assert np.array_equal(snapshot.item_terms([0, 2]), model.lexical.item_terms([0, 2]))
    assert rank(model, ["", ""], empty, k=3, histories=[[0], [5, 2]], items=snapshot) == ranked
    assert isinstance(model_catalogue(model), LiveCatalogue)


def test_a_training_search_does_not_see_its_own_pairs():
    """The paint -> roller pair counts twice, once from each of two searches: without its own pair a
    search sees one. The drill -> hose pair is one search's alone: in training that search's hose
    scores nothing from co-purchase, the other items keep theirs (bits: 3 follows)."""
    model = co_purchase_model()
    lexical = model.lexical
    own = own_pair_values(lexical.saturation, lexical.item_terms([2]), np.array([3]))
    assert np.allclose(own, np.log1p(2) - np.log1p(1))
    alone = own_pair_values(lexical.saturation, lexical.item_terms([0]), np.array([4]))
    assert np.allclose(alone, np.log1p(1))
    example = Example("", np.zeros(8, np.float32), np.array([4]), np.ones(1), [0])
    prompts = build_prompts(lexical, 64, [""], np.zeros((1, 8)), model.item_vectors.numpy(), [[0]], 0, 2)
    with torch.no_grad():  # the item correction starts at zero: the decoder's output does not matter
        served = item_logits(model, prompts, torch.zeros(1, model.config.decoder.hidden_size))[0]
        taken = served.clone()
        taken[4] -= model.log_lexical_scale.exp() * 5.0 * np.log1p(1)
        loss = loss_of(model, [example], np.random.default_rng(0))["item"]
    assert np.isclose(float(loss), float(-torch.log_softmax(taken, 0)[4]), atol=1e-5)
    assert float(loss) > float(-torch.log_softmax(served, 0)[4]) + 1.0
