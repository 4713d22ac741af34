"""Prompts: the SID-aware text tokenizer and the prompt builder (pure Python, no Ray)."""

from onesearch_ray.prompts.builder import PromptBuilder, PromptConfig, clean_text
from onesearch_ray.prompts.tokenizer import (
    ANSWER,
    BOS,
    EOS,
    PAD,
    SID_VOCABULARY_FILE,
    SPECIAL_TOKENS,
    UNK,
    SidVocabulary,
    extend_tokenizer,
    train_text_tokenizer,
)

__all__ = [
    "ANSWER",
    "BOS",
    "EOS",
    "PAD",
    "SID_VOCABULARY_FILE",
    "SPECIAL_TOKENS",
    "UNK",
    "PromptBuilder",
    "PromptConfig",
    "SidVocabulary",
    "clean_text",
    "extend_tokenizer",
    "train_text_tokenizer",
]
