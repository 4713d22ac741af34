"""KHQE: keyword-enhanced hierarchical quantization encoding (paper section 1).

encoder (text -> vector) -> keywords (lexicon, Aho-Corasick, fusion) -> quantizer (RQ-Kmeans + OPQ)
-> sid_tokenizer (codes <-> SID tokens <-> items) -> metrics (CUR, ICR). ``build`` runs them in order;
``proxies`` scores a fitted layout against valid queries (the layout sweep's first rung).
"""

from onesearch_ray.khqe.build import EncodedTexts, build_semantic_ids, catalogue_texts, enhance, item_text
from onesearch_ray.khqe.config import EncoderConfig, KHQEConfig, LexiconConfig, QuantizerConfig
from onesearch_ray.khqe.encoder import SentenceTransformerEncoder, TextEncoder
from onesearch_ray.khqe.keywords import KeyphraseLexicon
from onesearch_ray.khqe.layout import CodebookLayout
from onesearch_ray.khqe.metrics import code_metrics
from onesearch_ray.khqe.proxies import ProxyData, fit_and_measure, layout_proxies, relevance_pairs
from onesearch_ray.khqe.quantizer import ResidualQuantizer
from onesearch_ray.khqe.sid_tokenizer import SemanticIdTokenizer

__all__ = [
    "CodebookLayout",
    "EncodedTexts",
    "EncoderConfig",
    "KHQEConfig",
    "KeyphraseLexicon",
    "LexiconConfig",
    "ProxyData",
    "QuantizerConfig",
    "ResidualQuantizer",
    "SemanticIdTokenizer",
    "SentenceTransformerEncoder",
    "TextEncoder",
    "build_semantic_ids",
    "catalogue_texts",
    "code_metrics",
    "enhance",
    "fit_and_measure",
    "item_text",
    "layout_proxies",
    "relevance_pairs",
]
