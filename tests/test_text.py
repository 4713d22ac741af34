"""The one tokenizer (onesearch_ray/text.py) on hand-made titles: English as bm25s has it, Chinese
(no spaces) by character, in BM25, the keyphrase form and the keyword lexicon."""

from __future__ import annotations

import bm25s
import numpy as np
import Stemmer

from onesearch_ray.khqe import KeyphraseLexicon
from onesearch_ray.retrieval import BM25Retriever
from onesearch_ray.text import normalize_text, tokenize

ENGLISH = ["Cordless Drills 20V Lithium-Ion", "the 1/2 in. Brass Lamp", ""]
CHINESE = ["华星银色商务本14英寸P471", "童趣粉色木质积木300块", "华星黑色游戏本16英寸"]


def test_english_tokens_are_bm25s_tokens():
    expected = bm25s.tokenize(
        ENGLISH, stopwords="en", stemmer=Stemmer.Stemmer("english"), return_ids=False, show_progress=False
    )
    assert tokenize(ENGLISH) == expected


def test_chinese_titles_are_cut_into_characters_beside_their_latin_words():
    assert tokenize(["华星银色P471商务本"]) == [["p471", "华", "星", "银", "色", "商", "务", "本"]]
    assert tokenize(["童趣 积木", "积木"]) == [["童", "趣", "积", "木"], ["积", "木"]]
    assert normalize_text("华星 1/2 in. 银色") == "华 星 1/2 in 银 色"


def test_bm25_finds_chinese_titles_by_their_characters():
    bm25 = BM25Retriever(CHINESE, [1, 2, 3])
    assert bm25.search(["商务本"], 3)[0][0] == 1
    assert bm25.search(["积木"], 3) == [[2]]
    assert bm25.search(["华星游戏本"], 3)[0] == [3, 1]  # the brand matches both, the kind one
    assert bm25.search(["zebra"], 3) == [[]]


def test_the_keyword_lexicon_matches_a_chinese_keyphrase_inside_a_title():
    lexicon = KeyphraseLexicon.build([], [{"brand": "华星"}, {"entity": "商务本"}])
    assert set(lexicon.match(CHINESE[0])) == {"华 星", "商 务 本"}
    assert lexicon.match(CHINESE[1]) == []
    assert np.all([len(p.split()) >= 2 for p in lexicon.vocabulary()])
