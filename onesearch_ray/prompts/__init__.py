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
    encode_prompts,
    extend_tokenizer,
    left_align,
    prompt_block,
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
    "encode_prompts",
    "extend_tokenizer",
    "left_align",
    "prompt_block",
    "train_text_tokenizer",
]
