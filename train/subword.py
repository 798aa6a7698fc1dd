"""Subword tokenizers through the Hugging Face `tokenizers` library: WordPiece or BPE
loaded from a tokenizer.json, and byte-level BPE trained on a corpus.

    tok = SubwordTokenizer.from_file("model/tokenizer.json")      # e.g. MiniLM's WordPiece
    ids_BT, valid_BT = tok.encode_batch(["a sentence", "another one"])
    bpe = train_byte_level_bpe(texts, vocab_size=2000)              # any text, no <unk>
    bpe.to_json()  # travels with a checkpoint; SubwordTokenizer.from_json(...) restores it

Dimension key: B batch, T padded length.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

BPE_SPECIAL_TOKENS = ("<pad>", "<unk>", "<s>", "</s>", "<mask>")
"""Special tokens of `train_byte_level_bpe`, with ids 0..4 in this order."""


class SubwordTokenizer:
    """A `tokenizers.Tokenizer` with numpy batches, a named pad id and JSON round trips."""

    def __init__(self, tokenizer: Tokenizer, *, pad_token: str):
        pad_id = tokenizer.token_to_id(pad_token)
        if pad_id is None:
            raise ValueError(f"pad_token {pad_token!r} is not in the tokenizer's vocabulary")
        # A tokenizer.json may pad or truncate every text to a fixed length; lengths
        # here are the caller's choice (encode_batch's max_len), so both are off.
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self._tokenizer = tokenizer
        self.pad_token, self.pad_id = pad_token, pad_id

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], *, pad_token: str | None = None
                  ) -> SubwordTokenizer:
        """Loads a tokenizer.json. pad_token defaults to the file's padding token,
        else "[PAD]" (BERT) or "<pad>" (BPE, T5), whichever the vocabulary has."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"tokenizer file {path} does not exist")
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as err:  # tokenizers raises a bare Exception for bad JSON
            raise ValueError(f"{path} is not a tokenizer.json the tokenizers library reads: "
                             f"{err}") from None
        return cls(tokenizer, pad_token=pad_token or _default_pad(tokenizer))

    @classmethod
    def from_json(cls, text: str, *, pad_token: str | None = None) -> SubwordTokenizer:
        """The inverse of `to_json`."""
        try:
            tokenizer = Tokenizer.from_str(text)
        except Exception as err:
            raise ValueError(f"not a tokenizer JSON the tokenizers library reads: {err}") from None
        return cls(tokenizer, pad_token=pad_token or _default_pad(tokenizer))

    def to_json(self) -> str:
        return self._tokenizer.to_str()

    @property
    def vocab_size(self) -> int:
        """V, including special tokens."""
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int:
        token_id = self._tokenizer.token_to_id(token)
        if token_id is None:
            raise ValueError(f"token {token!r} is not in the vocabulary")
        return token_id

    def encode(self, text: str, *, add_special_tokens: bool = True) -> np.ndarray:
        """int32 [n]: the ids of one text (with the tokenizer's [CLS]/[SEP] or similar
        when add_special_tokens)."""
        if not isinstance(text, str):
            raise ValueError(f"text must be a str; got {type(text).__name__}")
        ids = self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids
        return np.asarray(ids, np.int32)

    def encode_batch(self, texts: Sequence[str], *, max_len: int | None = None,
                     add_special_tokens: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(ids int32 [B, T], valid bool [B, T]), right-padded with pad_id to the longest
        text, or truncated/padded to exactly max_len."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise ValueError("texts must be a sequence of str")
        if max_len is not None and max_len < 1:
            raise ValueError(f"max_len must be >= 1; got {max_len}")
        encodings = [self._tokenizer.encode(t, add_special_tokens=add_special_tokens).ids
                     for t in texts]
        if max_len is not None:
            encodings = [ids[:max_len] for ids in encodings]
        length = max_len or max((len(ids) for ids in encodings), default=0)
        ids_BT = np.full((len(encodings), length), self.pad_id, np.int32)
        valid_BT = np.zeros((len(encodings), length), bool)
        for row, ids in enumerate(encodings):
            ids_BT[row, :len(ids)] = ids
            valid_BT[row, :len(ids)] = True
        return ids_BT, valid_BT

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = True) -> str:
        return self._tokenizer.decode([int(i) for i in ids],
                                      skip_special_tokens=skip_special_tokens)


def _default_pad(tokenizer: Tokenizer) -> str:
    if tokenizer.padding is not None:
        return tokenizer.padding["pad_token"]
    for token in ("[PAD]", "<pad>"):
        if tokenizer.token_to_id(token) is not None:
            return token
    raise ValueError("the tokenizer has no padding token ([PAD] or <pad>); pass pad_token")


def train_byte_level_bpe(texts: Iterable[str], *, vocab_size: int,
                         min_frequency: int = 2) -> SubwordTokenizer:
    """Trains a byte-level BPE tokenizer (GPT-2's scheme) on `texts`.

    Every string encodes losslessly (bytes are the base alphabet, so there is no
    unknown token in practice); the special tokens BPE_SPECIAL_TOKENS take ids 0..4.

    Args:
      texts: the training corpus, e.g. the plays.
      vocab_size: the size to learn, at least 256 byte tokens + 5 special tokens.
      min_frequency: merges seen fewer times are not learned.
    """
    minimum = 256 + len(BPE_SPECIAL_TOKENS)
    if not isinstance(vocab_size, int) or vocab_size < minimum:
        raise ValueError(f"vocab_size must be an int >= {minimum} (the 256 bytes and "
                         f"{len(BPE_SPECIAL_TOKENS)} special tokens); got {vocab_size!r}")
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=list(BPE_SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return SubwordTokenizer(tokenizer, pad_token="<pad>")
