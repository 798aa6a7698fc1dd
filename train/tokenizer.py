"""A character tokenizer whose vocabulary travels with a checkpoint.

Ids: 0 is the pad token `<pad>`, 1 the unknown token `<unk>`, then every
distinct character of the text the vocabulary was built from, in sorted
(code point) order. `encode` and `decode` are vectorised with numpy, so a few
megabytes of text encode in well under a second.

    tok = CharTokenizer.from_text(text)
    ids = tok.encode("To be")        # int32 [5]
    tok.decode(ids)                  # "To be"
    tok.save("run/tokenizer.json")   # and CharTokenizer.load(...) later
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"
UNK_DISPLAY = "\ufffd"
"""What `decode` writes for the unknown id: U+FFFD REPLACEMENT CHARACTER."""

_FORMAT = "flaxzoo.CharTokenizer"
_VERSION = 1
_UNKNOWN_POLICIES = ("error", "replace")


def _code_points(text: str) -> np.ndarray:
    """The code points of `text`, uint32 [len(text)] (lone surrogates included)."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


@dataclasses.dataclass(frozen=True, kw_only=True)
class CharTokenizer:
    """Maps each character to one id; ids 0 and 1 are `<pad>` and `<unk>`."""

    chars: tuple[str, ...]
    """The characters of the vocabulary, distinct and sorted; char i has id i + 2."""
    _codes: np.ndarray = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        chars = self.chars
        if not isinstance(chars, tuple) or not all(
                isinstance(c, str) and len(c) == 1 for c in chars):
            raise ValueError(
                "CharTokenizer.chars must be a tuple of single characters; got "
                f"{chars!r:.200}")
        if list(chars) != sorted(set(chars)):
            raise ValueError("CharTokenizer.chars must be distinct and in sorted order")
        object.__setattr__(self, "_codes", _code_points("".join(chars)))

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        """Builds the vocabulary from every distinct character of `text`."""
        if not isinstance(text, str) or not text:
            raise ValueError(f"text must be a non-empty str; got {text!r:.80}")
        return cls(chars=tuple(map(chr, np.unique(_code_points(text)).tolist())))

    @property
    def vocab_size(self) -> int:
        """V: `<pad>`, `<unk>` and the characters."""
        return len(self.chars) + 2

    @property
    def pad_id(self) -> int:
        """Id of `<pad>`: skipped by `decode`, weight 0 in batches."""
        return 0

    @property
    def unk_id(self) -> int:
        """Id of `<unk>`, for characters outside the vocabulary."""
        return 1

    def encode(self, text: str, *, unknown: str = "error") -> np.ndarray:
        """Maps each character of `text` to its id.

        Args:
          text: any string.
          unknown: what to do with a character outside the vocabulary: `"error"`
            raises, `"replace"` maps it to `unk_id`.

        Returns:
          int32 [len(text)].

        Raises:
          ValueError: for an unknown character under `unknown="error"` (naming it
            and its index), or an `unknown` that is neither policy.
        """
        if unknown not in _UNKNOWN_POLICIES:
            raise ValueError(f"unknown must be one of {_UNKNOWN_POLICIES}; got {unknown!r}")
        if not isinstance(text, str):
            raise ValueError(f"text must be a str; got {type(text).__name__}")
        codes = _code_points(text)
        index = np.searchsorted(self._codes, codes)
        found = np.zeros(len(codes), bool)
        if len(self._codes):
            found = self._codes[np.minimum(index, len(self._codes) - 1)] == codes
        if unknown == "error" and not found.all():
            i = int(np.argmin(found))
            raise ValueError(
                f"character {text[i]!r} at index {i} is not in the vocabulary "
                f"({len(self.chars)} characters); pass unknown='replace' to map it "
                f"to {UNK_TOKEN}")
        return np.where(found, index + 2, self.unk_id).astype(np.int32)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Maps ids back to text, skipping `<pad>` and writing `<unk>` as U+FFFD.

        Args:
          ids: integer [n], each in [0, vocab_size).

        Raises:
          ValueError: if `ids` is not a 1-D integer sequence or an id is out of range.
        """
        ids = np.asarray(ids)
        if ids.ndim != 1 or not (ids.size == 0 or np.issubdtype(ids.dtype, np.integer)):
            raise ValueError(
                f"ids must be a 1-D sequence of integers; got shape {ids.shape} and "
                f"dtype {ids.dtype}")
        bad = (ids < 0) | (ids >= self.vocab_size)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(
                f"id {int(ids[i])} at index {i} is outside [0, vocab_size={self.vocab_size})")
        if ids.size == 0:
            return ""
        table = np.concatenate([[0, ord(UNK_DISPLAY)], self._codes]).astype("<u4")
        codes = table[ids[ids != self.pad_id]]
        return codes.tobytes().decode("utf-32-le", "surrogatepass")

    # --- serialisation ------------------------------------------------------

    def to_json(self) -> str:
        """The vocabulary as JSON: `{"format", "version", "vocab": [id -> token]}`."""
        return json.dumps(
            {"format": _FORMAT, "version": _VERSION,
             "vocab": [PAD_TOKEN, UNK_TOKEN, *self.chars]},
            ensure_ascii=False)

    @classmethod
    def from_json(cls, s: str) -> CharTokenizer:
        """Rebuilds a tokenizer from `to_json` output.

        Raises:
          ValueError: if `s` is not JSON or not a CharTokenizer vocabulary.
        """
        try:
            data = json.loads(s)
        except (json.JSONDecodeError, TypeError) as err:
            raise ValueError(f"CharTokenizer JSON is not valid JSON: {err}") from None
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ValueError(
                f'CharTokenizer JSON must be an object with "format": "{_FORMAT}"')
        if data.get("version") != _VERSION:
            raise ValueError(
                f"CharTokenizer JSON has version {data.get('version')!r}; "
                f"this flaxzoo reads version {_VERSION}")
        vocab = data.get("vocab")
        if not isinstance(vocab, list) or vocab[:2] != [PAD_TOKEN, UNK_TOKEN]:
            raise ValueError(
                f'CharTokenizer JSON "vocab" must be a list starting with '
                f'"{PAD_TOKEN}", "{UNK_TOKEN}"')
        try:
            return cls(chars=tuple(vocab[2:]))
        except ValueError as err:
            raise ValueError(f'CharTokenizer JSON "vocab" is malformed: {err}') from None

    def save(self, path: str | os.PathLike[str]) -> None:
        """Writes `to_json()` to `path` as UTF-8."""
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CharTokenizer:
        """Reads a file written by `save`.

        Raises:
          ValueError: naming `path`, if it cannot be read or does not hold a vocabulary.
        """
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"cannot read tokenizer file {path}: {err}") from None
        try:
            return cls.from_json(text)
        except ValueError as err:
            raise ValueError(f"tokenizer file {path}: {err}") from None
