"""Masked-LM corruption, label-smoothed token cross-entropy and classification loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxzoo.train.losses import classification_loss, mask_tokens, token_cross_entropy

V, MASK, PAD, CLS = 50, 3, 0, 1


def _batch(batch=64, length=128, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(5, V, size=(batch, length))
    tokens[:, 0] = CLS
    valid = np.ones((batch, length), bool)
    valid[:, 100:] = False
    tokens[~valid] = PAD
    return jnp.asarray(tokens), jnp.asarray(valid)


def test_masking_selects_15_percent_and_replaces_80_10_10():
    tokens, valid = _batch()
    inputs, selected = mask_tokens(jax.random.key(0), tokens, valid, mask_id=MASK,
                                   vocab_size=V, special_ids=(PAD, CLS))
    inputs, selected, tokens = (np.asarray(a) for a in (inputs, selected, tokens))
    eligible = np.asarray(valid) & (tokens != CLS)
    n = eligible.sum()
    assert not selected[~eligible].any()  # never padding, never special tokens
    rate = selected.sum() / n
    assert abs(rate - 0.15) < 3 * np.sqrt(0.15 * 0.85 / n)
    np.testing.assert_array_equal(inputs[~selected], tokens[~selected])
    chosen_in, chosen_orig = inputs[selected], tokens[selected]
    masked = np.mean(chosen_in == MASK)
    kept = np.mean(chosen_in == chosen_orig)
    random = 1 - masked - kept
    m = selected.sum()
    # A random draw (47 allowed ids) equals the original 1/47 of the time.
    for got, want in ((masked, 0.8), (kept, 0.1 + 0.1 / 47), (random, 0.1 - 0.1 / 47)):
        assert abs(got - want) < 4 * np.sqrt(want * (1 - want) / m), (got, want)
    assert not np.isin(chosen_in[chosen_in != MASK], [PAD, CLS, MASK]).any()


def test_masking_is_reproducible_per_key():
    tokens, valid = _batch(batch=4)
    a = mask_tokens(jax.random.key(1), tokens, valid, mask_id=MASK, vocab_size=V)
    b = mask_tokens(jax.random.key(1), tokens, valid, mask_id=MASK, vocab_size=V)
    c = mask_tokens(jax.random.key(2), tokens, valid, mask_id=MASK, vocab_size=V)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[1], c[1])


def test_token_cross_entropy_matches_numpy_with_smoothing_and_padding():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(2, 5, 7)).astype(np.float32)
    targets = rng.integers(0, 7, size=(2, 5))
    weights = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], np.float32)
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_p, targets[..., None], -1)[..., 0]
    s = 0.1
    smoothed_target = np.full((2, 5, 7), s / 7)
    np.put_along_axis(smoothed_target, targets[..., None], 1 - s + s / 7, -1)
    smoothed = -(smoothed_target * log_p).sum(-1)
    loss, plain, count = token_cross_entropy(logits, targets, weights, label_smoothing=s)
    np.testing.assert_allclose(loss, (smoothed * weights).sum(), rtol=1e-5)
    np.testing.assert_allclose(plain, (nll * weights).sum(), rtol=1e-5)
    assert float(count) == 8.0
    # Padding positions carry no loss whatever their logits.
    noisy = logits.copy()
    noisy[0, 3:] = 1e4
    np.testing.assert_allclose(token_cross_entropy(noisy, targets, weights,
                                                   label_smoothing=s)[0], loss, rtol=1e-5)


def test_classification_loss_and_accuracy():
    logits = jnp.array([[2.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    labels = jnp.array([0, 1])
    total, correct = classification_loss(logits, labels)
    log_p = np.asarray(jax.nn.log_softmax(logits))
    np.testing.assert_allclose(total, -(log_p[0, 0] + log_p[1, 1]), rtol=1e-6)
    assert float(correct) == 1.0


@pytest.mark.parametrize("kwargs, match", [(dict(select_rate=0.0), "select_rate"),
                                           (dict(mask_fraction=0.95), "sum of at most 1"),
                                           (dict(mask_id=V), "mask_id")])
def test_masking_options_are_validated(kwargs, match):
    tokens, valid = _batch(batch=1)
    with pytest.raises(ValueError, match=match):
        mask_tokens(jax.random.key(0), tokens, valid, **{"mask_id": MASK, "vocab_size": V,
                                                         **kwargs})


def test_label_smoothing_is_validated():
    with pytest.raises(ValueError, match="label_smoothing"):
        token_cross_entropy(jnp.zeros((1, 1, 3)), jnp.zeros((1, 1), int), jnp.ones((1, 1)),
                            label_smoothing=1.0)
