"""Encoder tasks on Shakespeare: masked-LM pre-training of a small BERT, and which
genre (comedy, history, tragedy) a passage comes from.

Dimension key: B batch, T window length (tokens), V vocabulary, C genres.

Both tokenise with a byte-level BPE learned on the training text. Windows of T
tokens start with <s>; masked-LM windows come from the first 90% of the corpus and
are evaluated on the last 10%; genre passages come from training plays and are
evaluated on whole held-out plays (every fourth play of each genre, by title).
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flaxzoo.models import BertConfig, BertForMaskedLM, BertForSequenceClassification
from flaxzoo.train import checkpoint as ckpt
from flaxzoo.train.data import load_plays, load_shakespeare, split_train_val
from flaxzoo.train.losses import classification_loss, mask_tokens, token_cross_entropy
from flaxzoo.train.subword import SubwordTokenizer, train_byte_level_bpe
from flaxzoo.train.tasks.runner import sum_over_batches

ENCODER_PRESETS = {
    "tiny": dict(num_layers=2, num_heads=4, embed_dim=32, mlp_dim=64),
    "small": dict(num_layers=4, num_heads=4, embed_dim=128, mlp_dim=512),
}
EVAL_WINDOWS = 256
"""At most this many evaluation windows (a fixed, deterministic set)."""


def _bert_config(preset: str, vocab_size: int, seq_len: int, **overrides) -> BertConfig:
    if preset not in ENCODER_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(ENCODER_PRESETS)}")
    return BertConfig(vocab_size=vocab_size, max_seq_len=seq_len, type_vocab_size=1,
                      dropout_rate=0.1, attention_dropout_rate=0.1,
                      **{**ENCODER_PRESETS[preset], **overrides})


def _windows(ids: np.ndarray, seq_len: int, bos_id: int, starts: np.ndarray) -> np.ndarray:
    """int32 [len(starts), seq_len]: <s> then seq_len - 1 tokens from each start."""
    body = ids[starts[:, None] + np.arange(seq_len - 1)]
    return np.concatenate([np.full((len(starts), 1), bos_id), body], axis=1).astype(np.int32)


def _eval_starts(n: int, seq_len: int) -> np.ndarray:
    """Evenly spaced, non-overlapping window starts over n tokens (at most EVAL_WINDOWS)."""
    count = max(1, min(EVAL_WINDOWS, (n - 1) // (seq_len - 1)))
    return np.linspace(0, n - seq_len, count).astype(np.int64)


def _check_length(name: str, ids: np.ndarray, seq_len: int) -> None:
    if len(ids) < seq_len:
        raise ValueError(f"the {name} text has {len(ids)} tokens, fewer than seq_len = {seq_len}")


@flax.struct.dataclass
class MLMBatch:
    tokens_BT: jax.Array
    """The original windows (targets)."""
    mask_rng: jax.Array | None = None
    """Raw key data fixing the corruption of an evaluation batch (None in training)."""


@dataclasses.dataclass
class MaskedLMTask:
    """Masked-LM pre-training: 15% of tokens selected, 80/10/10 mask/random/keep,
    loss on selected tokens only."""

    preset: str = "small"
    seq_len: int = 128
    batch_size: int = 32
    vocab_size: int = 2048
    seed: int = 0
    text: str | None = None
    """Training corpus; default the shipped Shakespeare."""
    name: str = "mlm"

    def __post_init__(self):
        if self.seq_len < 2:
            raise ValueError(f"seq_len must be >= 2; got {self.seq_len}")
        text = load_shakespeare() if self.text is None else self.text
        train_text, val_text = split_train_val(text)
        self.tokenizer = train_byte_level_bpe([train_text], vocab_size=self.vocab_size)
        self.tokenizer_json = self.tokenizer.to_json()
        self.train_ids = self.tokenizer.encode(train_text)
        self.val_ids = self.tokenizer.encode(val_text)
        _check_length("training", self.train_ids, self.seq_len)
        _check_length("validation", self.val_ids, self.seq_len)
        self.model_config = _bert_config(self.preset, self.tokenizer.vocab_size, self.seq_len)
        self.bos_id = self.tokenizer.token_to_id("<s>")
        self.mask_id = self.tokenizer.token_to_id("<mask>")
        self.special_ids = tuple(self.tokenizer.token_to_id(t)
                                 for t in ("<pad>", "<unk>", "<s>", "</s>", "<mask>"))
        self.tokens_per_batch = self.batch_size * self.seq_len

    def describe(self) -> str:
        return (f"byte-level BPE of {self.tokenizer.vocab_size} tokens; "
                f"{len(self.train_ids):,} training / {len(self.val_ids):,} validation tokens")

    def init_model(self, rngs: nnx.Rngs) -> BertForMaskedLM:
        return BertForMaskedLM(self.model_config, rngs=rngs)

    def train_batch(self, step: int) -> MLMBatch:
        rng = np.random.default_rng([self.seed, step])
        starts = rng.integers(0, len(self.train_ids) - self.seq_len + 2, size=self.batch_size)
        return MLMBatch(tokens_BT=_windows(self.train_ids, self.seq_len, self.bos_id, starts))

    def _logits_and_selection(self, model, tokens_BT, rng, *, train: bool):
        mask_rng, dropout_rng = jax.random.split(rng)
        valid_BT = jnp.ones(tokens_BT.shape, jnp.bool_)
        inputs_BT, selected_BT = mask_tokens(mask_rng, tokens_BT, valid_BT, mask_id=self.mask_id,
                                             vocab_size=self.model_config.vocab_size,
                                             special_ids=self.special_ids)
        logits_BTV, _ = model(inputs_BT, dropout_rng=dropout_rng if train else None)
        return logits_BTV, selected_BT

    def loss(self, model, batch: MLMBatch, rng):
        logits_BTV, selected_BT = self._logits_and_selection(model, batch.tokens_BT, rng,
                                                             train=True)
        total, _, count = token_cross_entropy(logits_BTV, batch.tokens_BT, selected_BT)
        return total / jnp.maximum(count, 1.0), {"masked_tokens": count}

    def eval_batches(self):
        starts = _eval_starts(len(self.val_ids), self.seq_len)
        for i in range(0, len(starts), self.batch_size):
            chunk = starts[i:i + self.batch_size]
            if len(chunk) < self.batch_size:  # one static shape: pad by repeating windows
                chunk = np.resize(chunk, self.batch_size)
            yield MLMBatch(tokens_BT=_windows(self.val_ids, self.seq_len, self.bos_id, chunk),
                           mask_rng=jax.random.key_data(jax.random.key(i)))

    def eval_sums(self, model, batch: MLMBatch):
        rng = jax.random.wrap_key_data(batch.mask_rng)
        logits_BTV, selected_BT = self._logits_and_selection(model, batch.tokens_BT, rng,
                                                             train=False)
        _, nll, count = token_cross_entropy(logits_BTV, batch.tokens_BT, selected_BT)
        correct = jnp.sum((jnp.argmax(logits_BTV, -1) == batch.tokens_BT) & selected_BT)
        return {"nll": nll, "count": count, "correct": correct.astype(jnp.float32)}

    def evaluate(self, model) -> dict[str, float]:
        """Masked-LM loss and accuracy on a fixed set of validation windows, with a
        fixed corruption, against the training unigram distribution's loss."""
        if not hasattr(self, "_eval_sums"):
            self._eval_sums = nnx.jit(self.eval_sums)
        sums = sum_over_batches(self._eval_sums, model, self.eval_batches())
        # Baseline: predicting every masked token from the training unigram distribution.
        counts = np.bincount(self.train_ids, minlength=self.model_config.vocab_size) + 1e-9
        p = counts / counts.sum()
        unigram_nats = float(-(p * np.log(p)).sum())
        return {"mlm_loss": sums["nll"] / sums["count"],
                "mlm_accuracy": sums["correct"] / sums["count"],
                "unigram_baseline_loss": unigram_nats}


@flax.struct.dataclass
class GenreBatch:
    tokens_BT: jax.Array
    labels_B: jax.Array


@dataclasses.dataclass
class GenreTask:
    """Which genre a passage comes from; accuracy on held-out plays against the
    majority-class baseline. `init_from` starts the encoder from a masked-LM run
    (then its tokenizer and encoder shape are used)."""

    preset: str = "small"
    seq_len: int = 128
    batch_size: int = 32
    vocab_size: int = 2048
    seed: int = 0
    init_from: str | None = None
    name: str = "genre"

    def __post_init__(self):
        plays = load_plays()
        self.genres = sorted({p.genre for p in plays})
        held_out = set()
        for genre in self.genres:
            titles = sorted(p.play for p in plays if p.genre == genre)
            held_out |= set(titles[3::4])
        self.train_plays = [p for p in plays if p.play not in held_out]
        self.val_plays = [p for p in plays if p.play in held_out]
        if self.init_from is not None:
            meta = ckpt.load_metadata(f"{self.init_from}/checkpoint")
            if meta.run_config.get("task") != "mlm":
                raise ValueError(f"init_from {self.init_from} is not a masked-LM run")
            self.tokenizer = SubwordTokenizer.from_json(meta.tokenizer_json)
            self.mlm_config = BertConfig.from_dict(meta.model_config)
            self.model_config = dataclasses.replace(self.mlm_config,
                                                    num_labels=len(self.genres))
            self.seq_len = self.mlm_config.max_seq_len
        else:
            self.tokenizer = train_byte_level_bpe([p.text for p in self.train_plays],
                                                  vocab_size=self.vocab_size)
            self.model_config = _bert_config(self.preset, self.tokenizer.vocab_size,
                                             self.seq_len, num_labels=len(self.genres))
        self.tokenizer_json = self.tokenizer.to_json()
        self.bos_id = self.tokenizer.token_to_id("<s>")
        encode = lambda plays: [(self.tokenizer.encode(p.text), self.genres.index(p.genre))
                                for p in plays]
        self.train_encoded, self.val_encoded = encode(self.train_plays), encode(self.val_plays)
        for ids, _ in self.train_encoded + self.val_encoded:
            _check_length("play", ids, self.seq_len)
        self.tokens_per_batch = self.batch_size * self.seq_len
        # Fixed evaluation passages: evenly spaced windows of every held-out play.
        tokens, labels = [], []
        per_play = max(1, EVAL_WINDOWS // max(len(self.val_encoded), 1))
        for ids, label in self.val_encoded:
            starts = np.linspace(0, len(ids) - self.seq_len + 1, per_play).astype(np.int64)
            tokens.append(_windows(ids, self.seq_len, self.bos_id, starts))
            labels += [label] * len(starts)
        self.val_tokens, self.val_labels = np.concatenate(tokens), np.asarray(labels, np.int32)

    def describe(self) -> str:
        train_counts = Counter(self.genres[label] for _, label in self.train_encoded)
        return (f"genres {self.genres}; {len(self.train_plays)} training plays "
                f"{dict(train_counts)}, {len(self.val_plays)} held-out plays "
                f"({', '.join(p.play for p in self.val_plays)}); "
                f"{len(self.val_labels)} evaluation passages of {self.seq_len} tokens")

    def init_model(self, rngs: nnx.Rngs) -> BertForSequenceClassification:
        model = BertForSequenceClassification(self.model_config, rngs=rngs)
        if self.init_from is not None:
            from flaxzoo.models.convert.hf_io import assign_params, read_params

            mlm = BertForMaskedLM(self.mlm_config, rngs=nnx.Rngs(0))
            _, abstract = nnx.split(mlm, nnx.Param)
            nnx.update(mlm, ckpt.restore_params(f"{self.init_from}/checkpoint", abstract))
            encoder = read_params(mlm.bert)
            pooler = read_params(model.bert)
            # The masked-LM encoder has no pooler; the classifier's stays freshly initialised.
            assign_params(model.bert, {**encoder, **{k: v for k, v in pooler.items()
                                                     if k.startswith("pooler/")}})
        return model

    def train_batch(self, step: int) -> GenreBatch:
        rng = np.random.default_rng([self.seed, step])
        plays = rng.integers(0, len(self.train_encoded), size=self.batch_size)
        tokens, labels = [], []
        for index in plays:
            ids, label = self.train_encoded[index]
            start = rng.integers(0, len(ids) - self.seq_len + 2)
            tokens.append(_windows(ids, self.seq_len, self.bos_id, np.array([start]))[0])
            labels.append(label)
        return GenreBatch(tokens_BT=np.stack(tokens), labels_B=np.asarray(labels, np.int32))

    def loss(self, model, batch: GenreBatch, rng):
        logits_BC, _ = model(batch.tokens_BT, dropout_rng=rng)
        total, correct = classification_loss(logits_BC, batch.labels_B)
        n = batch.labels_B.shape[0]
        return total / n, {"accuracy": correct / n}

    def eval_batches(self):
        n = len(self.val_labels)
        for i in range(0, n, self.batch_size):
            index = np.resize(np.arange(i, min(i + self.batch_size, n)), self.batch_size)
            weight = (np.arange(i, i + self.batch_size) < n).astype(np.float32)
            yield (GenreBatch(tokens_BT=self.val_tokens[index], labels_B=self.val_labels[index]),
                   weight)

    def eval_sums(self, model, batch):
        batch, weight_B = batch
        logits_BC, _ = model(batch.tokens_BT)
        log_probs = jax.nn.log_softmax(logits_BC, axis=-1)
        nll_B = -jnp.take_along_axis(log_probs, batch.labels_B[:, None], axis=-1)[:, 0]
        correct_B = jnp.argmax(logits_BC, -1) == batch.labels_B
        return {"nll": jnp.sum(nll_B * weight_B), "correct": jnp.sum(correct_B * weight_B),
                "count": jnp.sum(weight_B)}

    def evaluate(self, model) -> dict[str, float]:
        """Accuracy on passages of the held-out plays, and the majority-class baseline."""
        if not hasattr(self, "_eval_sums"):
            self._eval_sums = nnx.jit(self.eval_sums)
        sums = sum_over_batches(self._eval_sums, model, self.eval_batches())
        majority = Counter(self.val_labels.tolist()).most_common(1)[0][1] / len(self.val_labels)
        return {"accuracy": sums["correct"] / sums["count"], "loss": sums["nll"] / sums["count"],
                "majority_baseline_accuracy": majority}
