"""SID trie: vectorised masks against brute force on random SID sets; versioned add/remove."""

from __future__ import annotations

import numpy as np
import pytest

from onesearch_ray.decoding.trie import SidTrie


def brute_force_mask(sids: set[tuple[int, ...]], prefix: tuple[int, ...], size: int) -> np.ndarray:
    mask = np.zeros(size, dtype=bool)
    for sid in sids:
        if sid[: len(prefix)] == prefix:
            mask[sid[len(prefix)]] = True
    return mask


@pytest.mark.parametrize("seed", range(5))
def test_masks_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    sizes = (int(rng.integers(2, 9)), int(rng.integers(2, 9)), int(rng.integers(2, 9)), 5, 5)
    sids = {tuple(int(rng.integers(0, k)) for k in sizes) for _ in range(int(rng.integers(1, 300)))}
    trie = SidTrie(list(sids), sizes)
    assert len(trie) == len(sids)
    for depth in range(len(sizes)):
        # prefixes from real SIDs and random (mostly invalid) ones, in one batch
        real = [sid[:depth] for sid in sids]
        random = [tuple(int(rng.integers(0, k)) for k in sizes[:depth]) for _ in range(50)]
        batch = np.asarray(real + random, dtype=np.int64).reshape(len(real) + len(random), depth)
        mask = trie.allowed_mask(batch)
        for row, prefix in enumerate(real + random):
            np.testing.assert_array_equal(mask[row], brute_force_mask(sids, prefix, sizes[depth]))
    for sid in list(sids)[:20]:
        assert sid in trie
    assert tuple(s + 1 for s in sizes) not in trie


def test_rejects_out_of_range_codes_and_full_prefixes():
    with pytest.raises(ValueError, match="outside"):
        SidTrie([(0, 5)], (2, 2))
    trie = SidTrie([(0, 1)], (2, 2))
    with pytest.raises(ValueError, match="no code follows"):
        trie.allowed_mask(np.array([[0, 1]]))
    assert SidTrie([], (2, 2)).allowed_mask(np.zeros((1, 0), np.int64)).sum() == 0
