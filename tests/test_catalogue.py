"""The live catalogue (onesearch_ray.catalogue): the item step over kept groups equals brute force,
block-max bounds bound, snapshots stay whole under concurrent adds, adds cost what they add, and
the add log keeps every acknowledged add through a torn write."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import scipy.sparse as sp

from onesearch_ray.catalogue import AddLog, LiveCatalogue, NewItems, build_segment
from onesearch_ray.catalogue.lexical import LexicalIndex
from onesearch_ray.decoding.trie import prefix_keys as mixed_radix

WORDS = "drill paint hose saw blade cordless garden red blue hammer nail screw wood steel brass".split()
LEVELS = (4, 6)  # two index levels: 4 groups, each split in up to 6


def random_items(n: int, seed: int, first_id: int = 0, dim: int = 8):
    rng = np.random.default_rng(seed)
    titles = [" ".join(rng.choice(WORDS, size=rng.integers(1, 5))) for _ in range(n)]
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    codes = np.stack([rng.integers(0, size, n) for size in LEVELS], 1)
    return np.arange(first_id, first_id + n), titles, vectors, codes


def base_inputs(n: int = 300):
    """The base catalogue's items (ids, titles, vectors, codes), lexical index, biases, term weights."""
    ids, titles, vectors, codes = random_items(n, seed=0)
    lexical = LexicalIndex.build(titles)
    bias = np.random.default_rng(1).normal(size=n).astype(np.float32)
    weights = lexical.idf() * np.random.default_rng(2).uniform(0.5, 1.5, lexical.n_terms).astype(np.float32)
    return ids, titles, vectors, codes, lexical, bias, weights


def base_catalogue(n: int = 300) -> tuple[LiveCatalogue, LexicalIndex, dict]:
    ids, titles, vectors, codes, lexical, bias, weights = base_inputs(n)
    segment = build_segment(ids, vectors, bias, codes, titles, lexical.saturation, LEVELS)
    catalogue = LiveCatalogue(segment, lexical, weights, lexical_scale=0.7)
    truth = {"ids": ids, "vectors": vectors, "bias": bias, "codes": codes, "titles": titles}
    return catalogue, lexical, truth


def prefix_keys(codes, level_sizes, level):
    """Each row's key at index ``level`` (its first ``level + 1`` codes)."""
    return mixed_radix(codes[:, : level + 1], level_sizes)


def top(snapshot, level, keys, bonus, query, terms, k):
    """One search's top items (a batch of one)."""
    return snapshot.top_items([(level, keys, np.asarray(bonus))], np.asarray(query)[None], [terms], k)[0]


def brute_force(catalogue, truth, level, keys, bonus, query, terms):
    """Every item's score from first principles: dense + bias + scaled weights x saturation + bonus."""
    lexical = LexicalIndex.build(truth["titles"])  # the base's length statistics, as the catalogue keeps
    snapshot = catalogue.snapshot
    scores = {}
    item_keys = prefix_keys(truth["codes"], LEVELS, level)
    for row, item in enumerate(truth["ids"]):
        if item_keys[row] not in keys:
            continue
        sat = lexical.saturation[row].toarray().ravel()
        lexical_score = sum(snapshot.term_weights[t] * sat[t] for t in terms if t < len(sat))
        bonus_of = bonus[list(keys).index(item_keys[row])]
        scores[int(item)] = float(
            truth["vectors"][row] @ query + truth["bias"][row] + lexical_score + bonus_of
        )
    return scores


@pytest.mark.parametrize("level", [0, 1])
def test_item_step_over_kept_groups_equals_brute_force(level):
    catalogue, lexical, truth = base_catalogue()
    snapshot = catalogue.snapshot
    rng = np.random.default_rng(5)
    all_keys = np.unique(prefix_keys(truth["codes"], LEVELS, level))
    for query_text in ("cordless drill", "red paint hose", "steel", "zebra"):
        keys = np.sort(rng.choice(all_keys, size=max(1, len(all_keys) // 2), replace=False))
        bonus = rng.normal(size=len(keys)).astype(np.float32)
        query = rng.normal(size=8).astype(np.float32)
        terms = snapshot.query_terms([query_text])[0]
        ids, scores = top(snapshot, level, keys, bonus, query, terms, k=1000)
        expected = brute_force(catalogue, truth, level, keys, bonus, query, terms)
        assert sorted(ids.tolist()) == sorted(expected)  # every item under the kept keys, once
        for item, score in zip(ids.tolist(), scores.tolist(), strict=True):
            assert score == pytest.approx(expected[item], rel=1e-4, abs=1e-4)
        assert np.all(np.diff(scores) <= 0)
        top3, _ = top(snapshot, level, keys, bonus, query, terms, k=3)
        assert top3.tolist() == ids[:3].tolist()


def test_one_batch_product_gives_the_scores_of_per_search_slices():
    catalogue, _, truth = base_catalogue()
    catalogue.add(NewItems(*random_items(40, seed=4, first_id=5000)))
    snapshot = catalogue.snapshot
    rng = np.random.default_rng(8)
    keys = np.unique(prefix_keys(truth["codes"], LEVELS, 0))
    plans = [(0, keys, rng.normal(size=len(keys))) for _ in range(6)]  # every group: the batch product
    queries = rng.normal(size=(6, 8)).astype(np.float32)
    terms = snapshot.query_terms(["drill", "red paint", "", "saw blade", "nail", "hose"])
    batch = snapshot.top_items(plans, queries, terms, k=50)
    narrow = [(0, keys[:1], plan[2][:1]) for plan in plans]  # one group each: slices
    for b, plan in enumerate(plans):
        alone = top(snapshot, *plan, queries[b], terms[b], k=50)
        np.testing.assert_array_equal(batch[b][0], alone[0])
        np.testing.assert_allclose(batch[b][1], alone[1], rtol=1e-5)
    assert all(len(ids) for ids, _ in snapshot.top_items(narrow, queries, terms, k=5))


def test_block_max_bounds_every_items_lexical_score_and_is_exact_for_one_term():
    catalogue, lexical, truth = base_catalogue()
    snapshot = catalogue.snapshot
    keys = np.unique(prefix_keys(truth["codes"], LEVELS, 1))
    for text in ("drill", "cordless drill saw", "blue"):
        terms = snapshot.query_terms([text])[0]
        sizes, bound = snapshot.group_facts(1, keys, terms)
        scores = brute_force(catalogue, truth, 1, keys, np.zeros(len(keys)), np.zeros(8), terms)
        item_keys = prefix_keys(truth["codes"], LEVELS, 1)
        bias = dict(zip(truth["ids"].tolist(), truth["bias"].tolist(), strict=True))
        for j, key in enumerate(keys):
            members = [int(i) for i, k in zip(truth["ids"], item_keys, strict=True) if k == key]
            best = max(scores[i] - bias[i] for i in members)
            assert bound[j] >= best - 1e-5
            if len(terms) == 1:
                assert bound[j] == pytest.approx(best, abs=1e-5)
    assert sizes.sum() == 300
    assert snapshot.group_facts(1, np.array([10_000]), terms)[1][0] == -np.inf  # no such group


def test_adds_publish_a_new_snapshot_and_leave_the_old_one_whole():
    catalogue, _, _ = base_catalogue()
    before = catalogue.snapshot
    base = before.segments[0]
    ids, titles, vectors, codes = random_items(7, seed=9, first_id=10_000)
    titles[0] = "zanzibar espresso grinder"  # terms no item had
    after = catalogue.add(NewItems(ids, titles, vectors, codes))
    assert after.version == before.version + 1 and after.n_items == before.n_items + 7
    assert before.n_items == 300 and not before.has(10_000) and after.has(10_000)
    assert after.segments[0] is base  # the trained segment is never rebuilt by an add
    terms = after.query_terms(["zanzibar"])[0]
    assert len(terms) == 1 and not len(before.query_terms(["zanzibar"])[0])
    assert after.term_weights[terms[0]] > 0  # a new term gets its IDF (times the lexical scale)
    key = prefix_keys(codes[:1], LEVELS, 1)
    found, _ = top(after, 1, key, np.zeros(1), np.zeros(8, np.float32), terms, k=1)
    assert found.tolist() == [10_000]
    with pytest.raises(ValueError, match="already in the catalogue"):
        catalogue.add(NewItems(ids[:1], titles[:1], vectors[:1], codes[:1]))


def test_many_small_adds_merge_into_log_many_segments():
    catalogue, _, _ = base_catalogue()
    for batch in range(64):
        ids, titles, vectors, codes = random_items(3, seed=100 + batch, first_id=1000 + 3 * batch)
        catalogue.add(NewItems(ids, titles, vectors, codes))
    snapshot = catalogue.snapshot
    assert snapshot.n_items == 300 + 64 * 3
    assert len(snapshot.segments) <= 1 + int(np.log2(64)) + 1
    assert all(snapshot.has(1000 + i) for i in range(64 * 3))


def test_searches_during_adds_always_see_whole_batches():
    catalogue, _, _ = base_catalogue()
    stop, failures, seen = threading.Event(), [], []

    def searcher():
        keys = np.arange(np.prod(LEVELS))
        while not stop.is_set():
            snapshot = catalogue.snapshot
            try:
                no_terms = np.zeros(0, int)
                ids, _ = top(snapshot, 1, keys, np.zeros(len(keys)), np.ones(8, np.float32), no_terms, 10_000)
                added = int((ids >= 5000).sum())
                if added % 10:
                    failures.append(f"a half batch: {added} added items visible")
                seen.append(added)
            except Exception as err:  # noqa: BLE001 - any failure is the finding
                failures.append(repr(err))

    threads = [threading.Thread(target=searcher) for _ in range(3)]
    for thread in threads:
        thread.start()
    for batch in range(30):
        ids, titles, vectors, codes = random_items(10, seed=batch, first_id=5000 + 10 * batch)
        catalogue.add(NewItems(ids, titles, vectors, codes))
    stop.set()
    for thread in threads:
        thread.join()
    assert not failures and max(seen) <= 300 and catalogue.snapshot.n_items == 600


def test_add_log_replays_acknowledged_adds_and_drops_a_torn_tail(tmp_path):
    path = tmp_path / "catalogue" / "added.log"
    log = AddLog(path, "digest-a")
    batches = [NewItems(*random_items(4, seed=s, first_id=100 * s)) for s in (1, 2)]
    for batch in batches:
        log.append(batch)
    read = AddLog(path, "digest-a").read()
    assert [b.item_ids.tolist() for b in read] == [b.item_ids.tolist() for b in batches]
    assert read[1].titles == batches[1].titles and np.array_equal(read[1].codes, batches[1].codes)
    np.testing.assert_array_equal(read[0].vectors, batches[0].vectors)

    whole = path.stat().st_size
    with open(path, "ab") as handle:  # a crash in the middle of the third append
        handle.write(b"\x50\x00\x00\x00\x00\x00\x00\x00\x01\x02\x03\x04partial")
    again = AddLog(path, "digest-a")
    assert len(again.read()) == 2 and path.stat().st_size == whole  # cut back to whole records
    again.append(NewItems(*random_items(2, seed=3, first_id=300)))
    assert [len(b.item_ids) for b in AddLog(path, "digest-a").read()] == [4, 4, 2]

    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF  # damage inside an early record: corruption, not a torn tail
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="damaged record"):
        AddLog(path, "digest-a").read()
    with pytest.raises(ValueError, match="re-encoded"):
        AddLog(path, "digest-b")


def test_segment_refuses_mismatched_inputs():
    ids, titles, vectors, codes = random_items(5, seed=0)
    lexical = LexicalIndex.build(titles)
    with pytest.raises(ValueError, match="one vector"):
        build_segment(ids, vectors[:4], np.zeros(5), codes, titles, lexical.saturation, LEVELS)
    with pytest.raises(ValueError, match="index levels"):
        build_segment(ids, vectors, np.zeros(5), codes[:, :1], titles, lexical.saturation, LEVELS)
    assert sp.issparse(lexical.saturation)


def sharded(n_shards: int, add_log: AddLog | None = None):
    """(planner, shards) over base_catalogue's items: the planner holds no dense rows, each shard the
    rows of the items shard_of gives it; the same vocabulary, weights and scale everywhere."""
    from onesearch_ray.catalogue.live import shard_of
    from onesearch_ray.catalogue.shards import CatalogueShard, LocalShard, ShardScorer

    ids, titles, vectors, codes, lexical, bias, weights = base_inputs()

    def shard_catalogue(model: str, index: int) -> LiveCatalogue:
        rows = np.flatnonzero(shard_of(ids, n_shards) == index)
        segment = build_segment(
            ids[rows],
            vectors[rows],
            bias[rows],
            codes[rows],
            [titles[r] for r in rows],
            lexical.saturation[rows],
            LEVELS,
        )
        return LiveCatalogue(segment, lexical, weights, 0.7, model=model, shard=(index, n_shards))

    read_log = add_log.read if add_log is not None else None
    shards = [
        CatalogueShard(shard_catalogue("m", i), lambda model, i=i: shard_catalogue(model, i), read_log)
        for i in range(n_shards)
    ]
    scorer = ShardScorer([LocalShard(shard) for shard in shards])
    planner_base = build_segment(
        ids, np.zeros((300, 0), np.float32), bias, codes, titles, lexical.saturation, LEVELS
    )
    planner = LiveCatalogue(planner_base, lexical, weights, 0.7, model="m", scorer=scorer)
    return planner, scorer, shards


def test_shards_rank_as_one_catalogue_before_and_after_adds(tmp_path):
    """Two and three shards give one catalogue's top items and scores, for the same plans, before and
    after adds that bring new terms; planning facts are the same too."""
    single, _, _ = base_catalogue()
    planners = [sharded(n) for n in (2, 3)]
    rng = np.random.default_rng(9)

    def same_everywhere() -> None:
        one = single.snapshot
        for planner, _, _ in planners:
            snapshot = planner.snapshot
            assert snapshot.records == one.records
            np.testing.assert_allclose(snapshot.term_weights, one.term_weights, rtol=1e-6)
            for query_text in ("cordless drill", "red paint hose", "steel brass", "zebra quorbel"):
                terms = one.query_terms([query_text])[0]
                np.testing.assert_array_equal(snapshot.query_terms([query_text])[0], terms)
                keys = np.unique(rng.integers(0, 24, size=10))
                facts = one.group_facts(1, keys, terms), snapshot.group_facts(1, keys, terms)
                np.testing.assert_array_equal(facts[0][0], facts[1][0])
                np.testing.assert_allclose(facts[0][1], facts[1][1], rtol=1e-6)
                bonus, query = rng.normal(size=len(keys)), rng.normal(size=8).astype(np.float32)
                want = top(one, 1, keys, bonus, query, terms, k=15)
                got = top(snapshot, 1, keys, bonus, query, terms, k=15)
                np.testing.assert_array_equal(got[0], want[0])
                np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-5)

    same_everywhere()
    for batch in range(3):
        items = NewItems(*random_items(25, seed=10 + batch, first_id=1000 + 100 * batch))
        items = NewItems(
            items.item_ids, [f"{t} quorbel{batch}" for t in items.titles], items.vectors, items.codes
        )
        single.add(items)
        for planner, scorer, _ in planners:
            scorer.add(items, planner.snapshot.records + 1)
            planner.add(items)
    same_everywhere()
    _, _, shards = planners[0]
    assert sum(len(s) for shard in shards for s in shard.catalogue.snapshot.segments) == 375  # each item once


def test_a_shard_catches_up_from_the_add_log_and_scores_the_planners_snapshot(tmp_path):
    """A shard that misses adds (down, or restarted) takes them from the add log when the planner's
    snapshot names them; a search planned before an add is scored without it."""
    log = AddLog(tmp_path / "added.log", "digest")
    planner, scorer, shards = sharded(2, log)
    before = planner.snapshot
    first = NewItems(np.array([5000]), ["quorbel lamp"], np.ones((1, 8), np.float32), np.array([[1, 2]]))
    log.append(first)
    scorer.add(first, 1)
    after = planner.add(first)
    terms = after.query_terms(["quorbel lamp"])[0]
    key = np.array([1 * LEVELS[1] + 2])
    query = np.ones(8, np.float32)
    assert 5000 in top(after, 1, key, [0.0], query, terms, 50)[0]
    old_terms = before.query_terms(["quorbel lamp"])[0]
    assert 5000 not in top(before, 1, key, [0.0], query, old_terms, 50)[0]  # the older snapshot, as planned
    second = NewItems(np.array([5001]), ["quorbel desk"], np.ones((1, 8), np.float32), np.array([[1, 2]]))
    log.append(second)  # logged, but no shard is told (as when the shards were unreachable)
    latest = planner.add(second)
    assert {shard.records for shard in shards} == {1}
    assert 5001 in top(latest, 1, key, [0.0], query, latest.query_terms(["desk"])[0], 50)[0]
    assert {shard.records for shard in shards} == {2}
    _, _, restarted = sharded(2, log)  # new shards replay the whole log at start
    assert {shard.records for shard in restarted} == {2}
    assert sum(len(s) for shard in restarted for s in shard.catalogue.snapshot.segments[1:]) == 2


@pytest.mark.parametrize("low_rank", [False, True])
def test_first_pass_shortlist_returns_the_exact_top_items(monkeypatch, low_rank):
    """A segment with a first pass (rows projected on principal directions) rescores a shortlist with
    its full rows: the top items and their scores are those of the exact item step, whether the
    projection keeps every direction or the rows lie near a lower-dimensional subspace."""
    from onesearch_ray.catalogue import segment as segment_module

    monkeypatch.setattr(segment_module, "SHORTLIST", 12)
    if low_rank:
        monkeypatch.setattr(segment_module, "FIRST_PASS_DIMS", 4)
    ids, titles, vectors, codes = random_items(400, seed=3)
    if low_rank:  # rows in a 4-d subspace of the 8-d space, plus a little noise
        rng = np.random.default_rng(4)
        vectors = (
            rng.normal(size=(400, 4)) @ rng.normal(size=(4, 8)) + 0.01 * rng.normal(size=(400, 8))
        ).astype(np.float32)
    lexical = LexicalIndex.build(titles)
    bias = np.random.default_rng(1).normal(size=400).astype(np.float32)
    exact, approximate = (
        build_segment(ids, vectors, bias, codes, titles, lexical.saturation, LEVELS, first_pass_rows=rows)
        for rows in (0, 1)
    )
    assert exact.first_pass is None and approximate.first_pass is not None
    rng = np.random.default_rng(5)
    keys = np.arange(LEVELS[0])  # every group: 400 kept rows, a shortlist of 12
    for query_text in ("cordless drill", "red paint", "zebra"):
        terms = np.asarray(
            sorted({lexical.vocabulary[t] for t in query_text.split() if t in lexical.vocabulary})
        )
        terms = terms.astype(np.int64)
        weights = lexical.idf()[terms]
        query = rng.normal(size=8).astype(np.float32)
        bonus = rng.normal(size=len(keys)).astype(np.float32)
        rows, scores = approximate.candidates(0, keys, bonus, query, terms, weights, k=3)
        assert len(rows) == 12
        all_rows, all_scores = exact.candidates(0, keys, bonus, query, terms, weights, k=3)
        best = np.argsort(-all_scores)[:5]
        mine = np.argsort(-scores)[:5]
        np.testing.assert_array_equal(rows[mine], all_rows[best])
        np.testing.assert_allclose(scores[mine], all_scores[best], rtol=1e-5, atol=1e-5)
