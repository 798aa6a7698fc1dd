"""Training tasks: data splits, evaluation, and a few steps that lower each loss."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flaxzoo.train.cli import main
from flaxzoo.train.data import load_shakespeare
from flaxzoo.train.tasks import (GenreTask, MaskedLMTask, PronunciationTask, TaskRunConfig,
                                 load_cmudict, run_task)
from flaxzoo.train.tasks.pronunciation import EOS_ID, PAD_ID, Seq2SeqVocabulary

QUIET = open(os.devnull, "w")


@pytest.fixture(scope="module")
def mlm():
    return MaskedLMTask(preset="tiny", seq_len=32, batch_size=8, vocab_size=300,
                        text=load_shakespeare()[:150_000])


@pytest.fixture(scope="module")
def genre():
    return GenreTask(preset="tiny", seq_len=32, batch_size=8, vocab_size=300)


@pytest.fixture(scope="module")
def pronounce():
    return PronunciationTask(preset="tiny", batch_size=16, eval_words=32)


def _overfit_losses(task, tmp_path, steps=30):
    """Trains on the first batch over and over; returns the logged training losses."""
    fixed = task.train_batch(0)
    original = task.train_batch
    task.train_batch = lambda step: fixed
    try:
        result = run_task(task, TaskRunConfig(steps=steps, batch_size=task.batch_size,
                                              learning_rate=1e-2, warmup_steps=2,
                                              out_dir=str(tmp_path)), log=QUIET)
    finally:
        task.train_batch = original
    lines = [json.loads(line) for line in open(result["metrics_path"])]
    return [line["loss"] for line in lines if "loss" in line], result


@pytest.mark.parametrize("name", ["mlm", "genre", "pronounce"])
def test_a_few_steps_lower_the_loss(name, request, tmp_path):
    task = request.getfixturevalue(name)
    losses, result = _overfit_losses(task, tmp_path)
    assert losses[-1] < 0.7 * losses[0], losses
    assert os.path.isdir(result["checkpoint_dir"])


def test_mlm_evaluation_is_deterministic_and_has_a_baseline(mlm):
    model = mlm.init_model(nnx.Rngs(0))
    first, second = mlm.evaluate(model), mlm.evaluate(model)
    assert first == second
    # An untrained model is no better than guessing among the vocabulary.
    assert first["mlm_loss"] > first["unigram_baseline_loss"]
    assert 0 <= first["mlm_accuracy"] < 0.1


def test_genre_holds_out_whole_plays_of_every_genre(genre):
    train_titles = {p.play for p in genre.train_plays}
    val_titles = {p.play for p in genre.val_plays}
    assert not train_titles & val_titles and len(train_titles | val_titles) == 38
    assert {p.genre for p in genre.val_plays} == set(genre.genres)
    assert set(genre.val_labels.tolist()) == set(range(len(genre.genres)))
    result = genre.evaluate(genre.init_model(nnx.Rngs(0)))
    majority = np.bincount(genre.val_labels).max() / len(genre.val_labels)
    assert result["majority_baseline_accuracy"] == pytest.approx(majority)


def test_cmudict_parsing_and_vocabulary():
    entries = load_cmudict("a AH0\na(2) EY1\nabc's EY1 B IY1 S IY1 Z # a comment\n"
                           "x.y. EH1 K S\n;;; junk\n")
    assert entries == {"a": [("AH0",), ("EY1",)], "abc's": [("EY1", "B", "IY1", "S", "IY1", "Z")]}
    vocab = Seq2SeqVocabulary.build(entries)
    ids = vocab.encode(("EY1", "B"), 5)
    assert ids[2] == EOS_ID and ids[3] == ids[4] == PAD_ID
    assert vocab.decode(ids) == ("EY1", "B")
    with pytest.raises(ValueError, match="no dictionary entries"):
        load_cmudict("nothing here\n")


def test_pronunciation_split_and_greedy_decoding(pronounce):
    assert not set(pronounce.val_words) & {w for w in pronounce.entries
                                           if w not in set(pronounce.val_words)}
    assert len(pronounce.entries) > 100_000  # the real dictionary, not a sample
    model = pronounce.init_model(nnx.Rngs(0))
    inputs = jnp.asarray(next(iter(pronounce.eval_batches()))["inputs_BS"][:2])
    ids = np.asarray(pronounce.generate(model, inputs))
    # Greedy decoding through the cache equals re-running the decoder on the prefix.
    encoded = model.encode(inputs, valid_BS=inputs != PAD_ID)
    prefix = np.concatenate([np.zeros((2, 1), np.int32), ids[:, :5]], axis=1)
    logits, _ = model.decode(jnp.asarray(prefix), jnp.broadcast_to(jnp.arange(6), (2, 6)),
                             encoder_output=encoded)
    np.testing.assert_array_equal(np.argmax(logits, -1), ids[:, :6])
    result = pronounce.evaluate(model)
    assert 0.0 <= result["word_accuracy"] <= 1.0 and result["phoneme_error_rate"] > 0


def test_task_cli_bad_input(capsys, tmp_path):
    for argv, match in ((["task", "mlm", "--steps", "0"], "--steps must be a positive integer"),
                        (["task", "mlm", "--init-from", "x"], "--init-from is only for"),
                        (["task", "pronounce", "--label-smoothing", "1.5"], "--label-smoothing"),
                        (["task", "translate"], "invalid choice")):
        assert main(argv + ["--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and match in err[0], err
    with pytest.raises(ValueError, match="nothing/checkpoint does not exist"):
        GenreTask(init_from=str(tmp_path / "nothing"))
