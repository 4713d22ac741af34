"""SID-aware text tokenizer: byte-level BPE for text plus one token per SID token.

Layout of the vocabulary (ids in this order):

1. ``SPECIAL_TOKENS`` (pad, bos, eos, unk, then the prompt markers), special: ``decode(...,
   skip_special_tokens=True)`` drops them;
2. the byte-level BPE vocabulary learnt on the texts;
3. every SID token of the :class:`SemanticIdTokenizer`, position by position, so that the ids of one
   SID position form ONE contiguous block (``<a_0>..<a_K-1>``, then ``<b_*>``, ...). SID tokens are
   ordinary (non-special) added tokens: they survive ``skip_special_tokens`` and are matched anywhere in
   raw text, so ``"red<a_12>"`` encodes to the ids of ``red`` and ``<a_12>``.

No BOS/EOS is added by ``encode``: the prompt builder writes every marker itself, and vLLM and
transformers then see identical ids. ``SidVocabulary`` maps codes <-> token ids (what constrained
decoding needs).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from onesearch_ray.io import read_json, write_json
from onesearch_ray.khqe.sid_tokenizer import SemanticIdTokenizer

PAD, BOS, EOS, UNK = "<|pad|>", "<|bos|>", "<|eos|>", "<|unk|>"
SEARCH, QUERY, QSID, USER = "<|search|>", "<|query|>", "<|qsid|>", "<|user|>"
RECENT_QUERIES, RECENT_ITEMS = "<|recent_queries|>", "<|recent_items|>"
LONG, PROFILE, SEP, ANSWER = "<|long|>", "<|profile|>", "<|sep|>", "<|answer|>"
TITLE2SID, QUERY2SID = "<|title2sid|>", "<|query2sid|>"
SID2CATEGORY, QSID2SID = "<|sid2category|>", "<|qsid2sid|>"

SPECIAL_TOKENS: tuple[str, ...] = (
    PAD, BOS, EOS, UNK,
    SEARCH, QUERY, QSID, USER, RECENT_QUERIES, RECENT_ITEMS, LONG, PROFILE, SEP, ANSWER,
    TITLE2SID, QUERY2SID, SID2CATEGORY, QSID2SID,
)  # fmt: skip

# Anything shaped like a marker or a SID token; removed from BPE training text and from user text.
MARKUP_PATTERN = re.compile(r"<\|[^<>|]{0,40}\|>|<[a-z]_\d+>")
SID_TOKEN_PATTERN = re.compile(r"<[a-z]_\d+>")
SID_VOCABULARY_FILE = "sid_vocabulary.json"
_SID_VOCAB_FORMAT = "onesearch-sid-vocabulary"


def prompt_block(model_config: Any) -> int:
    """The token multiple the model's prompts are left-padded to (``prompt_block`` in its config.json;
    0 for models trained without alignment)."""
    return int(getattr(model_config, "prompt_block", 0) or 0)


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], block: int) -> list[list[int]]:
    """Token ids of ``prompts``, each left-padded with ``<|pad|>`` to a multiple of ``block`` tokens.

    Why: vLLM reuses cached KV only in whole blocks, so a block-aligned prompt is computed once and
    every beam request after it computes just its SID tokens. The pads are ordinary attended tokens
    (vLLM has no attention mask), so training (``train.sft.tokenize_pairs``) and every engine must
    pad the same way: all of them call this function with the model's :func:`prompt_block`.
    """
    encoded = tokenizer(list(prompts), add_special_tokens=False)["input_ids"] if prompts else []
    return [left_align(ids, block, tokenizer.pad_token_id) for ids in encoded]


def sid_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Ids of every SID token in ``tokenizer`` (ascending), whatever the SID layout."""
    return sorted(i for token, i in tokenizer.get_vocab().items() if SID_TOKEN_PATTERN.fullmatch(token))


def left_align(ids: Sequence[int], block: int, pad_id: int) -> list[int]:
    """``ids`` left-padded with ``pad_id`` to a multiple of ``block`` (unchanged when block <= 1)."""
    return [pad_id] * (-len(ids) % block if block > 1 else 0) + list(ids)


def train_text_tokenizer(
    texts: Iterable[str],
    sid_tokenizer: SemanticIdTokenizer | None,
    vocab_size: int = 8000,
    *,
    lowercase: bool = True,
    min_frequency: int = 2,
    model_max_length: int = 512,
) -> PreTrainedTokenizerFast:
    """Train byte-level BPE on ``texts``; add ``SPECIAL_TOKENS`` and every SID token (contiguous ids).

    ``vocab_size`` counts the special tokens and the 256 byte symbols, not the SID tokens. With
    ``sid_tokenizer=None`` the result is a plain text tokenizer (extend it later with
    :func:`extend_tokenizer`).
    """
    floor = len(SPECIAL_TOKENS) + len(pre_tokenizers.ByteLevel.alphabet())
    if vocab_size <= floor:
        raise ValueError(f"vocab_size {vocab_size} too small: needs more than {floor} (specials + 256 bytes)")
    backend = Tokenizer(models.BPE())
    if lowercase:
        backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_strip_markup(texts), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        clean_up_tokenization_spaces=False,
        model_max_length=model_max_length,
    )
    if sid_tokenizer is not None:
        _add_sid_tokens(tokenizer, sid_tokenizer)
    return tokenizer


def extend_tokenizer(
    tokenizer: PreTrainedTokenizerFast, sid_tokenizer: SemanticIdTokenizer
) -> PreTrainedTokenizerFast:
    """A copy of an existing (e.g. pretrained) tokenizer with the markers and SID tokens added.

    The eos token becomes ``EOS`` (the prompt builder's targets end with it); pad and bos are set to
    ``PAD``/``BOS`` only when the tokenizer has none. Idempotent when the SID tokens are already there
    as contiguous blocks; raises ValueError when only some of them are.
    """
    tokenizer = copy.deepcopy(tokenizer)
    vocab = tokenizer.get_vocab()
    missing = [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    tokenizer.eos_token = EOS
    if tokenizer.pad_token is None:
        tokenizer.pad_token = PAD
    if tokenizer.bos_token is None:
        tokenizer.bos_token = BOS
    _add_sid_tokens(tokenizer, sid_tokenizer)
    return tokenizer


def _add_sid_tokens(tokenizer: PreTrainedTokenizerFast, sid_tokenizer: SemanticIdTokenizer) -> None:
    tokens = sid_tokenizer.token_vocabulary()
    vocab = tokenizer.get_vocab()
    present = [t for t in tokens if t in vocab]
    if present and len(present) < len(tokens):
        raise ValueError(
            f"tokenizer already holds {len(present)} of {len(tokens)} SID tokens (e.g. {present[0]}); "
            "their ids could not be contiguous per position"
        )
    if not present:
        tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in tokens])
    SidVocabulary.from_tokenizers(tokenizer, sid_tokenizer)  # validates one id per token, contiguity


def _strip_markup(texts: Iterable[str]) -> Iterator[str]:
    """Training text without marker/SID shapes, with a leading space as in prompts (`` red shoes``)."""
    for text in texts:
        yield " " + MARKUP_PATTERN.sub(" ", text)


@dataclass
class SidVocabulary:
    """SID codes <-> LM token ids: ``position_token_ids[p][c]`` is the id of code ``c`` at position ``p``."""

    position_token_ids: list[np.ndarray]

    def __post_init__(self) -> None:
        self.position_token_ids = [np.asarray(ids, np.int64) for ids in self.position_token_ids]
        self._by_id: dict[int, tuple[int, int]] = {}
        for position, ids in enumerate(self.position_token_ids):
            for code, token_id in enumerate(ids.tolist()):
                if token_id in self._by_id:
                    raise ValueError(f"token id {token_id} is used by two SID positions/codes")
                self._by_id[token_id] = (position, code)

    @classmethod
    def from_tokenizers(
        cls, tokenizer: PreTrainedTokenizerFast, sid_tokenizer: SemanticIdTokenizer
    ) -> SidVocabulary:
        """Look every SID token up; each must be ONE id and each position a contiguous ascending block."""
        vocab = tokenizer.get_vocab()
        blocks, previous_end = [], -1
        for position in range(sid_tokenizer.sid_length):
            tokens = sid_tokenizer.position_tokens(position)
            missing = [t for t in tokens if t not in vocab]
            if missing:
                raise ValueError(f"SID token {missing[0]} (position {position}) is not in the text tokenizer")
            ids = np.asarray([vocab[t] for t in tokens], np.int64)
            if not np.array_equal(ids, ids[0] + np.arange(len(ids))) or ids[0] <= previous_end:
                raise ValueError(f"SID position {position}: ids are not one contiguous block after the last")
            blocks.append(ids)
            previous_end = int(ids[-1])
        return cls(blocks)

    @property
    def sid_length(self) -> int:
        return len(self.position_token_ids)

    @property
    def level_sizes(self) -> tuple[int, ...]:
        return tuple(len(ids) for ids in self.position_token_ids)

    def codes_to_ids(self, codes: Sequence[int]) -> list[int]:
        if len(codes) != self.sid_length:
            raise ValueError(f"a SID has {self.sid_length} codes, got {len(codes)}")
        out = []
        for position, code in enumerate(codes):
            ids = self.position_token_ids[position]
            if not 0 <= int(code) < len(ids):
                raise ValueError(f"SID position {position}: code {code} outside [0, {len(ids)})")
            out.append(int(ids[int(code)]))
        return out

    def ids_to_codes(self, ids: Sequence[int]) -> tuple[int, ...]:
        """Token ids -> codes; ValueError on a non-SID id, an id at the wrong position, or a bad length."""
        if len(ids) != self.sid_length:
            raise ValueError(f"a SID has {self.sid_length} tokens, got {len(ids)}")
        codes = []
        for position, token_id in enumerate(ids):
            found = self._by_id.get(int(token_id))
            if found is None:
                raise ValueError(f"token id {token_id} (position {position}) is not a SID token")
            if found[0] != position:
                raise ValueError(f"token id {token_id} belongs to SID position {found[0]}, not {position}")
            codes.append(found[1])
        return tuple(codes)

    def position_of(self, token_id: int) -> tuple[int, int] | None:
        """(position, code) of a SID token id, or None for any other id."""
        return self._by_id.get(int(token_id))

    def all_sid_token_ids(self) -> np.ndarray:
        return np.concatenate(self.position_token_ids) if self.position_token_ids else np.zeros(0, np.int64)

    def save(self, directory: str | Path) -> Path:
        """Write ``sid_vocabulary.json`` (block start and size per position) into ``directory``."""
        path = Path(directory) / SID_VOCABULARY_FILE
        blocks = [[int(ids[0]), len(ids)] for ids in self.position_token_ids]
        write_json(path, {"format": _SID_VOCAB_FORMAT, "version": 1, "blocks": blocks})
        return path

    @classmethod
    def load(cls, directory: str | Path) -> SidVocabulary:
        path = Path(directory) / SID_VOCABULARY_FILE
        if not path.exists():
            raise FileNotFoundError(f"{path}: no SID vocabulary here")
        payload = read_json(path)
        if not isinstance(payload, dict) or payload.get("format") != _SID_VOCAB_FORMAT:
            raise ValueError(f"{path}: not a {_SID_VOCAB_FORMAT} file")
        return cls([int(start) + np.arange(int(size)) for start, size in payload["blocks"]])


__all__ = [
    "ANSWER",
    "BOS",
    "EOS",
    "LONG",
    "MARKUP_PATTERN",
    "PAD",
    "PROFILE",
    "QSID",
    "QSID2SID",
    "QUERY",
    "QUERY2SID",
    "RECENT_ITEMS",
    "RECENT_QUERIES",
    "SEARCH",
    "SEP",
    "SID2CATEGORY",
    "SID_VOCABULARY_FILE",
    "SPECIAL_TOKENS",
    "TITLE2SID",
    "UNK",
    "USER",
    "SidVocabulary",
    "extend_tokenizer",
    "sid_token_ids",
    "train_text_tokenizer",
]
