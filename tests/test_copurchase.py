"""The co-purchase term on hand-made histories: counts, postings, search, serving's snapshot, and a
training search that never sees its own pairs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from onesearch_ray.behavior.copurchase import copurchase_counts, own_pair_values, recent_items
from onesearch_ray.catalogue import LiveCatalogue
from onesearch_ray.catalogue.lexical import LexicalIndex
from onesearch_ray.generator.codes import CodeTree
from onesearch_ray.generator.config import GeneratorConfig, TrainConfig
from onesearch_ray.generator.evaluate import rank
from onesearch_ray.generator.items import model_catalogue
from onesearch_ray.generator.model import CodeItemGenerator
from onesearch_ray.generator.prompts import build_prompts
from onesearch_ray.generator.train import Example, item_logits, loss_of, parameter_groups, train

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


def repeat_model(window: int = 2) -> CodeItemGenerator:
    vectors = np.eye(len(TITLES), 8, dtype=np.float32)
    codes = CodeTree.build(np.arange(len(TITLES))[:, None] % 2, (2,), vectors)
    counts = copurchase_counts(HISTORIES, TARGETS, len(TITLES), window=2)
    lexical = LexicalIndex.build(TITLES).with_repeat(window).with_copurchase(counts)
    config = GeneratorConfig(
        hash_buckets=64, copurchase_window=2, copurchase_weight=5.0, repeat_window=window
    )
    return CodeItemGenerator(config, vectors, codes, lexical)


def test_repeat_terms_post_the_item_itself_at_its_latest_position():
    lexical = LexicalIndex.build(TITLES).with_repeat(2)
    last, before = lexical.repeat_terms([5, 0]), lexical.repeat_terms([0, 5, 0])
    assert np.array_equal(last, before)  # 0 is the last item in both, 5 the one before
    ids, positions = lexical.repeat_term_positions()
    position = dict(zip(ids.tolist(), positions.tolist(), strict=True))
    postings = lexical.saturation.toarray()
    assert sorted(position[t] for t in last) == [0, 1]
    for term in last:
        assert np.flatnonzero(postings[:, term]).tolist() == [0 if position[term] == 0 else 5]
    assert len(lexical.repeat_terms([])) == 0


def test_repeat_weights_start_at_zero_and_demote_the_last_item_everywhere():
    """At zero the ranking is the co-purchase model's; a negative weight for the last position
    demotes the item just bought, in training's logits, in search and in serving's snapshot."""
    model, plain = repeat_model(), co_purchase_model()
    empty = np.zeros((2, 8), np.float32)
    histories = [[0], [5, 2]]
    assert rank(model, ["", ""], empty, k=3, histories=histories) == rank(
        plain, ["", ""], empty, k=3, histories=histories
    )
    with torch.no_grad():
        model.repeat_weight[0] = -100.0
    ranked = rank(model, ["", ""], empty, k=3, histories=histories)
    assert ranked[0][:2] == [1, 4] and 0 not in ranked[0]  # the drill went to the bottom
    assert ranked[1][0] == 5 and 2 not in ranked[1]  # paint (the last) demoted, 5 kept (position 1)
    assert (
        rank(model, ["", ""], empty, k=3, histories=histories, items=model_catalogue(model).snapshot)
        == ranked
    )
    prompts = build_prompts(
        model.lexical, 64, [""], np.zeros((1, 8)), model.item_vectors.numpy(), [[0]], 0, 2, repeat_window=2
    )
    with torch.no_grad():
        hidden = torch.zeros(1, model.config.decoder.hidden_size)
        logits = item_logits(model, prompts, hidden)[0]
        model.repeat_weight.zero_()
        start = item_logits(model, prompts, hidden)[0]
    assert torch.allclose(logits - start, torch.tensor([-100.0, 0, 0, 0, 0, 0]))


def test_only_the_repeat_weights_learn_at_their_own_rate():
    model = repeat_model()
    config = TrainConfig(
        epochs=1,
        batch_size=2,
        learning_rate=0.0,
        weight_learning_rate=0.0,
        repeat_learning_rate=0.5,
        patience=0,
    )
    groups = parameter_groups(model, config)
    assert len(groups) == 1 and groups[0]["params"] == [model.repeat_weight]
    # the drill's buyers bought bits next, never the drill again: its repeat weight falls
    searches = [Example("", np.zeros(8, np.float32), np.array([1]), np.ones(1), [0]) for _ in range(8)]
    before = model.term_weight.detach().clone()
    train(model, searches, config)
    assert float(model.repeat_weight.detach()[0]) < 0 and torch.equal(model.term_weight.detach(), before)


def test_a_rate_for_repeat_weights_the_model_lacks_is_named():
    config = TrainConfig(learning_rate=0.0, weight_learning_rate=0.0, repeat_learning_rate=0.5)
    with pytest.raises(ValueError, match="positive rate"):
        parameter_groups(co_purchase_model(), config)
