"""Tests for flaxzoo.train.tokenizer.CharTokenizer."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given, settings

from flaxzoo.train.data import load_shakespeare
from flaxzoo.train.tokenizer import CharTokenizer

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def test_vocabulary_layout():
    tok = CharTokenizer.from_text("hello, world\n")
    assert tok.chars == ("\n", " ", ",", "d", "e", "h", "l", "o", "r", "w")
    assert tok.vocab_size == 12
    assert (tok.pad_id, tok.unk_id) == (0, 1)
    ids = tok.encode("hello")
    assert ids.dtype == np.int32
    np.testing.assert_array_equal(ids, [7, 6, 8, 8, 9])
    assert tok.encode("").shape == (0,)
    vocab = json.loads(tok.to_json())["vocab"]
    assert vocab[:4] == ["<pad>", "<unk>", "\n", " "] and len(vocab) == tok.vocab_size


def test_shipped_corpus_round_trips():
    text = load_shakespeare()
    tok = CharTokenizer.from_text(text)
    assert 60 <= tok.vocab_size <= 100
    ids = tok.encode(text)
    assert ids.shape == (len(text),) and ids.min() >= 2 and ids.max() < tok.vocab_size
    assert tok.decode(ids) == text


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1))
def test_round_trip_any_text(text):
    tok = CharTokenizer.from_text(text)
    assert tok.decode(tok.encode(text)) == text


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_round_trip_over_the_vocabulary(data):
    excerpt = (FIXTURES / "shakespeare_excerpt.txt").read_text(encoding="utf-8")
    tok = CharTokenizer.from_text(excerpt)
    text = data.draw(st.text(alphabet=st.sampled_from(tok.chars)))
    ids = tok.encode(text)
    assert len(ids) == len(text)
    assert tok.decode(ids) == text


def test_unknown_characters():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match=r"character 'z' at index 2 is not in the vocabulary"):
        tok.encode("abzcz")
    with pytest.raises(ValueError, match=r"character '\\n' at index 0"):
        tok.encode("\n")
    np.testing.assert_array_equal(tok.encode("abzc", unknown="replace"), [2, 3, 1, 4])
    assert tok.decode(tok.encode("a€b", unknown="replace")) == "a\ufffdb"


@pytest.mark.parametrize("policy", ["ignore", "", None, "ERROR"])
def test_unknown_policy_must_be_known(policy):
    with pytest.raises(ValueError, match=r"unknown must be one of \('error', 'replace'\)"):
        CharTokenizer.from_text("abc").encode("a", unknown=policy)


def test_decode():
    tok = CharTokenizer.from_text("abc")
    assert tok.decode([0, 2, 0, 3, 1, 4, 0]) == "ab\ufffdc"
    assert tok.decode(np.array([2, 3], np.int64)) == "ab"
    assert tok.decode([]) == ""
    assert tok.decode([0, 0]) == ""


@pytest.mark.parametrize("ids, message", [
    ([2, 5], r"id 5 at index 1 is outside \[0, vocab_size=5\)"),
    ([-1], r"id -1 at index 0 is outside"),
    ([[2, 3]], r"ids must be a 1-D sequence of integers; got shape \(1, 2\)"),
    ([2.0], "dtype float64"),
])
def test_decode_errors(ids, message):
    with pytest.raises(ValueError, match=message):
        CharTokenizer.from_text("abc").decode(ids)


def test_json_round_trip(tmp_path):
    tok = CharTokenizer.from_text("To be, or not to be: that is the question.\n\u00e9\U0001f600")
    again = CharTokenizer.from_json(tok.to_json())
    assert again == tok
    np.testing.assert_array_equal(again.encode("be or"), tok.encode("be or"))
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    assert CharTokenizer.load(path) == tok
    assert CharTokenizer.load(str(path)) == tok


@pytest.mark.parametrize("s, message", [
    ("{not json", "is not valid JSON"),
    ("", "is not valid JSON"),
    ("[1, 2]", 'must be an object with "format"'),
    ('{"vocab": ["<pad>", "<unk>", "a"]}', 'must be an object with "format"'),
    ('{"format": "flaxzoo.CharTokenizer", "version": 2, "vocab": []}', "has version 2"),
    ('{"format": "flaxzoo.CharTokenizer", "version": 1}', '"vocab" must be a list starting'),
    ('{"format": "flaxzoo.CharTokenizer", "version": 1, "vocab": ["a", "b"]}',
     '"vocab" must be a list starting with "<pad>", "<unk>"'),
    ('{"format": "flaxzoo.CharTokenizer", "version": 1, "vocab": ["<pad>", "<unk>", "ab"]}',
     '"vocab" is malformed: .* single characters'),
    ('{"format": "flaxzoo.CharTokenizer", "version": 1, "vocab": ["<pad>", "<unk>", 7]}',
     '"vocab" is malformed'),
    ('{"format": "flaxzoo.CharTokenizer", "version": 1, "vocab": ["<pad>", "<unk>", "b", "a"]}',
     '"vocab" is malformed: .* distinct and in sorted order'),
    ('{"format": "flaxzoo.CharTokenizer", "version": 1, "vocab": ["<pad>", "<unk>", "a", "a"]}',
     "distinct and in sorted order"),
])
def test_from_json_rejects_bad_input(s, message):
    with pytest.raises(ValueError, match=message):
        CharTokenizer.from_json(s)


def test_load_errors_name_the_path(tmp_path):
    with pytest.raises(ValueError, match="cannot read tokenizer file .*missing.json"):
        CharTokenizer.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{}", encoding="utf-8")
    with pytest.raises(ValueError, match='tokenizer file .*bad.json: .*"format"'):
        CharTokenizer.load(bad)


def test_construction_is_validated():
    with pytest.raises(ValueError, match="non-empty str"):
        CharTokenizer.from_text("")
    with pytest.raises(ValueError, match="distinct and in sorted order"):
        CharTokenizer(chars=("b", "a"))
    with pytest.raises(ValueError, match="tuple of single characters"):
        CharTokenizer(chars=["a"])
    tok = CharTokenizer.from_text("ab")
    with pytest.raises(dataclasses.FrozenInstanceError):
        tok.chars = ("c",)
    assert tok == CharTokenizer(chars=("a", "b")) and hash(tok) == hash(CharTokenizer(chars=("a", "b")))
